"""``audit --fail-on``: the exit code that gates CI, and the summary line (text and ``--json``)."""

from __future__ import annotations

import io
import json

from builders import write_mlps
from conftest import json_models, run_cli

from onnx_pathlift import cli
from onnx_pathlift.audit.analyse import HOOK_ENV
from onnx_pathlift.audit.command import FAIL_ON_EXIT
from onnx_pathlift.audit.progress import Progress
from onnx_pathlift.audit.record import STATUSES, ModelResult


def test_fail_on_gates_the_exit_code_and_summarises(tmp_path, capsys, monkeypatch):
    models = write_mlps(tmp_path / "m", ["a", "crashme"], unsupported=1, invalid=1)
    db = str(tmp_path / "a.sqlite")
    monkeypatch.setenv(HOOK_ENV, "abort:crashme")
    capsys.readouterr()
    assert cli.main(["audit", str(models), "--db", db, "--jobs", "2", "--json"]) == 0  # default: statuses never fail
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"]
    assert summary["status_counts"] == {**dict.fromkeys(STATUSES, 0), "ok": 1, "unsupported": 1, "invalid": 1, "error": 1}
    assert summary["files"] == 4 and summary["fail_on"] == [] and summary["failing"] == 0 and summary["exit_code"] == 0

    # everything is reused from here on: the gate reads the results, not what this run computed
    assert cli.main(["audit", str(models), "--db", db, "--json", "--fail-on", "timeout,oom"]) == 0
    capsys.readouterr()
    assert cli.main(["audit", str(models), "--db", db, "--json", "--fail-on", "error,timeout,invalid"]) == FAIL_ON_EXIT
    out = capsys.readouterr().out
    assert [m["status"] for m in json_models(out)].count("error") == 1
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["failing"] == 2 and summary["exit_code"] == FAIL_ON_EXIT and summary["fail_on"] == ["error", "invalid", "timeout"]
    assert summary["analysed"] == 0 and summary["reused"] == 4

    assert cli.main(["audit", str(models), "--db", db, "--fail-on", "unsupported"]) == FAIL_ON_EXIT
    text = capsys.readouterr().out
    assert "4 files: ok 1, unsupported 1, invalid 1, error 1" in text
    assert "1 file(s) ended in a status named by --fail-on unsupported: exit code 7" in text


def test_fail_on_unknown_status_is_a_usage_error_before_any_work(tmp_path):
    models = write_mlps(tmp_path / "m", ["a"])
    db = tmp_path / "a.sqlite"
    proc = run_cli("audit", models, "--db", db, "--fail-on", "error,crashed", "--json")
    assert proc.returncode == 2 and not db.exists()
    err = json.loads(proc.stdout)
    assert err["exit_code"] == 2 and "'error,crashed'" in err["message"] and "timeout" in err["message"]
    assert run_cli("audit", models, "--db", db, "--fail-on", ",").returncode == 2


def test_progress_bar_line_is_ended_when_the_audit_stops_early():
    """On a terminal the bar redraws one line; an audit that stops early (no Dask worker) ends it,
    so that the error message gets a line of its own."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(stream)
    progress.start(3, 0)
    progress.update(ModelResult("a.onnx", "", 0, "ok"))
    assert not stream.getvalue().endswith("\n") and "1/3" in stream.getvalue()
    progress.close()
    assert stream.getvalue().endswith("\x1b[K\n")
    progress.close()  # once only
    assert not stream.getvalue().endswith("\n\n")
