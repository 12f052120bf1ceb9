#!/usr/bin/env python
"""Benchmark: onnx-pathlift against one plain onnxruntime run, and against the reference method,
on torchvision-size architectures (issue 12).

For each architecture (rebuilt in plain torch by ``tests/torch_archs.py``, seeded random weights,
exported at run time with ``torch.onnx.export``, TorchScript exporter, opset 17, 224x224 input;
nothing is committed), in one run on the same machine:

* **whole process**: ``onnx-pathlift norm MODEL -q 1 -q 2`` and ``onnx-pathlift scores MODEL``, each
  against a process that imports numpy and onnxruntime, builds an ``InferenceSession`` on the file
  and runs it once. Wall-clock medians of interleaved pairs; peak RSS of each process from ``wait4``.
* **in process**: ``compute_norms(file, [1, 2])`` (read, import, lift, sessions built to run once,
  run) against an ``InferenceSession`` built from the file plus one run; the lifted run alone
  (both q, a ``LiftedSession`` with all rewrites) against one plain inference (medians of repeated
  runs on built sessions).
* **the reference method** (what a PyTorch user runs today, after agonon/pathnorm-pytorch; our own
  implementation): a deep copy of the in-memory torch model in float64, weights and biases replaced
  by ``|w|^q``, BatchNorm by ``|γ/σ|^q x + |β − μγ/σ|^q``, ReLUs removed, max-pools replaced by
  sum-pools, average pools weighted ``(1/k)^q``, one forward pass on ones; once per q.

    python benchmarks/bench_torchvision.py                       # the five models of issue 12
    python benchmarks/bench_torchvision.py --models resnet50 --repeat 3 --json out.json
    python benchmarks/bench_torchvision.py --stages              # the cost-growth table

Needs torch (``pip install torch==2.13.0``). Exports are cached in ``--workdir``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODELS = ("resnet50", "resnet152", "vgg11_bn", "densenet121", "mobilenet_v2")
GROWTH = ("mobilenet_v2", "resnet18", "resnet50", "densenet121", "resnet152", "vgg11_bn")
SIZE = 224

PLAIN = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
s.run(None, {i.name: np.random.default_rng(0).random([1, 3, %d, %d], dtype=np.float32)})
""" % (SIZE, SIZE)

STAGES = """
import json, resource, sys, time
import numpy as np
t = [time.perf_counter()]
def mark(): t.append(time.perf_counter()); return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
from onnx_pathlift.fileio.load import load_split
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.backend.emit import lifted_bundle
from onnx_pathlift.backend.runtime import make_session
rss = [mark()]
model, stored = load_split(sys.argv[1]); rss.append(mark())  # as the analyses read a file
prepared = prepare(model, stored=stored); rss.append(mark())
dag = import_prepared(prepared); rss.append(mark())
del model, stored, prepared
built, _ = lifted_bundle([(dag, 1.0), (dag, 2.0)]); rss.append(mark())
session = make_session(built, rewrites="basic"); rss.append(mark())  # as norm's run-once sessions
session.run(None, {n: np.ones(dag.layer(n).shape, np.float32) for n in dag.inputs}); rss.append(mark())
names = ["python imports", "load", "fold + shapes", "import", "lift", "session", "run"]
print(json.dumps({"stages": {n: [t[i + 1] - t[i], r] for i, (n, r) in enumerate(zip(names, rss))}, "params": dag.n_params}))
"""


def export(name: str, workdir: Path) -> Path:
    """The architecture exported once (cached in ``workdir``)."""
    import torch
    import torch_archs

    path = workdir / f"{name}.onnx"
    if not path.exists():
        model, _ = torch_archs.build(name, seed=0)
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
        tmp.rename(path)
    return path


def measure(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MB) and stdout of one process."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{text[-2000:]}")
    return wall, usage.ru_maxrss // 1024, text


