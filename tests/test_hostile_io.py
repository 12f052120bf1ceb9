"""Hostile files and failing disks (issue 13): nothing read unbounded, nothing overwritten half-way,
nothing injected, every error path mapped to its documented exit code.

Resource bounds are asserted by peak RSS (``os.wait4``'s rusage of the CLI subprocess) and by
counts; subprocess timeouts are hang detectors (≥ 60 s), never performance assertions.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model
from conftest import load_tool, run_measured
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnx_pathlift import path_norm
from onnx_pathlift.audit import Settings, audit
from onnx_pathlift.audit.analyse import HOOK_ENV
from onnx_pathlift.errors import OutputError
from onnx_pathlift.fileio import atomic
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.fileio.read import DEFAULT_LIMITS
from onnx_pathlift.graph.builder import GraphBuilder
from onnx_pathlift.sanitise import csv_cell, html, terminal

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, rlimits, signals and /dev/full are POSIX")

make_hostile = load_tool("make_hostile")

ROOT_MODEL = Path(__file__).resolve().parent.parent / "models" / "digits_cnn_torch_bn.onnx"
HANG = 120  # seconds: a hang detector for each subprocess, not a performance bound
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def cli(*args, limit_fsize: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI (optionally under a file size limit, as ``ulimit -f``); the timeout is a hang detector."""
    def cap():
        if limit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    return subprocess.run([sys.executable, "-m", "onnx_pathlift.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=cap, env=env, timeout=HANG, check=False)


def big_mlp(width: int = 64) -> onnx.ModelProto:
    """A 16 KB+ ReLU MLP (so that an 8 KB file size limit cuts its write)."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((width, width)).astype(np.float32), rng.standard_normal((width, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return make_model(nodes, [("x", [1, width])], [("y", [1, 4])], {"w1": w1, "w2": w2})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-pathlift: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return lines[0]


# ------------------------------------------------------------------------ 1. bounded external data

def test_external_data_without_length_is_size_checked_before_reading(tmp_path):
    """A 48-byte tensor pointing at a 4 GiB sparse file without a ``length``: refused (exit 4) from
    the file's size; the CLI's peak RSS stays far below the file (it read 4.2 GB before)."""
    make_hostile.CASES["ext_no_length_huge"].write(tmp_path / "model.onnx", tmp_path)
    assert (tmp_path / "huge.bin").stat().st_size == make_hostile.SPARSE_BYTES
    proc, peak = run_measured("norm", tmp_path / "model.onnx", "--json")
    assert proc.returncode == 4, proc.stderr
    assert f"is {make_hostile.SPARSE_BYTES} bytes, and without a length entry must be 48" in json.loads(proc.stdout)["message"]
    assert peak < 600 << 20, f"peak RSS {peak >> 20} MiB for a refused 48-byte tensor"


def test_external_data_reads_only_the_declared_bytes(tmp_path):
    """With a ``length``, only the declared 48 bytes are read from a 4 GiB file: exit 0, small RSS,
    and the weights are the ones at the offset."""
    with open(tmp_path / "w.bin", "wb") as f:
        f.write(b"\0" * 64 + make_hostile.W1.tobytes())
        f.truncate(4 << 30)
    (tmp_path / "model.onnx").write_bytes(make_hostile.mlp_external("w.bin", offset=64).SerializeToString())
    proc, peak = run_measured("norm", tmp_path / "model.onnx", "--json", "-q", "1")
    assert proc.returncode == 0, proc.stderr
    assert peak < 600 << 20, f"peak RSS {peak >> 20} MiB reading 48 bytes"
    want = path_norm(make_hostile.mlp(), 1).value
    assert json.loads(proc.stdout)["norms"][0]["value"] == pytest.approx(want, rel=1e-6)


def test_external_data_without_length_exact_file_loads(tmp_path):
    make_hostile.CASES["ext_no_length_ok"].write(tmp_path / "model.onnx", tmp_path)
    model = load_model(tmp_path / "model.onnx")
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    assert not w1.external_data and np.array_equal(onnx.numpy_helper.to_array(w1), make_hostile.W1)


# ------------------------------------------------------------------------------- 2. atomic writes

def test_failed_write_under_a_file_size_limit_leaves_the_old_output(tmp_path):
    """``ulimit -f 8`` (8 KiB) while prune writes a 17 KB model over a good older output: exit 6, one
    line, the old output byte for byte, no temporary file left (it was truncated to 8,192 bytes)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(big_mlp().SerializeToString())
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous good output")
    proc = cli("prune", model, "--sparsity", "0.5", "-o", out, limit_fsize=8192)
    assert proc.returncode == 6, proc.stderr
    assert "cannot write" in one_error_line(proc) and "File too large" in proc.stderr
    assert out.read_bytes() == b"the previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_output_onto_the_input_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    data = big_mlp().SerializeToString()
    model.write_bytes(data)
    (tmp_path / "link.onnx").symlink_to(model)
    for out in (model, tmp_path / "." / "m.onnx", tmp_path / "link.onnx"):
        proc = cli("prune", model, "--sparsity", "0.5", "-o", out, "--json")
        assert proc.returncode == 2 and "is the input file" in json.loads(proc.stdout)["message"], proc.stdout
    proc = cli("rescale", model, "-o", model)
    assert proc.returncode == 2 and "is the input file" in one_error_line(proc)
    assert model.read_bytes() == data


@pytest.mark.parametrize("target", ["folder", "missing", "devfull", "readonly"])
def test_output_failures_exit_6_with_json(tmp_path, target):
    """A read-only parent is a chmod 500 folder; root writes into those, so for root it is sysfs,
    where no file can be created (EACCES, the same failure)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(big_mlp(8).SerializeToString())
    readonly = Path("/sys/onnx-pathlift-test.onnx") if IS_ROOT else tmp_path / "ro" / "x.onnx"
    out = {"folder": tmp_path, "missing": tmp_path / "no" / "such" / "x.onnx", "devfull": Path("/dev/full"),
           "readonly": readonly}[target]
    if target == "readonly" and IS_ROOT and (not Path("/sys").is_dir() or _can_create_in("/sys")):
        pytest.skip("no folder here refuses root's writes")
    if target == "readonly" and not IS_ROOT:
        out.parent.mkdir()
        out.parent.chmod(0o500)
    proc = cli("lift", model, "-o", out, "--json")
    assert proc.returncode == 6, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["error"] == "OutputError" and doc["exit_code"] == 6 and "cannot write" in doc["message"]
    assert "Traceback" not in proc.stderr


def _can_create_in(folder: str) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def test_atomic_write_failure_keeps_the_target_and_removes_the_temporary(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        atomic.write_with(target, half_then_fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["t.bin"]
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


# ------------------------------------------------------------------------------ 3. O(1) fresh names

class _CountingSet(set):
    probes = 0

    def __contains__(self, item) -> bool:
        type(self).probes += 1
        return super().__contains__(item)


def test_fresh_names_are_unique_deterministic_and_linear():
    """20,000 names from one hint take at most 2 probes each (the linear scan took ~n²/2 = 2·10^8)."""
    n = 20_000
    b = GraphBuilder(17, taken={"w", "w_3"})
    b._taken = _CountingSet(b._taken)
    _CountingSet.probes = 0
    names = [b.fresh("w") for _ in range(n)]
    assert _CountingSet.probes <= 2 * n + 2
    assert len(set(names)) == n and "w" not in names and "w_3" not in names
    assert names[:4] == ["w_1", "w_2", "w_4", "w_5"]
    again = GraphBuilder(17, taken={"w", "w_3"})
    assert [again.fresh("w") for _ in range(n)] == names


@pytest.mark.parametrize("build,n,message", [
    ("wide_sum", 100_000, "has 100000 inputs (limit 4096)"),
    ("gemm_chain", 40_000, "the model has 40000 nodes (limit 32768)"),
    ("many_io", 2100, "the graph has 2100 inputs and 2100 outputs (limit 4096 in all)"),
    ("gemm_chain", 100_000, "would take more than 22 MiB to decode"),
    ("many_io", 100_000, "would take more than 28 MiB to decode"),
])
def test_huge_graphs_refused_by_count(tmp_path, build, n, message):
    """100k-input Sum, 100k-node chain, 100k graph inputs + outputs: refused by the limits (they took
    more than 20 minutes, 168 CPU s and a timeout before); the last two already by what protobuf would
    take to decode them (8 and 13 bytes per file byte), the node and width limits just past them. The
    subprocess timeout is a hang detector."""
    path = tmp_path / f"{build}.onnx"
    path.write_bytes(make_hostile.SCALE[build](n).SerializeToString())
    proc = cli("norm", path, "--json")
    assert proc.returncode == 4 and message in json.loads(proc.stdout)["message"], proc.stdout


def test_large_graphs_under_the_limits_are_analysed_exactly():
    """Just under the limits, the closed forms: Sum of n copies of x (4 features) has 4n paths of
    weight 1 (‖Φ‖_1 = 4n); a chain of identity Gemms has 4 paths of weight 1 (‖Φ‖_1 = 4)."""
    n = DEFAULT_LIMITS.max_node_inputs
    assert path_norm(make_hostile.wide_sum(n), 1).value == pytest.approx(4 * n, rel=1e-6)
    assert path_norm(make_hostile.gemm_chain(3000), 1).value == pytest.approx(4.0, rel=1e-6)
    assert path_norm(make_hostile.many_io(DEFAULT_LIMITS.max_graph_io // 2), 1).value == pytest.approx(
        2 * DEFAULT_LIMITS.max_graph_io // 2, rel=1e-6)


# ------------------------------------------------------------------------------ 4. orphan workers

def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _workers(pid: int) -> set[int]:
    """The audit's pool workers that have loaded onnxruntime (their imports are done)."""
    found = set()
    for child in _children(pid):
        try:
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text() and "onnxruntime" in \
                    Path(f"/proc/{child}/maps").read_text():
                found.add(child)
        except OSError:
            pass
    return found


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _hanging(pids: set[int]) -> bool:
    """Whether every process used no CPU over one second (the test hook's sleep, imports done)."""
    before = {p: _cpu_ticks(p) for p in pids}
    time.sleep(1.0)
    return all(_cpu_ticks(p) == t for p, t in before.items())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_busy_workers_die_with_a_killed_audit(tmp_path):
    """kill -9 of the audit parent while its 2 workers are busy (hanging on a model): both workers
    are gone within the hang detector's bound (they stayed alive 60 s and more before)."""
    models = tmp_path / "m"
    models.mkdir()
    for k in range(3):
        (models / f"net{k}.onnx").write_bytes(big_mlp(4 + k).SerializeToString())
    env = {**os.environ, HOOK_ENV: "hang:"}
    parent = subprocess.Popen([sys.executable, "-m", "onnx_pathlift.cli", "audit", str(models), "--jobs", "2",
                               "--db", str(tmp_path / "a.sqlite")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        assert "model(s) to analyse" in parent.stderr.readline()
        deadline = time.monotonic() + HANG
        while len(workers := _workers(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, workers
        while not _hanging(workers) and time.monotonic() < deadline:  # READY sent, each hangs on its model
            pass
        assert all(_alive(w) for w in workers)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=HANG)
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), f"orphans: {[w for w in workers if _alive(w)]}"
    finally:
        for w in _children(parent.pid) | {w for w in workers if _alive(w)}:
            os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
        parent.stderr.close()


# ------------------------------------------------------------- 5. failures remember their settings

@pytest.mark.parametrize("death", ["kill", "segv"])
def test_death_under_a_memory_cap_is_out_of_memory_and_retried_under_a_larger_one(tmp_path, monkeypatch, death):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("ok_a", "greedy"):
        (folder / f"{name}.onnx").write_bytes(big_mlp(6 if name == "ok_a" else 7).SerializeToString())
    db = tmp_path / "a.sqlite"
    monkeypatch.setenv(HOOK_ENV, f"{death}:greedy")
    first = {Path(r.path).stem: r for r in audit([folder], Settings(q=(1.0,)), jobs=2, timeout=60, memory_mb=1500,
                                                  db=db).results}
    greedy = first["greedy"]
    signame = "SIGKILL" if death == "kill" else "SIGSEGV"
    assert greedy.status == "error" and greedy.out_of_memory, greedy.reason
    assert f"died of {signame} under --max-memory 1500 MB" in greedy.reason
    assert greedy.memory_mb == 1500 and greedy.timeout_s == 60  # the settings that produced it
    assert first["ok_a"].status == "ok"
    assert audit([folder], Settings(q=(1.0,)), jobs=1, memory_mb=1500, db=db).analysed == 0  # same cap: kept
    monkeypatch.setenv(HOOK_ENV, "")
    again = audit([folder], Settings(q=(1.0,)), jobs=1, memory_mb=3000, db=db)
    assert again.analysed == 1 and all(r.status == "ok" for r in again.results)


def test_crash_without_a_cap_stays_a_native_crash(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "crash.onnx").write_bytes(big_mlp(5).SerializeToString())
    monkeypatch.setenv(HOOK_ENV, "segv:crash")
    r = audit([folder], Settings(q=(1.0,)), jobs=1, db=tmp_path / "a.sqlite").results[0]
    assert r.status == "error" and not r.out_of_memory and "crashed with SIGSEGV" in r.reason


# ---------------------------------------------------------------------------------- 6. injection

def test_sanitiser_rules():
    assert terminal("a\x1b]0;t\x07b\nc\u202ed\x9b") == "a\\x1b]0;t\\x07b\\nc\\u202ed\\x9b"
    assert terminal("one\ntwo\x1b[31m", keep_newlines=True) == "one\ntwo\\x1b[31m"
    assert terminal("naïve ‖Φ‖ 日本") == "naïve ‖Φ‖ 日本"
    for start in "=+-@\t\r":
        assert csv_cell(start + "1+1").startswith("'")
    assert csv_cell(-3.5) == -3.5 and csv_cell(None) is None and csv_cell("fc1") == "fc1"
    assert html('<a href="x">\x1b') == "&lt;a href=&quot;x&quot;&gt;\\x1b"


def test_model_strings_reach_no_terminal_raw(tmp_path):
    path = tmp_path / "inject.onnx"
    path.write_bytes(make_hostile.injecting().SerializeToString())
    proc = cli("norm", path)
    assert proc.returncode == 3
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    lines = proc.stderr.strip().splitlines()  # the summary line, one refused node, the way out and its command
    assert len(lines) == 4 and lines[2].startswith("analysable instead") and lines[3].startswith("  try: "), proc.stderr
    assert "tanh\\nTraceback" in proc.stderr
    m = make_hostile.injecting()
    m.graph.node[0].op_type = "Evil\nTraceback (most recent call last):"  # op types are model strings too
    path.write_bytes(m.SerializeToString())
    proc = cli("inspect", path)
    assert proc.returncode == 3 and "\x1b" not in proc.stdout + proc.stderr
    assert not any(line.startswith("Traceback") for line in (proc.stdout + proc.stderr).splitlines())
    assert "Evil\\nTraceback" in proc.stdout


def test_model_strings_are_neutralised_in_csv_html_and_progress(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "inject.onnx").write_bytes(make_hostile.injecting().SerializeToString())
    m = make_hostile.mlp()
    m.producer_name = make_hostile.INJECTIONS["producer"]
    (folder / "formula.onnx").write_bytes(m.SerializeToString())
    proc = cli("audit", folder, "--db", tmp_path / "a.sqlite", "--csv", tmp_path / "r.csv", "--report",
                  tmp_path / "r.html", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout + proc.stderr
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["formula.onnx"]["producer"].startswith("'=HYPERLINK(")
    assert all(not v.startswith(("=", "+", "@")) for r in rows.values() for v in r.values())
    assert "\x1b" not in (tmp_path / "r.csv").read_text()
    page = (tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page


# --------------------------------------------------------------------------- 7. error paths, exit codes

@pytest.mark.parametrize("case", ["rank_100_input", "avgpool_pads_over_kernel"])
def test_input_files_that_crashed_numpy_or_onnxruntime(tmp_path, case):
    path = tmp_path / f"{case}.onnx"
    make_hostile.CASES[case].write(path, tmp_path)
    proc = cli("norm", path)
    assert proc.returncode == 4 and make_hostile.CASES[case].message in one_error_line(proc)
    assert "\x1b[" not in proc.stderr
    proc = cli("norm", path, "--json")
    assert proc.returncode == 4 and json.loads(proc.stdout)["exit_code"] == 4 and proc.stderr == ""


def _audit_models(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        (folder / f"net{k:02d}.onnx").write_bytes(big_mlp(4 + k).SerializeToString())
    return folder


def test_full_disk_under_the_audit_database_exits_6_and_keeps_what_was_committed(tmp_path):
    """A file size limit (as a full disk) stops the database's growth mid-audit: exit 6, one line,
    and the audit resumes from the committed results once there is room."""
    folder = _audit_models(tmp_path / "m", 24)
    db = tmp_path / "a.sqlite"
    proc = cli("audit", folder, "--db", db, "--jobs", "1", "-q", "1", limit_fsize=100_000)
    assert proc.returncode == 6, proc.stderr
    assert "cannot write the audit database" in proc.stderr and "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr
    kept = sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert 0 < kept < 24
    proc = cli("audit", folder, "--db", db, "--jobs", "1", "-q", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sum(1 for line in proc.stdout.splitlines() if "summary" not in json.loads(line)) == 24  # and the summary line


def test_database_with_garbage_in_the_middle_is_a_usage_error(tmp_path):
    folder = _audit_models(tmp_path / "m", 16)
    db = tmp_path / "a.sqlite"
    assert audit([folder], Settings(q=(1.0,)), jobs=1, db=db).analysed == 16
    size = db.stat().st_size
    assert size > 8 * 4096 and not Path(f"{db}-wal").exists()
    with open(db, "r+b") as f:  # the header page stays intact: only the middle is garbage
        f.seek(4096)
        f.write(np.random.default_rng(0).integers(0, 256, size - 2 * 4096, np.uint8).tobytes())
    proc = cli("audit", folder, "--db", db, "--json", "-q", "1")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and "cannot use as the audit database" in doc["message"]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- 8. exact output paths

def test_scores_and_masks_write_exactly_the_named_file(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(big_mlp(8).SerializeToString())
    proc = cli("scores", model, "-o", tmp_path / "scores.bin", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["written"] == str(tmp_path / "scores.bin")
    assert sorted(np.load(tmp_path / "scores.bin")) == ["w1", "w2"] and not (tmp_path / "scores.bin.npz").exists()
    proc = cli("prune", model, "--sparsity", "0.5", "-o", tmp_path / "p.onnx", "--mask", tmp_path / "mask")
    assert proc.returncode == 0, proc.stderr
    assert sorted(np.load(tmp_path / "mask")) == ["w1", "w2"] and not (tmp_path / "mask.npz").exists()
    proc = cli("scores", model, "-o", "/dev/full")
    assert proc.returncode == 6 and "No space left on device" in one_error_line(proc)
    assert not Path("/dev/full.npz").exists()


# ------------------------------------------------------------------------ 9. special audit entries

def test_audit_reports_fifos_and_dangling_symlinks_without_blocking(tmp_path):
    """A FIFO named *.onnx (opening it for reading would block forever) and a dangling symlink are
    reported as failures with their reason, next to an ok model. Run as a subprocess: the timeout
    is the hang detector."""
    folder = tmp_path / "m"
    reasons = make_hostile.special_entries(folder)
    (folder / "good.onnx").write_bytes(big_mlp(4).SerializeToString())
    proc = cli("audit", folder, "--db", tmp_path / "a.sqlite", "--json", "-q", "1", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    got = {Path(r["path"]).name: r for r in map(json.loads, proc.stdout.splitlines()) if "summary" not in r}
    assert got["good.onnx"]["status"] == "ok"
    for name, reason in reasons.items():
        assert got[name]["status"] == "invalid" and reason in got[name]["reason"], got[name]
    proc = cli("audit", folder / "fifo.onnx", "--db", tmp_path / "b.sqlite", "--json", "-q", "1")
    assert proc.returncode == 0 and "FIFO" in json.loads(proc.stdout.splitlines()[0])["reason"]


def test_unreadable_file_named_on_the_command_line_is_a_usage_error(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(big_mlp(8).SerializeToString())
    proc = cli("prune", model, "--sparsity", "0.5", "-o", tmp_path / "p.onnx", "--eval", tmp_path / "none.npz", "--json")
    assert proc.returncode == 2 and "none.npz: cannot read: No such file" in json.loads(proc.stdout)["message"]
    assert "internal error" not in proc.stderr


def test_audit_report_write_failures_exit_6(tmp_path):
    """--csv onto /dev/full, --report onto a folder: exit 6 with one error (JSON under --json); the
    results stay in the database (the next run reuses them)."""
    folder = _audit_models(tmp_path / "m", 2)
    db = tmp_path / "a.sqlite"
    proc = cli("audit", folder, "--db", db, "--csv", "/dev/full", "-q", "1", "--json")
    assert proc.returncode == 6 and json.loads(proc.stdout)["error"] == "OutputError", proc.stdout
    (tmp_path / "adir").mkdir()
    proc = cli("audit", folder, "--db", db, "--report", tmp_path / "adir", "-q", "1")
    assert proc.returncode == 6 and "it is a folder" in proc.stderr and "Traceback" not in proc.stderr
    assert "0 model(s) to analyse, 2 already in the database" in proc.stderr


# ------------------------------------------------------------------------------------- fuzzing

@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40), st.booleans())
def test_fuzz_sanitiser(text, keep_newlines):
    """Whatever the text: no control, format, separator or surrogate character gets through (but
    ``\\n`` with ``keep_newlines``), printable text is unchanged, and no CSV cell starts a formula."""
    import unicodedata

    out = terminal(text, keep_newlines)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs") or (c == "\n" and keep_newlines)
               for c in out)
    out.encode("utf-8")  # printable on any UTF-8 terminal
    if text.isprintable() and all(unicodedata.category(c) not in ("Cf", "Zl", "Zp") for c in text):
        assert out == text
    cell = csv_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert "<" not in html(text) and ">" not in html(text) and '"' not in html(text)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(offset=st.integers(-5, 120), length=st.one_of(st.none(), st.integers(0, 200)),
       file_size=st.integers(0, 200))
def test_fuzz_external_data_entries(tmp_path_factory, offset, length, file_size):
    """Any offset, length (or none) and file size: the model loads with exactly W1's 48 bytes at the
    offset, or is refused with InvalidModelError; never anything else."""
    from onnx_pathlift.errors import InvalidModelError

    folder = tmp_path_factory.mktemp("ext")
    data = (bytes(range(256)) * 2)[:file_size]
    (folder / "w.bin").write_bytes(data)
    m = make_hostile.mlp_external("w.bin", offset=max(offset, 0), **({} if length is None else {"length": length}))
    if length is None:
        m = make_hostile.mlp_external_no_length("w.bin", offset=max(offset, 0))
    entry = next(e for e in m.graph.initializer[0].external_data if e.key == "offset")
    entry.value = str(offset)
    (folder / "model.onnx").write_bytes(m.SerializeToString())
    fits = offset >= 0 and length in (None, 48) and offset + 48 <= file_size and (length or offset + 48 == file_size)
    try:
        model = load_model(folder / "model.onnx")
    except InvalidModelError:
        assert not fits
        return
    assert fits
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    assert w1.raw_data == data[offset:offset + 48]


def test_initializers_listed_as_inputs_do_not_count_as_graph_inputs():
    """IR < 4 models list every initializer as a graph input: 5000 of them stay under max_graph_io,
    and the path-norm is the model's own."""
    m = make_hostile.mlp()
    for k in range(5000):
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.float32), f"unused{k}"))
    m.graph.input.extend(helper.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT, list(t.dims))
                         for t in m.graph.initializer)
    assert len(m.graph.input) > DEFAULT_LIMITS.max_graph_io
    assert path_norm(m, 1).value == pytest.approx(path_norm(make_hostile.mlp(), 1).value, rel=1e-6)


# ------------------------------------------------------------------------ issue 27: special files, size limit, memory


def _special(kind: str, folder: Path) -> Path:
    """A FIFO (no writer), a listening Unix socket's file, or a character device, as a model path."""
    if kind == "device":
        return Path("/dev/zero")
    path = folder / f"{kind}.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.listen(1)
        _SOCKETS.append(sock)  # kept open for the test session's life
    return path


_SOCKETS: list = []


@pytest.mark.parametrize(("command", "kind"), [("norm", "fifo"), ("lipschitz", "fifo"), ("scores", "socket"),
                                               ("lift", "fifo"), ("inspect", "device"), ("norm", "device"),
                                               ("compare", "fifo"), ("rescale", "socket")])
def test_special_files_are_never_read_as_models(tmp_path, command, kind):
    """A FIFO (whose ``open`` would block for ever without a writer), a socket or a device as the
    model: exit 4 at once, one error line naming it; the hang detector is the only clock."""
    path = _special(kind, tmp_path)
    extra = {"lift": ["-o", tmp_path / "out.onnx"], "rescale": ["-o", tmp_path / "out.onnx"],
             "compare": [ROOT_MODEL]}.get(command, [])
    args = [command, ROOT_MODEL, path] if command == "compare" else [command, path, *extra]
    proc = cli(*args)
    assert proc.returncode == 4, proc.stderr
    assert f"{path} is not a regular file" in one_error_line(proc)


def test_the_model_file_size_limit(tmp_path):
    """``--max-file-size`` (MiB) refuses a larger model before reading it, in every command that reads
    one and in the audit's workers (which inherit it); the default is protobuf's own 2 GiB."""
    from onnx_pathlift.fileio import prefetch

    assert prefetch.max_file_bytes() == 2 << 30
    path = tmp_path / "m.onnx"
    onnx.save(big_mlp(), path)
    size = path.stat().st_size
    for command in ("norm", "inspect", "lipschitz"):
        proc = cli(command, path, "--max-file-size", 0.01)
        assert proc.returncode == 4 and f"the file is {size} bytes, over the limit of 10485 bytes" in one_error_line(proc)
    assert cli("norm", path, "--max-file-size", 1).returncode == 0
    proc = cli("audit", path, "--db", tmp_path / "a.sqlite", "--json", "--jobs", "1", "--max-file-size", 0.01)
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[0])["status"] == "invalid", proc.stdout
    assert cli("norm", path, "--max-file-size", 0).returncode == 2


def test_running_out_of_memory_while_reading_is_exit_4(tmp_path):
    """A model whose reading fails to allocate (under an address-space cap that the imports fit in but
    the file's 400 MB do not): one error line, exit 4, no traceback; the prefetch thread's own
    MemoryError is swallowed (it leaves the reading to the command)."""
    path = tmp_path / "big.onnx"
    w = np.zeros((10_000, 10_000), np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                       [("x", [1, 10_000])], [("y", [1, 10_000])], {"w": w})
    onnx.save(model, path)
    proc, _ = run_measured("norm", path, cap_bytes=900 << 20, hang_s=HANG)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "out of memory" in one_error_line(proc)


def test_audit_help_names_the_fail_on_exit_code():
    from onnx_pathlift.cli.app import build_parser
    from onnx_pathlift.errors import FAIL_ON_EXIT

    audit_parser = build_parser()._subparsers._group_actions[0].choices["audit"]
    text = " ".join(audit_parser.format_help().split())
    assert FAIL_ON_EXIT == 7 and f"exit with code {FAIL_ON_EXIT} when any model ends" in text


def test_no_output_onto_a_file_the_run_reads(tmp_path):
    """``-o`` naming the model's external-data file (by its name, a symlink or a hard link), and an audit's
    report, CSV or database naming a model it audits: exit 2 before anything is written, the files
    unchanged."""
    model = big_mlp()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    weights = (tmp_path / "w.bin").read_bytes()
    os.symlink(tmp_path / "w.bin", tmp_path / "link.bin")
    os.link(tmp_path / "w.bin", tmp_path / "hard.bin")
    for command in ("lift", "rescale", "prune"):
        for out in ("w.bin", "link.bin", "hard.bin"):
            extra = ["--sparsity", "0.5"] if command == "prune" else []
            proc = cli(command, tmp_path / "m.onnx", *extra, "-o", tmp_path / out)
            assert proc.returncode == 2 and "reads" in one_error_line(proc), (command, out, proc.stderr)
    proc = cli("scores", tmp_path / "m.onnx", "-o", tmp_path / "w.bin")
    assert proc.returncode == 2 and "reads" in one_error_line(proc)
    assert (tmp_path / "w.bin").read_bytes() == weights
    audited = tmp_path / "zoo"
    audited.mkdir()
    onnx.save(big_mlp(), audited / "a.onnx")
    before = (audited / "a.onnx").read_bytes()
    for option in ("--report", "--csv", "--db"):
        proc = cli("audit", audited, option, audited / "a.onnx", "--jobs", "1")
        assert proc.returncode == 2 and "is the input file" in one_error_line(proc), (option, proc.stderr)
    assert (audited / "a.onnx").read_bytes() == before
    assert cli("lift", tmp_path / "m.onnx", "-o", tmp_path / "lifted.onnx").returncode == 0


EVIL = "\nFAKE line\r\x1b[31m\u202e"  # a fake output line, a carriage return, a colour, a bidi override


def _evil_mlp() -> onnx.ModelProto:
    """big_mlp with every name (inputs, outputs, initializers, intermediate tensors, nodes) carrying EVIL."""
    model = big_mlp(8)
    renamed = {}
    for vi in [*model.graph.input, *model.graph.output]:
        renamed[vi.name] = vi.name + EVIL
        vi.name = renamed[vi.name]
    for t in model.graph.initializer:
        renamed[t.name] = t.name + EVIL
        t.name = renamed[t.name]
    for i, node in enumerate(model.graph.node):
        node.name = f"node{i}{EVIL}"
        for names in (node.input, node.output):
            for j, name in enumerate(names):
                names[j] = renamed.setdefault(name, name + EVIL)
    model.producer_name, model.doc_string = "prod" + EVIL, "doc" + EVIL
    return model


def _assert_clean(where: str, text: str) -> None:
    assert not {"\r", "\x1b", "\u202e"} & set(text), f"{where}: {text!r}"
    assert not any(line.lstrip().startswith("FAKE") for line in text.splitlines()), f"{where}: {text!r}"


def test_every_command_escapes_model_names_in_its_text_output(tmp_path):
    """Every command's text output (stdout and stderr), on success and on the error paths that quote the
    model (a refused node, a tensor nothing produces, a cycle), with names holding a newline, a
    carriage return, ESC and a bidi override: none reaches the terminal raw, none starts a line."""
    from conftest import run_captured

    path = tmp_path / "evil.onnx"
    onnx.save(_evil_mlp(), path)
    out = tmp_path / "out"
    out.mkdir()
    calls = [["norm", path, "--verify"], ["lift", path, "-o", out / "l.onnx"], ["compare", path, path, "--check", "3"],
             ["lipschitz", path], ["scores", path, "-o", out / "s.npz"], ["prune", path, "--sparsity", "0.5", "-o",
                                                                          out / "p.onnx"],
             ["prune", path, "--structure", "channel", "--sparsity", "0.5", "-o", out / "c.onnx", "--repeats", "1"],
             ["rescale", path, "-o", out / "r.onnx"], ["inspect", path],
             ["audit", path, "--db", out / "a.sqlite", "--jobs", "1", "--report", out / "a.html", "--csv", out / "a.csv"]]
    broken = {"refused": lambda m: setattr(m.graph.node[1], "op_type", "Tanh" + EVIL),
              "unproduced": lambda m: m.graph.node[2].input.__setitem__(0, "ghost" + EVIL),
              "unproduced_op": lambda m: (m.graph.node[2].input.__setitem__(0, "ghost"),
                                          setattr(m.graph.node[2], "op_type", "MatMul" + EVIL)),
              "cycle": lambda m: m.graph.node[0].input.__setitem__(0, m.graph.node[2].output[0])}
    for name, edit in broken.items():
        model = _evil_mlp()
        edit(model)
        onnx.save(model, tmp_path / f"{name}.onnx")
        calls += [["norm", tmp_path / f"{name}.onnx"], ["inspect", tmp_path / f"{name}.onnx"]]
    for args in calls:
        rc, stdout, stderr = run_captured(*args)
        assert rc in (0, 1, 3, 4), (args, rc, stderr)
        _assert_clean(" ".join(map(str, args)), stdout + stderr)


def test_a_concat_at_the_activation_limit_under_a_memory_cap_is_exit_4(tmp_path):
    """A 4096-way Concat whose output has 2^28 elements (the activation limit) under a 2 GB address-space
    cap: its float64 exponent maps cannot be allocated; one error line, exit 4, not an internal error."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["r"] * 4096, ["c"], axis=1),
             helper.make_node("Relu", ["c"], ["y"])]
    onnx.save(make_model(nodes, [("x", [1, 1 << 16])], [("y", [1, 1 << 28])], {}), tmp_path / "concat.onnx")
    proc, _ = run_measured("norm", tmp_path / "concat.onnx", cap_bytes=2 << 30, hang_s=HANG)
    assert proc.returncode == 4 and "out of memory" in one_error_line(proc)


def test_a_concat_at_the_activation_limit_gets_its_bounds_without_allocating_them(tmp_path):
    """The same 4096-way Concat: its static bounds (each input's one value) and the output's total are
    computed in under 1 MiB of allocations (counted by tracemalloc; the bound was a 2 GiB float64
    array); inputs whose bounds differ are refused (exit 3, the limit named) before allocating."""
    from conftest import run_cli, traced_peak

    from onnx_pathlift.backend.emit import static_bounds
    from onnx_pathlift.frontend.importer import import_model
    from onnx_pathlift.graph.numeric import log2_sum_scaled
    from onnx_pathlift.ops.shape import MAX_CONCAT_MAP

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["r"] * 4096, ["c"], axis=1),
             helper.make_node("Relu", ["c"], ["y"])]
    onnx.save(make_model(nodes, [("x", [1, 1 << 16])], [("y", [1, 1 << 28])], {}), tmp_path / "concat.onnx")
    dag = import_model(tmp_path / "concat.onnx")
    layers = list(dag.layers())
    shapes = {layer.name: layer.shape for layer in layers}
    with traced_peak() as peak:
        bounds = static_bounds(layers, shapes, 1.0)
        total = log2_sum_scaled(bounds[layers[-1].name], shape=shapes[layers[-1].name])  # as emit sums it
    assert peak[0] < 1 << 20 and total == 28.0  # 2**28 neurons, each bounded by 2**0 (inputs all ones)
    scaled = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["s"]),
              helper.make_node("Concat", ["r", "s"] * 2048, ["c"], axis=1), helper.make_node("Relu", ["c"], ["y"])]
    onnx.save(make_model(scaled, [("x", [1, 1 << 16])], [("y", [1, 1 << 28])], {"two": np.float32(2.0)}),
              tmp_path / "scaled.onnx")
    proc = run_cli("norm", tmp_path / "scaled.onnx", "--json")
    assert proc.returncode == 3 and f"over the limit of {MAX_CONCAT_MAP}" in proc.stdout, proc.stdout[-2000:]
