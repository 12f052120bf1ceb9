#!/usr/bin/env python
"""Benchmark: issue 29's table in one run, every ratio against plain onnxruntime on the same file.

Per model, ``--repeat`` alternating rounds (each round runs every command once, one after the other),
and for each ratio the min / median / max over the rounds and the spread ((max - min) / median):

* **norm, whole process**: ``python -m onnx_pathlift norm MODEL -q 1 -q 2`` ÷ the plain process
  (``benchmarks/bare_loop.py MODEL``: imports numpy and onnxruntime, ``InferenceSession`` + one run);
* **whole-process floor**: the plain process with onnx and networkx imported first (``python -c DEPS
  bare_loop.py MODEL``: the core dependencies the plain one does not need), less its session + run, plus
  the in-process floor below, ÷ the plain process (:func:`whole_floor`);
* **scores, whole process**: ``python -m onnx_pathlift scores MODEL -o scores.npz`` ÷ the plain process;
* **in process** (a child process, imports done and warm): ``compute_norms(file, [1])`` and
  ``compute_norms(file, [1, 2])`` (read, import, lift, session, run) ÷ ``InferenceSession(file)`` + one run;
* **the floor** at q = 1, in the same rounds: the lifted network's own session + one run, its model
  built in advance, plus the fold of the weights (``|w|`` of every parameter into float32) ÷ the same
  plain session + run: what no implementation of this design can beat (``floor_parts``);
* **audit**: ``onnx-pathlift audit FOLDER --jobs 2`` on a folder of the models (fresh database each
  round) ÷ ``bare_loop.py`` over the same files, as models per minute;
* **others' CPU share**: the share of the machine's CPU that other processes used during each
  measurement (``bench_pathnorm.CpuWatch``), median and max per model: above a few per cent the
  ratios are not trustworthy.

With ``--profile`` (default: DenseNet-121 when present), where that model's time goes: the stages in a
fresh process (imports, load, fold + shapes, import, lift, session, run: ``bench_torchvision.stages``),
the lift's Python time by function (cProfile), and the lifted run by onnxruntime op type.

Models: the onnx wheel's light ResNet-50 and DenseNet-121 (weights as ``ConstantOfShape``, folded by
both sides), and VGG-11-BN, ResNet-152, MobileNetV2 rebuilt by ``tests/torch_archs.py`` with seeded
random weights and exported at run time (cached in ``--workdir``); without torch they are skipped, with
the reason. ``--models`` takes these names or ``.onnx`` paths.

    python benchmarks/bench_speed.py                                  # ~10 min on a quiet 2-core machine
    python benchmarks/bench_speed.py --models light_densenet121 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_torchvision
import numpy as np
import onnx
from bare_loop import plain_feeds
from bench_pathnorm import CpuWatch, machine_info, print_profile, profile, wait_quiet
from bench_torchvision import child_or_setup, export, measure, stages

ROOT = Path(__file__).resolve().parent.parent
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
DEFAULT = ("light_resnet50", "light_densenet121", "vgg11_bn", "resnet152", "mobilenet_v2")
BARE = str(Path(__file__).with_name("bare_loop.py"))
CLI = [sys.executable, "-m", "onnx_pathlift"]
#: the plain process, having first imported the core dependencies the plain one does not (onnx, networkx):
#: the least any process built on them takes (``python -c DEPS bare_loop.py MODEL``)
DEPS = ("import runpy, sys; import onnx, networkx; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')")


def resolve(name: str, workdir: Path) -> tuple[Path | None, str]:
    """The model's file, or None and the reason it is skipped."""
    if name.endswith(".onnx"):
        return (Path(name), "") if Path(name).is_file() else (None, "no such file")
    if (LIGHT / f"{name}.onnx").is_file():
        return LIGHT / f"{name}.onnx", ""
    try:
        import torch  # noqa: F401 - only to know whether the architectures can be exported
    except ImportError:
        return None, "torch is not installed (pip install torch): the architecture cannot be exported"
    return Path(child("export", name, str(workdir))["path"]), ""