def whole_process(path: Path, repeat: int, scores: bool) -> dict:
    """Interleaved plain / norm / scores processes; medians and pairwise ratios."""
    plain_cmd = [sys.executable, "-c", PLAIN, str(path)]
    cli = [sys.executable, "-m", "onnx_pathlift"]
    cmds = {"plain": plain_cmd, "norm": [*cli, "norm", str(path), "-q", "1", "-q", "2", "--json"]}
    if scores:
        cmds["scores"] = [*cli, "scores", str(path), "--json"]
    runs: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for _ in range(repeat):
        for key, cmd in cmds.items():
            wall, rss, _ = measure(cmd)
            runs[key].append((wall, rss))
    out = {}
    for key, values in runs.items():
        out[key] = {"s": statistics.median(w for w, _ in values), "peak_mb": max(r for _, r in values)}
        if key != "plain":
            out[key]["ratio"] = statistics.median(w / p[0] for (w, _), p in zip(values, runs["plain"]))
            out[key]["rss_ratio"] = out[key]["peak_mb"] / out["plain"]["peak_mb"]
    return out


def in_process(path: Path, repeat: int) -> dict:
    """import + lift + session + run against session + run; lifted run against one inference."""
    import onnxruntime as ort

    from onnx_pathlift.api import compute_norms
    from onnx_pathlift.backend.norm import LiftedSession

    x = np.random.default_rng(0).random([1, 3, SIZE, SIZE], dtype=np.float32)
    t0 = time.perf_counter()
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {plain.get_inputs()[0].name: x}
    plain.run(None, feeds)
    t1 = time.perf_counter()
    report = compute_norms(str(path), [1.0, 2.0])  # what a user calls: one import, sessions built to run once
    t4 = time.perf_counter()
    norms = report.norms
    session = LiftedSession([(report.dag, 1.0), (report.dag, 2.0)])  # a session for repeated runs, all rewrites
    session.norms()  # warm
    lifted_runs, plain_runs = [], []
    spent = time.perf_counter()
    while len(plain_runs) < repeat or time.perf_counter() - spent < 2.0:  # small models: enough runs for a median
        s = time.perf_counter()
        plain.run(None, feeds)
        plain_runs.append(time.perf_counter() - s)
        s = time.perf_counter()
        session.session.run(None, session.feeds)  # the lifted run itself (norms() adds the float64 sums)
        lifted_runs.append(time.perf_counter() - s)
    return {"plain_s": t1 - t0, "ours_s": t4 - t1, "import_s": report.timings["import_s"],
            "session_s": report.timings["session_s"], "first_run_s": report.timings["run_s"],
            "ratio": (t4 - t1) / (t1 - t0), "plain_run_s": statistics.median(plain_runs),
            "lifted_run_s": statistics.median(lifted_runs),
            "run_ratio": statistics.median(lifted_runs) / statistics.median(plain_runs),
            "log10": [n.log10 for n in norms], "certified": [n.certified for n in norms]}


def reference_norm(model, q: float) -> float:
    """The reference method: ``‖Φ‖_q^q`` as one float64 forward pass of the lifted torch model on ones."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    lifted = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for m in lifted.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.abs_().pow_(q)
                if m.bias is not None:
                    m.bias.abs_().pow_(q)
            elif isinstance(m, nn.BatchNorm2d):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                m.bias.copy_((m.bias - m.running_mean * scale).abs().pow(q))
                m.weight.copy_(scale.abs().pow(q))
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)

    class Lifted(torch.overrides.TorchFunctionMode):
        """ReLU (and ReLU6) → identity, max-pool → sum-pool, average pools weighted (1/k)^q."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (F.relu, torch.relu, F.relu6, F.hardtanh):
                return args[0]
            if func is F.max_pool2d:
                k, s, p = args[1], kwargs.get("stride", args[2] if len(args) > 2 else None), kwargs.get("padding", 0)
                return F.avg_pool2d(args[0], k, s, p, ceil_mode=kwargs.get("ceil_mode", False), divisor_override=1)
            if func is F.adaptive_avg_pool2d:
                x = args[0]
                k = x.shape[-1] * x.shape[-2] / (args[1] if isinstance(args[1], int) else args[1][0] * args[1][1])
                return func(*args, **kwargs) * k ** (1.0 - q)
            return func(*args, **kwargs)

    with torch.no_grad(), Lifted():
        return float(lifted(torch.ones(1, 3, SIZE, SIZE, dtype=torch.float64)).sum())


