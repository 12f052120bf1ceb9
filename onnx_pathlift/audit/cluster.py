"""Beyond one machine: the same analyses on an existing Dask distributed cluster (``--scheduler``).

Each Dask task runs the analysis in a one-shot subprocess on its worker (``python -m
onnx_pathlift.audit.worker``), so a crash, an out-of-memory kill or a hang (killed at the timeout)
fails that model only and leaves the Dask worker alive. The workers must see the client's model
paths (a shared file system) and have onnx-pathlift installed; the client writes every result.
"""

from __future__ import annotations

import base64
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from ..errors import PathliftError, UsageError
from .record import ModelResult, Settings, Task, failure
from .worker import describe_exit

#: seconds to wait for the scheduler to answer
CONNECT_TIMEOUT_S = 20


def run_dask(tasks: Sequence[Task], settings: Settings, timeout: float | None, address: str,
             memory_mb: float | None = None) -> Iterator[ModelResult]:
    """Submit one task per model to the Dask scheduler at ``address``; yield results as they finish."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UsageError("--scheduler needs Dask distributed: pip install 'onnx-pathlift[dask]'") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise PathliftError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    with client:
        futures = {client.submit(analyse_in_subprocess, replace(t, path=os.path.abspath(t.path)), settings, timeout,
                                 memory_mb, pure=False): t for t in tasks}
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # the Dask task itself failed (e.g. its worker died repeatedly)
                    result = failure(task, "error", f"Dask task failed: {type(exc).__name__}: {exc}", 0.0, timeout)
                yield replace(result, path=task.path)
        finally:
            client.cancel(list(futures))


def analyse_in_subprocess(task: Task, settings: Settings, timeout: float | None, memory_mb: float | None = None) -> ModelResult:
    """Run on a Dask worker: analyse one model in a one-shot subprocess (capped at ``memory_mb``),
    killed past ``timeout``."""
    if not os.path.isfile(task.path):
        return failure(task, "error", f"{task.path} is not visible on the Dask worker {socket.gethostname()} "
                       "(the workers must see the client's paths)", 0.0, timeout)
    with tempfile.TemporaryFile() as err:
        job = base64.b64encode(pickle.dumps((task, settings, memory_mb))).decode()
        proc = subprocess.Popen([sys.executable, "-m", "onnx_pathlift.audit.worker", job], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, bufsize=0)
        started = proc.stdout.read(1) == b"R"  # timeouts count once its imports are done
        t0 = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=timeout if started else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return failure(task, "timeout", f"no result within {timeout:g} s: the worker subprocess was killed",
                           time.monotonic() - t0, timeout)
        if proc.returncode == 0 and out:
            return replace(pickle.loads(out), timeout_s=timeout)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
        reason = describe_exit(proc.returncode, memory_mb) + (f": {tail[0]}" if tail else "")
        return failure(task, "error", reason, time.monotonic() - t0, timeout)
