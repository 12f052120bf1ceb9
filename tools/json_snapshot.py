#!/usr/bin/env python
"""Every command's ``--json`` output on the shipped models, timings aside: a snapshot to compare two checkouts.

A restructuring that claims "behaviour unchanged" runs this before and after and compares::

    python tools/json_snapshot.py write before.json        # in the old checkout
    python tools/json_snapshot.py write after.json         # in the new one
    python tools/json_snapshot.py compare before.json after.json

Each command runs as ``python -m onnx_pathlift.cli ... --json`` from the project root (so the checkout's own
package is used), in a fresh temporary folder for its outputs. Fields that measure time or name a temporary
path (``timings``, ``seconds``, ``latency*``, ``*_s``, timestamps ``*_at``, ``written``/``out``/``db``/``report`` paths) are replaced
by a placeholder; everything else, numbers included, must be identical. Exit 0 when identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "models").glob("*.onnx"))
CNN, PRUNED, INT8 = "models/digits_cnn_torch_bn.onnx", "models/digits_cnn_torch_bn_pruned50.onnx", "models/digits_cnn_torch_bn_int8.onnx"
TIMED = ("timings", "seconds", "latency", "elapsed", "time_s", "peak", "_at")
PATHS = ("written", "out", "output", "db", "report", "csv", "mask", "masked", "slim", "path", "scores_file")


def commands(tmp: str) -> dict[str, list[str]]:
    """Name → arguments of every command to snapshot (outputs under ``tmp``)."""
    cmds: dict[str, list[str]] = {}
    for m in MODELS:
        stem = Path(m).stem
        cmds[f"norm {stem}"] = ["norm", m, "-q", "1", "-q", "2", "-q", "inf", "--verify"]
        cmds[f"inspect {stem}"] = ["inspect", m]
        cmds[f"lipschitz {stem}"] = ["lipschitz", m]
        cmds[f"scores {stem}"] = ["scores", m]
        cmds[f"outputs {stem}"] = ["outputs", m, "-q", "1", "-q", "2", "-q", "inf"]
    cmds["lift"] = ["lift", CNN, "-q", "2", "-o", f"{tmp}/lifted.onnx"]
    cmds["compare pruned"] = ["compare", CNN, PRUNED, "--check", "20"]
    cmds["compare int8"] = ["compare", CNN, INT8]
    cmds["prune weight"] = ["prune", CNN, "--sparsity", "0.5", "-o", f"{tmp}/w.onnx", "--eval", "models/digits_test.npz"]
    cmds["prune channel"] = ["prune", CNN, "--structure", "channel", "--sparsity", "0.3", "--scope", "layer", "-o",
                             f"{tmp}/c.onnx", "--eval", "models/digits_test.npz"]
    cmds["rescale"] = ["rescale", CNN, "--seed", "1", "-o", f"{tmp}/r.onnx"]
    cmds["audit"] = ["audit", "models", "--jobs", "1", "--db", f"{tmp}/a.sqlite"]
    return cmds


def scrub(value, key: str = ""):
    """``value`` with timing and temporary-path fields replaced by placeholders."""
    if isinstance(value, dict):
        return {k: scrub(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, key) for v in value]
    if any(t in key for t in TIMED) or key.endswith("_s"):
        return "<time>"
    if key in PATHS and isinstance(value, str):
        return "<path>"
    return value


def run(args: list[str]) -> dict:
    """One command's exit code and its JSON lines, scrubbed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "onnx_pathlift.cli", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    try:
        objects = [json.loads(proc.stdout)]  # one (indented) object
    except json.JSONDecodeError:  # JSON Lines (audit)
        objects = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {"exit": proc.returncode, "json": [scrub(o) for o in objects]}


def write(path: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        snap = {name: run(args) for name, args in commands(tmp).items()}
    path.write_text(json.dumps(snap, indent=1, sort_keys=True))
    print(f"wrote {len(snap)} command outputs to {path}")
    return 0


def compare(a: Path, b: Path) -> int:
    sa, sb = json.loads(a.read_text()), json.loads(b.read_text())
    differ = sorted(k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k))
    for k in differ:
        print(f"differs: {k}")
    print(f"{len(sa.keys() & sb.keys()) - len(differ)} identical, {len(differ)} different")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("write").add_argument("path", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    return write(args.path) if args.what == "write" else compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
