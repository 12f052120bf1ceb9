#!/usr/bin/env python
"""Time ``onnx-pathlift norm FILE --json`` on graphs built at growing sizes (docs/fuzzing.md, "Scaling").

Usage::

    python tools/scaling.py [BUILDER=N,N,... ...]

Each builder of ``tools/make_hostile.py``'s ``SCALE`` (``wide_sum``: one Sum of n inputs;
``gemm_chain``: n Gemm nodes in a row; ``many_io``: n graph inputs and n outputs) is written at each
n and run through the CLI in a subprocess; the table gives the exit code, the CPU seconds of that
subprocess (user + system, interpreter start and imports included: about 1.5 s) and its wall-clock
seconds (which depend on what else the machine runs). Sizes past the limits are refused with exit 4.
"""

from __future__ import annotations

import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("make_hostile", Path(__file__).with_name("make_hostile.py"))
make_hostile = sys.modules["make_hostile"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_hostile)

DEFAULT = {"wide_sum": [1024, 4096, 100_000], "gemm_chain": [1000, 4000, 16000, 32768, 100_000],
           "many_io": [256, 1024, 2048, 100_000]}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(builder: str, n: int, folder: Path) -> tuple[int, float, float, int]:
    """(exit code, CPU seconds, wall seconds, file bytes) of one CLI run on ``SCALE[builder](n)``."""
    path = folder / f"{builder}_{n}.onnx"
    path.write_bytes(make_hostile.SCALE[builder](n).SerializeToString())
    cpu, t0 = _cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnx_pathlift.cli", "norm", str(path), "--json", "-q", "1"],
                          capture_output=True, text=True, check=False)
    return proc.returncode, _cpu() - cpu, time.perf_counter() - t0, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plan = {a.split("=")[0]: [int(n) for n in a.split("=")[1].split(",")] for a in args} if args else DEFAULT
    print("| graph | n | file | exit | CPU s | wall s |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for builder, sizes in plan.items():
            for n in sizes:
                code, cpu, wall, size = measure(builder, n, Path(tmp))
                print(f"| {builder} | {n} | {size / 1024:.0f} KiB | {code} | {cpu:.1f} | {wall:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