def reference(name: str, repeat: int) -> dict:
    """The reference method at q = 1 and 2 on the in-memory torch model, best of ``repeat``."""
    import torch
    import torch_archs

    torch.set_num_threads(os.cpu_count() or 1)
    model, _ = torch_archs.build(name, seed=0)
    times, values = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        values = [reference_norm(model, q) for q in (1.0, 2.0)]
        times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "log10": [float(np.log10(v)) / q for v, q in zip(values, (1, 2))]}


def stages(path: Path) -> dict:
    """Each stage's time and peak RSS in a fresh process."""
    _, _, text = measure([sys.executable, "-c", STAGES, str(path)])
    return json.loads(text.strip().splitlines()[-1])


def child(job: str, *args: str, script: str = __file__) -> dict:
    """Run ``job`` of ``script`` (this one by default) in a fresh process and return its JSON (the parent
    stays small, so the peak RSS a child inherits at exec is below every measured process's)."""
    _, _, text = measure([sys.executable, script, "--child", job, *args])
    return json.loads(text.strip().splitlines()[-1])


CHILD_JOBS = {"export": lambda name, workdir: {"path": str(export(name, Path(workdir)))},
              "in_process": lambda path, repeat: in_process(Path(path), int(repeat)),
              "reference": lambda name, repeat: reference(name, int(repeat))}


def print_main(rows: dict) -> None:
    print("\n| model | plain s | norm s | ratio (≤1.5) | scores s | ratio (≤4) | peak RSS plain/norm/scores MB | "
          "in-process ratio | lifted run q = 1, 2 ÷ inference | per q (≤1.3) | reference s | ours in process s | "
          "speed-up (≥5) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        w, p, ref = r["process"], r["in_process"], r["reference"]
        sc = w.get("scores", {"s": float("nan"), "ratio": float("nan"), "peak_mb": 0})
        print(f"| {name} | {w['plain']['s']:.2f} | {w['norm']['s']:.2f} | {w['norm']['ratio']:.2f} | {sc['s']:.2f} | "
              f"{sc['ratio']:.2f} | {w['plain']['peak_mb']}/{w['norm']['peak_mb']}/{sc['peak_mb']} | {p['ratio']:.2f} | "
              f"{p['run_ratio']:.2f} | {p['run_ratio'] / 2:.2f} | {ref['s']:.2f} | {p['ours_s']:.2f} | {ref['s'] / p['ours_s']:.1f} |")


def print_stages(rows: dict) -> None:
    names = list(next(iter(rows.values()))["stages"])
    print("\n| model | parameters | " + " | ".join(f"{n} s (peak MB)" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["params"]):
        cells = " | ".join(f"{r['stages'][n][0]:.3f} ({r['stages'][n][1]})" for n in names)
        print(f"| {name} | {r['params']:,} | {cells} |")


def child_or_setup(args: argparse.Namespace, jobs: dict) -> bool:
    """``--child JOB ARGS...``: run that one job of ``jobs`` and print its JSON (True: nothing else to do);
    else make ``--workdir`` and compile the package's bytecode, as a pip install does (numpy's and
    onnxruntime's already are): with PYTHONDONTWRITEBYTECODE set, every timed process would compile our
    modules again (~0.06 s)."""
    if args.child:
        print(json.dumps(jobs[args.child[0]](*args.child[1:])))
        return True
    args.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "onnx_pathlift")], check=True)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--repeat", type=int, default=3, help="processes per command (interleaved)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pathlift-bench-torchvision")
    parser.add_argument("--stages", action="store_true", help="the cost-growth table instead")
    parser.add_argument("--no-scores", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if child_or_setup(args, CHILD_JOBS):
        return 0
    rows = {}
    for name in args.models or (GROWTH if args.stages else MODELS):
        if name.endswith(".onnx"):  # a model file (for --stages: the small end of the growth table)
            path, name = Path(name), Path(name).stem
        else:
            path = Path(child("export", name, str(args.workdir))["path"])
        print(f"{name}: {path.stat().st_size / 2**20:.0f} MB", file=sys.stderr, flush=True)
        if args.stages:
            rows[name] = stages(path)
            continue
        rows[name] = {"process": whole_process(path, args.repeat, not args.no_scores),
                      "in_process": child("in_process", str(path), "5"),
                      "reference": child("reference", name, str(args.repeat))}
        print(json.dumps({name: rows[name]}), file=sys.stderr, flush=True)
    (print_stages if args.stages else print_main)(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
