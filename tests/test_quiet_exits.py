"""No noise and no small lies on the command line: no RuntimeWarning on stderr (``-W error`` makes one fatal),
a closed stdout (``| head -1``) ends quietly, SIGTERM ends with one line, ``audit --help`` tells the defaults
and the ``--fail-on`` exit code, ``--quiet`` leaves out the long tables, a latency change says speed-up or slower."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from builders import write_mlps
from conftest import MODELS, run_cli

from onnx_pathlift.audit.analyse import HOOK_ENV
from onnx_pathlift.audit.command import FAIL_ON_EXIT
from onnx_pathlift.cli.render import _speed

CNN = MODELS / "digits_cnn_torch_bn.onnx"


def strict(*args) -> subprocess.CompletedProcess:
    """The command line with every RuntimeWarning an error (a warning would end it with an internal error)."""
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "onnx_pathlift", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["compare", CNN, MODELS / "digits_cnn_torch_bn_pruned50.onnx", "--check", "20"],
    ["compare", CNN, MODELS / "digits_cnn_torch_bn_int8.onnx"],
    ["prune", CNN, "--sparsity", "0.5", "--eval", MODELS / "digits_test.npz"],
], ids=["compare-pruned", "compare-int8", "prune"])
def test_no_runtime_warning(tmp_path, args):
    if args[0] == "prune":
        args = [*args, "-o", tmp_path / "p.onnx"]
    proc = strict(*args)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]


def test_a_closed_stdout_ends_quietly():
    """``norm … | head -1``: the reader is gone before anything is written (deterministic: its end is
    closed first); exit 141 as a process killed by SIGPIPE, nothing on stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "onnx_pathlift", "norm", str(CNN), "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_sigterm_ends_with_one_line(tmp_path):
    models = write_mlps(tmp_path / "m", ["hangme"])
    env = {**os.environ, HOOK_ENV: "hang:hangme"}
    proc = subprocess.Popen([sys.executable, "-m", "onnx_pathlift", "audit", str(models), "--db", str(tmp_path / "a.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "to analyse" in proc.stderr.readline()  # the audit runs: its first progress line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # a hang detector
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines() == ["onnx-pathlift: terminated (SIGTERM)"], err


def test_audit_help_tells_defaults_and_the_fail_on_code():
    proc = run_cli("audit", "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert f"exit with code {FAIL_ON_EXIT} when any model" in text
    assert "--timeout S seconds per model before its worker is killed (default: none" in text
    assert "(default: none, no cap)" in text and "retried" not in text


def test_quiet_leaves_out_the_long_tables(tmp_path):
    """``--quiet``: the summary lines only. Channel pruning's per-layer table and kept-group lines, weight
    pruning's per-layer zeros, the scores' per-tensor table, compare's per-layer shares go; the summary lines stay, word for word."""
    cases = {"prune": ["prune", CNN, "--structure", "channel", "--sparsity", "0.3", "-o", tmp_path / "s.onnx", "--repeats", "3"],
             "prune weight": ["prune", CNN, "--sparsity", "0.3", "-o", tmp_path / "w.onnx", "--eval", MODELS / "digits_test.npz"],
             "scores": ["scores", CNN],
             "compare": ["compare", CNN, MODELS / "digits_cnn_torch_bn_pruned50.onnx"]}
    outputs = {}
    for name, args in cases.items():
        full, quiet = run_cli(*args), run_cli(*args, "--quiet")
        assert full.returncode == quiet.returncode == 0, quiet.stderr
        full_lines, outputs[name] = full.stdout.splitlines(), quiet.stdout.splitlines()
        assert len(outputs[name]) < len(full_lines) and len(outputs[name]) <= 8, quiet.stdout
        timed = ("latency", "scores of", "left out: --quiet")  # measured times differ between runs
        stable = [line for line in outputs[name] if not any(word in line for word in timed)]
        assert set(stable) <= set(full_lines), (name, set(stable) - set(full_lines))
    latency = next(line for line in outputs["prune"] if "latency" in line)
    assert re.search(r"ms → [\d.]+ ms \((speed-up \d+\.\d\d×|slower \d+\.\d\d×|same time)\)$", latency), latency


def test_speed_wording():
    assert _speed(2.0, 1.0) == "speed-up 2.00×" and _speed(1.0, 1.19) == "slower 1.19×" and _speed(1.0, 1.0) == "same time"
