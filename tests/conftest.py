"""Shared locations (the shipped models, the shared zoo beside the clone or at $ONNX_PATHLIFT_ZOO, the onnx wheel's light models)
and shared runners: the CLI in-process (``run_main``, ``run_captured``), in a subprocess (``run_cli``)
and in a measured one (``run_measured``); the ``audit`` command's output and database; the scripts of
tools/. Models are built in builders.py."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import closing, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import onnx
import pytest

from onnx_pathlift import cli

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
#: the shared model zoo: the folder this environment variable names, else ``../shared/zoo`` beside the clone
ZOO_ENV = "ONNX_PATHLIFT_ZOO"
ZOO = Path(os.environ[ZOO_ENV]).expanduser().resolve() if os.environ.get(ZOO_ENV) else ROOT.parent / "shared" / "zoo"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def zoo() -> Path:
    if not (ZOO / "MANIFEST.txt").is_file():
        if os.environ.get(ZOO_ENV):  # asked for: a wrong folder is an error, not a silent skip
            pytest.fail(f"${ZOO_ENV} names {ZOO}, which holds no MANIFEST.txt: not the shared model zoo")
        pytest.skip(f"the shared model zoo is not at {ZOO} (it sits beside the clone in CI; ${ZOO_ENV} names another folder)")
    return ZOO


def run_main(capsys, *args) -> tuple[int, str, str]:
    """``onnx_pathlift.cli.main(ARGS)`` in-process; argparse's SystemExit becomes the return code."""
    capsys.readouterr()  # drop anything printed before
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_captured(*args) -> tuple[int, str, str]:
    """``onnx_pathlift.cli.main(ARGS)`` in-process with its output captured (no pytest fixture needed):
    (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Yield a list that holds, after the block, the peak bytes allocated inside it through Python's
    allocators (numpy arrays included): a counted bound for "refused before allocating"."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def run_measured(*args, cap_bytes: int | None = None, cwd: Path | None = None, hang_s: float = 600.0,
                 ) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI with ``args`` from a fresh, small wrapper process, so that the wrapper's
    RUSAGE_CHILDREN is this one run's peak resident memory (a child forked straight from a large
    pytest process starts with pytest's resident size). ``cap_bytes``: an address-space limit for
    the run; ``hang_s``: a hang detector, not a timing. Returns the run and its peak RSS in bytes."""
    code = ("import json, resource, subprocess, sys; cap = int(sys.argv[1]); hang = float(sys.argv[2]); "
            "pre = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))) if cap else None; "
            "p = subprocess.run([sys.executable, '-m', 'onnx_pathlift.cli', *sys.argv[3:]], capture_output=True, "
            "text=True, preexec_fn=pre, timeout=hang); "
            "print(json.dumps([p.returncode, p.stdout, p.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    wrap = subprocess.run([sys.executable, "-c", code, str(cap_bytes or 0), str(hang_s), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=hang_s + 60, check=True)
    rc, out, err, kib = json.loads(wrap.stdout)
    return subprocess.CompletedProcess(args, rc, out, err), kib * 1024


def load_tool(name: str):
    """The script ``tools/<name>.py`` as a module (registered in ``sys.modules``, loaded once)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def norms_by_q(result: dict) -> dict[float, float]:
    """``{q: value}`` of a ``norm --json`` result."""
    return {float(n["q"]): n["value"] for n in result["norms"]}


def run_cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m onnx_pathlift.cli ARGS`` in a subprocess, text output captured (``timeout``: a hang detector)."""
    return subprocess.run([sys.executable, "-m", "onnx_pathlift.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, check=False)


def json_models(stdout: str) -> list[dict]:
    """The model objects of ``audit --json``'s output (its last line is the ``summary`` object)."""
    *models, last = (json.loads(line) for line in stdout.splitlines())
    assert set(last) == {"summary"} and last["summary"]["files"] == len(models), last
    return models


def query(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def stored(db: Path) -> dict[str, tuple[int, str]]:
    """``{sha256: (run_id, computed_at)}`` of every stored result (empty while the database is not there)."""
    try:
        rows = query(db, "SELECT sha256, run_id, computed_at FROM results") if db.exists() else []
    except sqlite3.OperationalError:  # the audit has not created its tables yet
        rows = []
    return {sha: (run, at) for sha, run, at in rows}
