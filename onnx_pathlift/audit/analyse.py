"""The analysis of one model, in the current process (the audit runs it inside a worker process).

Test hook: the environment variable ``ONNX_PATHLIFT_AUDIT_TEST_HOOK`` (for the isolation tests only)
holds ``ACTION:MARKER`` pairs separated by commas. Before analysing a model whose file name contains
MARKER, the worker does ACTION: ``abort`` (``os.abort()``, as a native crash in onnxruntime would),
``hang`` (sleeps forever), ``oom`` (allocates far more than a memory cap it sets on itself, so a
``MemoryError`` is raised), ``alloc`` (allocates 8 GiB under the ``--max-memory`` cap, which must be
set), ``kill`` or ``segv`` (the worker sends itself SIGKILL or SIGSEGV, as the kernel or native code
does when an allocation fails under a cap) or ``slow`` (sleeps 0.5 s, then analyses normally). An
empty MARKER matches every model.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ..analyses.lipschitz import bound_from
from ..backend.norm import LiftedSession
from ..errors import InvalidModelError, OutOfMemoryError, PathliftError, UnsupportedModelError
from ..fileio.load import load_split
from ..frontend.importer import import_prepared
from ..frontend.prepare import main_opset, prepare
from ..ops import kind_counts
from ..rewrite.transforms import without_biases
from .record import OUT_OF_MEMORY, ModelResult, Settings, Task

HOOK_ENV = "ONNX_PATHLIFT_AUDIT_TEST_HOOK"
_ALLOCATION_FAILURES = ("bad_alloc", "bad allocation", "Failed to allocate")


def limit_memory(memory_mb: float | None) -> None:
    """Cap this process's data segment (heap and anonymous mappings: numpy's and onnxruntime's
    buffers) at ``memory_mb``: past it, allocations fail and the model fails as out of memory,
    instead of the machine swapping or the kernel's OOM killer choosing a victim."""
    if memory_mb is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = int(memory_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _cap_note() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return "" if soft == resource.RLIM_INFINITY else f"; --max-memory {soft / 2**20:g} MB"


def analyse(task: Task, settings: Settings) -> ModelResult:
    """Status, facts and path-norms of one model; every failure is recorded, never raised."""
    _reset_peak_memory()
    t0 = time.perf_counter()
    facts: dict = {}
    try:
        _test_hook(task.path)
        model, stored = load_split(task.path)  # the weights straight into arrays: the model is not run or written
        facts["producer"] = f"{model.producer_name} {model.producer_version}".strip()
        facts["opset"] = _opset(model)
        prepared = prepare(model, settings.input_shape, stored=stored, read=True)  # sizes checked as it was read
        facts["input_shape"] = {k: list(v) for k, v in prepared.inputs.items()}
        dag = import_prepared(prepared)
        facts.update(params=dag.n_params, kinds=kind_counts(dag), outputs=list(dag.outputs), notes=list(dag.notes))
        # one lifted model, one session and one pass: the path-norms and ‖Φ_in‖_1 (Lipschitz bound); a
        # session run once, as `norm` builds it (constants fed, basic rewrites: the same numbers)
        jobs = [(dag, q) for q in settings.q] + [(without_biases(dag), 1.0)]
        *norms, input_norm = LiftedSession(jobs, quick_build=True).norms()
        facts["norms"] = [n.to_dict() for n in norms]
        facts["lipschitz_log10"] = bound_from(dag, input_norm).to_dict()["bound_log10"]
        status, reason = "ok", ""
    except UnsupportedModelError as err:
        status, reason = "unsupported", str(err)
        facts["refusals"] = [r.__dict__ for r in err.refusals]
    except OutOfMemoryError as err:  # an allocation failed while reading the model
        status, reason = "error", f"{OUT_OF_MEMORY} ({err}{_cap_note()})"
    except InvalidModelError as err:
        status, reason = "invalid", str(err)
    except PathliftError as err:
        status, reason = "error", f"{type(err).__name__}: {err}"
    except MemoryError:
        status, reason = "error", f"{OUT_OF_MEMORY} (MemoryError{_cap_note()})"
    except Exception as err:  # a bug on one model fails that model only; say where it happened
        frame = traceback.extract_tb(err.__traceback__)[-1]
        status = "error"
        if any(sign in str(err) for sign in _ALLOCATION_FAILURES):  # onnxruntime's allocators fail this way
            reason = f"{OUT_OF_MEMORY} (onnxruntime: {str(err).splitlines()[0][:200]}{_cap_note()})"
        else:
            reason = f"internal error: {type(err).__name__}: {err} (at {Path(frame.filename).name}:{frame.lineno})"
    return ModelResult(task.path, task.sha256, task.size, status, reason, wall_s=time.perf_counter() - t0,
                       peak_rss_mb=_peak_memory_mb(), **facts)


def _opset(model) -> int | None:
    try:
        return main_opset(model)
    except InvalidModelError:
        return None


def _reset_peak_memory() -> None:
    """Reset this process's peak RSS (Linux ≥ 4.0), so that ru_maxrss measures the next model only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere ru_maxrss stays the worker's high-water mark: an upper bound


def _peak_memory_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _test_hook(path: str) -> None:
    """Misbehave as ``ONNX_PATHLIFT_AUDIT_TEST_HOOK`` says (see the module docstring)."""
    name = Path(path).name
    for item in filter(None, os.environ.get(HOOK_ENV, "").split(",")):
        action, _, marker = item.partition(":")
        if marker not in name:
            continue
        if action == "abort":
            os.abort()
        elif action in ("kill", "segv"):
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSEGV)
        elif action == "hang":
            while True:
                time.sleep(60)
        elif action == "slow":
            time.sleep(0.5)
        elif action == "oom":
            _allocate_past_cap()
        elif action == "alloc":
            if resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY:
                raise RuntimeError("the alloc test hook needs --max-memory (it would really allocate 8 GiB)")
            np.ones(1 << 33, np.uint8)


def _allocate_past_cap() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        used = int(next(line.split()[1] for line in status if line.startswith("VmSize:"))) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), hard))
    try:
        np.ones(1 << 34, np.uint8)  # 16 GiB
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