#: ``job`` of this script in a fresh process (the parent stays small), its JSON answer
child = functools.partial(bench_torchvision.child, script=__file__)


def watched(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of one process and the others' CPU share meanwhile."""
    watch = CpuWatch()
    wall, _, _ = measure(cmd)
    return wall, watch.foreign()


def stats(values: list[float]) -> dict:
    """min, median, max and the spread (max - min) / median."""
    med = statistics.median(values)
    return {"min": min(values), "median": med, "max": max(values), "spread": (max(values) - min(values)) / med}


def whole_process(path: Path, repeat: int, tmp: Path) -> dict:
    """Alternating plain / norm / scores processes; per-round ratios against that round's plain one."""
    cmds = {"plain": [sys.executable, BARE, str(path)], "deps": [sys.executable, "-c", DEPS, BARE, str(path)],
            "norm": [*CLI, "norm", str(path), "-q", "1", "-q", "2"],
            "scores": [*CLI, "scores", str(path), "-o", str(tmp / "scores.npz"), "--quiet"]}
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    foreign = []
    for _ in range(repeat):
        for key, cmd in cmds.items():
            wall, share = watched(cmd)
            walls[key].append(wall)
            foreign.append(share)
    out = {"plain_s": stats(walls["plain"]), "foreign": foreign,
           "npz_mb": (tmp / "scores.npz").stat().st_size / 2**20}
    for key in ("deps", "norm", "scores"):
        out[key] = stats([w / p for w, p in zip(walls[key], walls["plain"])])
        out[key + "_s"] = stats(walls[key])
    return out


def floor_parts(path: str) -> dict:
    """What no implementation of this design can beat at q = 1, prepared in advance: the lifted
    network's own session + one run (its model built beforehand, as ``compute_norms`` builds it: basic
    rewrites, the lifted weights fed), and the fold of the weights (``|w|`` of every float parameter into
    a new float32 array: one read and one write of the weights, the least a lift of them costs)."""
    from onnx_pathlift.backend.norm import LiftedSession
    from onnx_pathlift.backend.runtime import make_session
    from onnx_pathlift.frontend.pipeline import load

    dag = load(path, whole=False).dag
    lifted = LiftedSession([(dag, 1.0)], quick_build=True)
    weights = [p for layer in dag.layers() for p in layer.params.values()
               if isinstance(p, np.ndarray) and p.dtype.kind == "f"]

    def session_run() -> None:
        make_session(lifted.built, None, "basic").run(None, lifted.feeds)

    def fold() -> None:
        for w in weights:
            np.abs(w, dtype=np.float32)

    return {"lifted": session_run, "fold": fold}


def in_process(path: str, repeat: str) -> dict:
    """(child) Alternating plain session + run, file → norms at q = 1, at q = 1 and 2, and the floor at
    q = 1 (:func:`floor_parts`: the lifted session + run, then the fold of the weights); imports done."""
    import onnxruntime as ort

    from onnx_pathlift.api import compute_norms

    compute_norms(str(ROOT / "models" / "digits_cnn_torch_bn.onnx"), [1.0, 2.0])  # lazy imports, first session
    parts = floor_parts(path)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"plain": [], "q1": [], "q12": [], "floor": []}
    split: dict[str, list[float]] = {"lifted": [], "fold": []}
    foreign = []
    for _ in range(int(repeat)):
        for key in times:
            watch, t0 = CpuWatch(), time.perf_counter()
            if key == "plain":
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                sess.run(None, plain_feeds(sess, {}, rng))
                del sess
            elif key == "floor":
                for part, fn in parts.items():
                    t1 = time.perf_counter()
                    fn()
                    split[part].append(time.perf_counter() - t1)
            else:
                compute_norms(path, [1.0] if key == "q1" else [1.0, 2.0])
            times[key].append(time.perf_counter() - t0)
            foreign.append(watch.foreign())
    return {"plain_s": stats(times["plain"]), "foreign": foreign,
            **{k: stats([t / p for t, p in zip(times[k], times["plain"])]) for k in ("q1", "q12", "floor")},
            **{k + "_s": stats(times[k]) for k in ("q1", "q12", "floor")},
            **{"floor_" + k + "_s": stats(v) for k, v in split.items()}}


