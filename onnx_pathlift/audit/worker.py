"""The worker side: entry points of the processes that analyse models, and how their deaths read.

``serve`` is the loop of a long-lived pool worker (a ``spawn`` process talking over a pipe);
``python -m onnx_pathlift.audit.worker JOB`` is a one-shot worker (used on Dask workers): JOB is a
base64 pickled ``(task, settings, memory_mb)``; it writes one byte to stdout when it is ready, then the
pickled :class:`~onnx_pathlift.audit.record.ModelResult`.

Both die with their parent (:func:`die_with_parent`): an audit killed with ``kill -9`` leaves no
worker busy on a model behind it, competing with the resumed run.
"""

from __future__ import annotations

import base64
import ctypes
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

from .record import OUT_OF_MEMORY

#: the message a pool worker sends once its imports are done (timeouts start counting after it)
READY = "ready"
#: seconds between two checks of the watchdog thread
WATCHDOG_S = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Make this process die when ``parent`` does, even by ``kill -9`` and even while it is busy in
    native code: on Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon
    thread checks every :data:`WATCHDOG_S` that the parent is still ours and ``os._exit``s otherwise
    (it also covers a parent that died before the prctl call)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog alone

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        os._exit(3)

    if os.getppid() != parent:
        os._exit(3)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def serve(conn: Connection, memory_mb: float | None = None, parent: int | None = None) -> None:
    """Pool worker: die with ``parent``, cap its memory, say READY, then analyse each
    ``(task, settings)`` received until None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if parent is not None:
        die_with_parent(parent)
    from ..backend.runtime import set_threads  # here, not at the top: the parent imports this module too
    from .analyse import analyse, limit_memory

    limit_memory(memory_mb)
    set_threads(1)  # the pool runs one worker per job: their onnxruntime thread pools must not compete
    try:
        conn.send(READY)
        while (job := conn.recv()) is not None:
            conn.send(analyse(*job))
    except (EOFError, OSError):  # the parent is gone (even killed with -9): nothing left to do
        pass


#: how a worker dies when an allocation fails under a memory cap: the kernel's OOM killer (or a
#: hard limit) sends SIGKILL; native code that does not check for NULL segfaults (SIGSEGV, SIGBUS);
#: an uncaught std::bad_alloc aborts (SIGABRT)
_CAPPED_DEATHS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT} | ({signal.SIGBUS} if hasattr(signal, "SIGBUS") else set())


def describe_exit(code: int | None, memory_mb: float | None = None) -> str:
    """Why a worker process ended, from its exit code (negative: killed by that signal). Under a
    ``--max-memory`` cap, a death by one of :data:`_CAPPED_DEATHS` is read as out of memory (the
    reason starts with :data:`~onnx_pathlift.audit.record.OUT_OF_MEMORY`: a larger cap retries it)."""
    if code is None:
        return "the worker closed its pipe without a result and did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if memory_mb is not None and -code in _CAPPED_DEATHS:
            return f"{OUT_OF_MEMORY} (probably): the worker died of {name} under --max-memory {memory_mb:g} MB"
        if -code == signal.SIGKILL:
            return f"the worker was killed by {name} (out of memory? the kernel's OOM killer sends it)"
        return f"the worker crashed with {name} (a native crash, e.g. in onnxruntime)"
    return f"the worker exited with code {code} before returning a result"


def main() -> None:
    """One-shot worker (see the module docstring); anything else printed goes to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    out.write(b"R")
    out.flush()
    from .analyse import analyse, limit_memory

    task, settings, memory_mb = pickle.loads(base64.b64decode(sys.argv[1]))
    die_with_parent(os.getppid())
    limit_memory(memory_mb)
    pickle.dump(analyse(task, settings), out)
    out.flush()


if __name__ == "__main__":
    main()
