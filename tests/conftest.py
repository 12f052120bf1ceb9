"""Shared locations: the shipped models, the shared zoo beside the clone, the onnx wheel's light models."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_pathlift import cli

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ZOO = ROOT.parent / "shared" / "zoo"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def zoo() -> Path:
    if not (ZOO / "MANIFEST.txt").is_file():
        pytest.skip(f"the shared model zoo is not at {ZOO} (it sits beside the clone in CI)")
    return ZOO


def make_model(nodes, inputs, outputs, inits=None) -> onnx.ModelProto:
    """A float32 opset-17 model; ``inputs``/``outputs`` are ``(name, shape)`` (shape None: unknown)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run_main(capsys, *args) -> tuple[int, str, str]:
    """``onnx_pathlift.cli.main(ARGS)`` in-process; argparse's SystemExit becomes the return code."""
    capsys.readouterr()  # drop anything printed before
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


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