def audit(paths: list[Path], repeat: int, tmp: Path) -> dict:
    """Models per minute: the audit CLI (fresh database each round) against the plain loop over the files."""
    folder = tmp / "audit"
    folder.mkdir()
    for p in paths:  # a hard link where the file system allows, else a copy
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copyfile(p, folder / p.name)
    files = sorted(str(p) for p in folder.iterdir())
    plain, ours, foreign = [], [], []
    for i in range(repeat):
        wall, share = watched([sys.executable, BARE, *files])
        plain.append(60 * len(files) / wall)
        foreign.append(share)
        wall, share = watched([*CLI, "audit", str(folder), "--jobs", "2", "--db", str(tmp / f"audit{i}.db")])
        ours.append(60 * len(files) / wall)
        foreign.append(share)
    return {"files": len(files), "plain_per_min": stats(plain), "audit_per_min": stats(ours),
            "ratio": stats([o / p for o, p in zip(ours, plain)]), "foreign": foreign}


def lift_profile(path: str, top: str) -> dict:
    """(child) Where ``compute_norms(file, [1, 2])`` spends its Python time (cProfile, by function's own
    time), and the lifted run (q = 1 and 2 in one session) by onnxruntime op type."""
    import cProfile
    import pstats

    from onnx_pathlift.api import compute_norms
    from onnx_pathlift.backend.norm import LiftedSession

    compute_norms(str(ROOT / "models" / "digits_cnn_torch_bn.onnx"), [1.0, 2.0])  # lazy imports
    prof = cProfile.Profile()
    report = prof.runcall(compute_norms, path, [1.0, 2.0])
    st = pstats.Stats(prof)
    rows = sorted(((own, cum, calls, f"{Path(f).name}:{line} {fn}") for (f, line, fn), (_, calls, own, cum, _) in
                   st.stats.items()), reverse=True)[: int(top)]
    session = LiftedSession([(report.dag, 1.0), (report.dag, 2.0)], quick_build=True)
    kinds: dict[str, int] = {}
    for node in session.model.graph.node:
        kinds[node.op_type] = kinds.get(node.op_type, 0) + 1
    ort_profile = profile(session.model.SerializeToString(), session.feeds, 5, lifted=True)
    return {"timings": report.timings, "total_s": st.total_tt, "functions": rows, "lifted_nodes": kinds,
            "layers": sum(1 for _ in report.dag.layers()), "ort": ort_profile}


