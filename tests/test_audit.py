"""``onnx-pathlift audit``: every file accounted for, the same numbers as ``norm``, isolation of
crashes, hangs and out-of-memory errors, resuming after ``kill -9``, reports, and Dask.

Small models are built here with ``onnx.helper``; the worker misbehaves on cue through the test hook
``ONNX_PATHLIFT_AUDIT_TEST_HOOK`` (see ``onnx_pathlift.audit.analyse``).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import write_mlps
from conftest import MODELS, json_models, query, run_cli, stored

from onnx_pathlift import cli, path_norm
from onnx_pathlift.api import compute_norms
from onnx_pathlift.audit import Settings, audit
from onnx_pathlift.audit.analyse import HOOK_ENV
from onnx_pathlift.audit.report import _histogram, histogram_range, html_page
from onnx_pathlift.errors import UsageError


def assert_norm_numbers(path, q: float, log10: float) -> None:
    """The audit's log10 ‖Φ‖_q lies in the certified interval of what ``onnx-pathlift norm`` computes
    (the same run-once lifted sessions; a worker's thread count may split float32 sums otherwise: 3.6e-9
    in log10 was seen on a loaded machine) and in ``path_norm``'s (a session with every graph rewrite,
    which sums in another order)."""
    for ref in (compute_norms(str(path), [q]).norms[0], path_norm(str(path), q)):
        assert ref.lower_log10 <= log10 <= ref.upper_log10, (path, q, ref)


def runs(db: Path) -> list[tuple]:
    return query(db, "SELECT id, finished_at, analysed, reused FROM runs ORDER BY id")


# ----------------------------------------------------------------------------------------------- zoo

def test_zoo_audit_accounts_for_every_file_with_path_norm_numbers(zoo, tmp_path):
    files = sorted(p.resolve() for p in zoo.rglob("*.onnx"))
    proc = run_cli("audit", zoo, "--jobs", "2", "--json", "--db", tmp_path / "zoo.sqlite", timeout=600)  # a hang detector only
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    results = json_models(proc.stdout)
    assert sorted(Path(r["path"]).resolve() for r in results) == files
    assert {r["status"] for r in results} <= {"ok", "unsupported", "invalid"}, [r["reason"] for r in results]
    assert all(r["reason"] for r in results if r["status"] != "ok")
    assert all(r["refusals"] for r in results if r["status"] == "unsupported")
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) > len(files) // 2
    assert all(r["params"] is not None and r["kinds"] and r["input_shape"] and r["opset"] and r["peak_rss_mb"] for r in ok)
    quick = [r for r in ok if r["wall_s"] < 1.0]
    for r in quick[:: max(1, len(quick) // 8)][:8]:
        for n in r["norms"]:
            assert_norm_numbers(r["path"], n["q"], n["log10"])


# ----------------------------------------------------------------------------- reports, CLI, reuse

def test_cli_reports_json_csv_html_and_reuse(tmp_path, capsys):
    models = write_mlps(tmp_path / "m", ["a", "b", "c"], unsupported=1, invalid=1)
    (models / "sub").mkdir()
    (models / "sub" / "copy_of_a.onnx").write_bytes((models / "a.onnx").read_bytes())
    html, table = tmp_path / "report.html", tmp_path / "out.csv"
    capsys.readouterr()
    rc = cli.main(["audit", str(models), "--jobs", "2", "--report", str(html), "--csv", str(table), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    results = json_models(out.out)
    by_name = {Path(r["path"]).name: r for r in results}
    assert sorted(by_name) == ["a.onnx", "b.onnx", "c.onnx", "copy_of_a.onnx", "garbage_0.onnx", "tanh_0.onnx"]
    statuses = [by_name[n]["status"] for n in ("a.onnx", "tanh_0.onnx", "garbage_0.onnx")]
    assert statuses == ["ok", "unsupported", "invalid"]
    assert by_name["tanh_0.onnx"]["refusals"][0]["op_type"] == "Tanh"
    assert by_name["copy_of_a.onnx"]["norms"] == by_name["a.onnx"]["norms"]
    for name in ("a.onnx", "b.onnx"):
        r = by_name[name]
        assert [n["q"] for n in r["norms"]] == [1.0, 2.0, 4.0]
        for n in r["norms"]:
            assert_norm_numbers(models / name, n["q"], n["log10"])
        assert r["lipschitz_log10"] is not None and r["kinds"]["linear"] == 2 and r["params"] == 4 * 8 + 8 + 8 * 3 + 3

    db = tmp_path / "report.sqlite"  # the default database sits beside the report
    assert len(stored(db)) == 5  # the copy has the same content: analysed once
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"path", "status", "L1_log10", "L4", "lipschitz_log10", "peak_rss_mb"} <= set(rows[0])
    page = html.read_text()
    assert "http://" not in page and "https://" not in page and " src=" not in page and "<link" not in page
    assert '<table class="sortable fixed" id="models"' in page and page.count('<tr data-i="') == 6
    assert "<svg" in page and page.count('<rect class="bar"') >= 1 and "<script>" in page
    assert "Tanh" in page and "not an ONNX model" in page

    rc = cli.main(["audit", str(models), "--report", str(html)])  # again: everything reused
    out = capsys.readouterr()
    assert rc == 0 and "0 models analysed, 5 reused" in out.out and "tanh_0.onnx" in out.out
    assert runs(db)[-1][1] is not None and runs(db)[-1][2:] == (0, 5)
    rc = cli.main(["audit", str(models / "a.onnx"), "--db", str(db), "-q", "3"])  # other settings: computed
    assert rc == 0 and "1 models analysed, 0 reused" in capsys.readouterr().out
    assert query(db, "SELECT count(*) FROM results") == [(6,)]


def test_histogram_clips_an_outlier_and_says_so():
    """A Lipschitz column from -22 to 11 with the rest between 1 and 3: the bars cover the bulk, the two
    outliers are counted in the end bars (every value counted once) and the caption names them."""
    values = [-22.0, 11.0] + [1 + 0.1 * k for k in range(21)]
    lo, hi = histogram_range(values)
    assert -22 < lo <= 1 and 3 <= hi < 11  # Tukey's far fences: Q1 = 1.5, Q3 = 2.5, w = 1
    svg, note = _histogram(values, "x")
    counts = [int(c) for c in re.findall(r"\): (\d+) model", svg)]
    assert sum(counts) == len(values) and svg.count('class="bar clipped"') == 2
    assert "1 below" in note and "1 above" in note
    ticks = [float(t) for t in re.findall(r'text-anchor="middle">(-?[\d.]+)</text>', svg)]
    assert min(ticks) > -22 and max(ticks) < 11
    assert _histogram([1.0, 2.0, 3.0], "x")[1] == ""  # nothing clipped, nothing said


def test_details_show_six_significant_digits(tmp_path):
    models = write_mlps(tmp_path / "m", ["a"])
    result = audit([models], db=tmp_path / "a.sqlite", jobs=1)
    page = html_page(result, Settings())
    details = page[page.index('<details id="m0">'):]
    numbers = re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", details[: details.index("wall time")])
    assert numbers and max(len(re.sub(r"e.*|[-.]", "", n).lstrip("0")) for n in numbers) <= 6, numbers


def test_paths_files_folders_globs_and_usage_errors(tmp_path, capsys):
    models = write_mlps(tmp_path / "m", ["a", "b"])
    write_mlps(tmp_path / "m" / "deep", ["c"])
    (tmp_path / "m" / "notes.txt").write_text("not a model")
    db = tmp_path / "a.sqlite"
    rc = cli.main(["audit", str(models / "a.onnx"), str(tmp_path / "m" / "*.onnx"), str(models / "deep"),
                   "--db", str(db), "--json"])
    names = [Path(r["path"]).name for r in json_models(capsys.readouterr().out)]
    assert rc == 0 and names == ["a.onnx", "b.onnx", "c.onnx"]
    assert cli.main(["audit", str(tmp_path / "missing"), "--db", str(db)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["audit", str(tmp_path / "m" / "*.nothing"), "--db", str(db)]) == 2
    assert cli.main(["audit", str(models), "--jobs", "0", "--db", str(db)]) == 2
    assert cli.main(["audit", str(models), "-q", "0.5", "--db", str(db)]) == 2
    (tmp_path / "bad.sqlite").write_text("not a database at all, just text " * 20)
    assert cli.main(["audit", str(models), "--db", str(tmp_path / "bad.sqlite")]) == 2
    assert "audit database" in capsys.readouterr().err


def test_shipped_models_audit(tmp_path):
    result = audit([MODELS], db=tmp_path / "a.sqlite", jobs=2)
    assert len(result.results) == len(list(MODELS.glob("*.onnx")))
    assert all(r.status == "ok" and r.norm_log10(1) is not None for r in result.results)


# ----------------------------------------------------------------------------------------- isolation

def test_crash_hang_and_oom_fail_only_their_model(tmp_path, monkeypatch):
    models = write_mlps(tmp_path / "m", ["ok_a", "crashme", "ok_b", "hangme", "oomme", "ok_c"])
    monkeypatch.setenv(HOOK_ENV, "abort:crashme,hang:hangme,oom:oomme")
    t0 = time.monotonic()
    result = audit([models], db=tmp_path / "a.sqlite", jobs=2, timeout=3)
    by_name = {Path(r.path).stem: r for r in result.results}
    assert by_name["crashme"].status == "error" and "SIGABRT" in by_name["crashme"].reason
    assert by_name["hangme"].status == "timeout" and by_name["hangme"].timeout_s == 3
    assert by_name["oomme"].status == "error" and "out of memory" in by_name["oomme"].reason
    assert all(by_name[n].status == "ok" for n in ("ok_a", "ok_b", "ok_c"))
    assert len(stored(tmp_path / "a.sqlite")) == 6
    assert time.monotonic() - t0 < 60


def test_timeout_retried_only_under_a_longer_limit(tmp_path, monkeypatch):
    models = write_mlps(tmp_path / "m", ["slow_a"])
    db = tmp_path / "a.sqlite"
    monkeypatch.setenv(HOOK_ENV, "slow:slow")
    assert audit([models], db=db, jobs=1, timeout=0.2).results[0].status == "timeout"
    again = audit([models], db=db, jobs=1, timeout=0.2)
    assert again.analysed == 0 and again.results[0].status == "timeout"
    longer = audit([models], db=db, jobs=1, timeout=30)
    assert longer.analysed == 1 and longer.results[0].status == "ok"


def test_memory_cap_fails_only_the_greedy_model_and_a_larger_cap_retries_it(tmp_path, monkeypatch, capsys):
    """--max-memory caps each worker (RLIMIT_DATA): a model allocating 8 GiB fails as out of memory,
    the others (real onnxruntime sessions under the same cap) are analysed; the stored failure is
    reused under the same cap and retried under a larger one or none."""
    models = write_mlps(tmp_path / "m", ["ok_a", "greedy", "ok_b"])
    db = tmp_path / "a.sqlite"
    monkeypatch.setenv(HOOK_ENV, "alloc:greedy")
    assert cli.main(["audit", str(models), "--db", str(db), "--jobs", "2", "--max-memory", "1024", "--json"]) == 0
    by_name = {Path(r["path"]).stem: r for r in json_models(capsys.readouterr().out)}
    assert by_name["greedy"]["status"] == "error" and by_name["greedy"]["reason"].startswith("out of memory")
    assert "--max-memory 1024 MB" in by_name["greedy"]["reason"] and by_name["greedy"]["memory_mb"] == 1024
    assert by_name["ok_a"]["status"] == by_name["ok_b"]["status"] == "ok"
    assert audit([models], db=db, jobs=1, memory_mb=1024).analysed == 0  # same cap: nothing to retry
    monkeypatch.setenv(HOOK_ENV, "")
    again = audit([models], db=db, jobs=1, memory_mb=2048)
    assert again.analysed == 1 and all(r.status == "ok" for r in again.results)
    with pytest.raises(UsageError, match="max-memory"):
        audit([models], db=db, memory_mb=0)


def test_kill_9_mid_run_then_resume_recomputes_nothing(tmp_path):
    n = 12
    models = write_mlps(tmp_path / "m", [f"net{k:02d}" for k in range(n)])
    db = tmp_path / "a.sqlite"
    cmd = [sys.executable, "-m", "onnx_pathlift.cli", "audit", str(models), "--jobs", "1", "--db", str(db)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, HOOK_ENV: "slow:"})
        hang = time.monotonic() + 600  # a hang detector only: a slow machine just waits longer
        while len(stored(db)) < 3:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()  # still running: not all stored yet
            if time.monotonic() > hang:
                proc.kill()
                pytest.fail("the audit stored fewer than 3 models in 600 s: hung\n" + (tmp_path / "first.log").read_text())
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = stored(db)
    assert 3 <= len(before) < n

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=110, check=False)
    assert second.returncode == 0, second.stderr
    after = stored(db)
    assert len(after) == n  # every model exactly once (one row per content hash and settings)
    assert all(after[sha] == before[sha] for sha in before)  # nothing recomputed
    (_, first_end, *_), (second_id, second_end, analysed, reused) = runs(db)
    assert first_end is None and second_end is not None  # the killed run never finished
    assert analysed == n - len(before) and reused == len(before)
    assert sum(run == second_id for run, _ in after.values()) == n - len(before)
    assert f"{n - len(before)} models analysed, {len(before)} reused" in second.stdout


# ---------------------------------------------------------------------------------------------- Dask

def test_dask_local_cluster_same_isolation_and_database(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed", reason="dask[distributed] not installed: pip install -e '.[dask]'")
    models = write_mlps(tmp_path / "m", ["ok_a", "crashme", "ok_b", "hangme"], unsupported=1)
    db = tmp_path / "a.sqlite"
    monkeypatch.setenv(HOOK_ENV, "abort:crashme,hang:hangme")  # inherited by the cluster's worker processes
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        result = audit([models], db=db, scheduler=cluster.scheduler_address, timeout=5)
        again = audit([models], db=db, scheduler=cluster.scheduler_address, timeout=5)
    by_name = {Path(r.path).stem: r for r in result.results}
    assert by_name["crashme"].status == "error" and "SIGABRT" in by_name["crashme"].reason
    assert by_name["hangme"].status == "timeout"
    assert by_name["tanh_0"].status == "unsupported"
    for name in ("ok_a", "ok_b"):
        r = by_name[name]
        assert r.status == "ok" and r.path == str(models / f"{name}.onnx")
        for q in Settings().q:
            assert_norm_numbers(r.path, q, r.norm_log10(q))
    assert len(stored(db)) == 5 and again.analysed == 0 and again.reused == 5


def test_scheduler_without_dask_is_a_usage_error(tmp_path, monkeypatch, capsys):
    models = write_mlps(tmp_path / "m", ["a"])
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    rc = cli.main(["audit", str(models), "--scheduler", "tcp://127.0.0.1:1", "--db", str(tmp_path / "a.sqlite")])
    assert rc == 2 and "pip install 'onnx-pathlift[dask]'" in capsys.readouterr().err