def print_table(rows: dict, skipped: dict) -> None:
    """Issue 29's table: median ratio [min-max] per column, the plain process's seconds, others' CPU."""
    def cell(s: dict | None) -> str:
        return "-" if s is None else f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    print("\n| model | plain process s | `norm -q 1 -q 2` ÷ plain process | whole-process floor | in process q = 1 ÷ "
          "session + run | floor q = 1 ÷ session + run | in process q = 1, 2 ÷ session + run | `scores -o` ÷ plain "
          "process | scores .npz MB | others' CPU median / max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        w, p = r["process"], r["in_process"]
        foreign = w["foreign"] + p["foreign"]
        print(f"| {name} | {w['plain_s']['median']:.2f} | {cell(w['norm'])} | {whole_floor(w, p):.2f} | {cell(p['q1'])} | "
              f"{cell(p.get('floor'))} | "
              f"{cell(p['q12'])} | {cell(w['scores'])} | {w['npz_mb']:.0f} | "
              f"{statistics.median(foreign):.0%} / {max(foreign):.0%} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} ||||||||")
    print("\nEach cell: median [min-max] of the per-round ratios; spread = (max - min) / median per column in --json. "
          "Floor: the lifted network's own session + run (its model built in advance) and the fold of the weights "
          "(|w| into float32), what no implementation of this design can beat, timed in the same rounds. Whole-process "
          "floor: the plain process with onnx and networkx imported first (the core dependencies it does not "
          "import), less its session + run, plus the in-process floor, ÷ the plain process (medians).")


def whole_floor(w: dict, p: dict) -> float:
    """The least ``norm`` can take as a process ÷ the plain process: the core dependencies' imports and the
    interpreter (the plain process with onnx and networkx imported, less its own session + run), plus the
    lifted session + run and the fold of the weights (medians of the same rounds)."""
    return (w["deps_s"]["median"] - p["plain_s"]["median"] + p["floor_s"]["median"]) / w["plain_s"]["median"]


def print_lift_profile(name: str, stage: dict, lp: dict) -> None:
    """Where the profiled model's time goes."""
    print(f"\n### Where {name}'s time goes\n")
    print("Stages in a fresh process (s, peak MB): " + ", ".join(
        f"{k} {v[0]:.3f} ({v[1]})" for k, v in stage["stages"].items()))
    print(f"compute_norms(file, [1, 2]) under cProfile ({lp['layers']} layers): {lp['total_s']:.2f} s; timings "
          + ", ".join(f"{k} {v:.3f}" for k, v in lp["timings"].items()))
    print("lifted graph (q = 1, 2): " + ", ".join(f"{k}×{v}" for k, v in sorted(lp["lifted_nodes"].items(),
                                                                               key=lambda kv: -kv[1])))
    print("\n| function | own s | cumulative s | calls |\n|---|---:|---:|---:|")
    for own, cum, calls, fn in lp["functions"]:
        print(f"| {fn} | {own:.3f} | {cum:.3f} | {calls} |")
    print_profile(f"{name}: lifted run (q = 1, 2), onnxruntime profile by op type", lp["ort"])


CHILD_JOBS = {"export": lambda name, workdir: {"path": str(export(name, Path(workdir)))},
              "in_process": in_process, "lift_profile": lift_profile}


def run_all(args, tmp: Path) -> dict:
    """Every model's rows, the audit over all of them, the profile."""
    rows, skipped, paths = {}, {}, []
    for name in args.models:
        path, why = resolve(name, args.workdir)
        if path is None:
            skipped[name] = why
            print(f"{name}: skipped ({why})", file=sys.stderr, flush=True)
            continue
        paths.append(path)
        wait_quiet(args.quiet_wait)
        rows[Path(name).stem] = {"file": str(path), "process": whole_process(path, args.repeat, tmp),
                                 "in_process": child("in_process", str(path), str(args.repeat))}
        print(json.dumps({name: rows[Path(name).stem]}), file=sys.stderr, flush=True)
    out = {"machine": machine_info(), "rows": rows, "skipped": skipped}
    if paths and not args.no_audit:
        out["audit"] = audit(paths, args.repeat, tmp)
    target = next((p for p in paths if args.profile in p.stem), None)
    if target is not None:
        out["profile"] = {"model": target.stem, "stages": stages(target),
                          "lift": child("lift_profile", str(target), "12")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT), help=f"names or .onnx paths (default: {DEFAULT})")
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds per model (default 5)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pathlift-bench-torchvision",
                        help="where the torch exports are cached")
    parser.add_argument("--quiet-wait", type=float, default=5.0, help="seconds to wait for a quiet machine per model")
    parser.add_argument("--profile", default="densenet121", help="profile the first model whose name has this")
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if child_or_setup(args, CHILD_JOBS):
        return 0
    whole = CpuWatch()
    with tempfile.TemporaryDirectory() as tmp:
        out = run_all(args, Path(tmp))
    m = out["machine"]
    print(f"{m['cpu']}, {m['usable_cores']} usable cores, onnxruntime {m['onnxruntime']}; other processes used "
          f"{whole.foreign():.0%} of the CPU during the whole run")
    print_table(out["rows"], out["skipped"])
    if "audit" in out:
        a = out["audit"]
        print(f"\naudit --jobs 2 on the {a['files']} models: {a['audit_per_min']['median']:.1f} models/min against "
              f"{a['plain_per_min']['median']:.1f} for the plain onnxruntime loop (ratio {a['ratio']['median']:.2f} "
              f"[{a['ratio']['min']:.2f}-{a['ratio']['max']:.2f}])")
    if "profile" in out:
        print_lift_profile(out["profile"]["model"], out["profile"]["stages"], out["profile"]["lift"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
