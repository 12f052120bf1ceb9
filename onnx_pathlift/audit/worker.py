"""The worker side: entry points of the processes that analyse models, and how their deaths read.

``serve`` is the loop of a long-lived pool worker (a ``spawn`` process talking over a pipe);
``python -m onnx_pathlift.audit.worker JOB`` is a one-shot worker (used on Dask workers): JOB is a
base64 pickled ``(task, settings)``; it writes one byte to stdout when it is ready, then the pickled
:class:`~onnx_pathlift.audit.record.ModelResult`.
"""

from __future__ import annotations

import base64
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

#: the message a pool worker sends once its imports are done (timeouts start counting after it)
READY = "ready"


def serve(conn: Connection, memory_mb: float | None = None) -> None:
    """Pool worker: cap its memory, say READY, then analyse each ``(task, settings)`` received until
    None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from ..runtime import set_threads  # here, not at the top: the parent imports this module too
    from .analyse import analyse, limit_memory

    limit_memory(memory_mb)
    set_threads(1)  # the pool runs one worker per job: their onnxruntime thread pools must not compete
    try:
        conn.send(READY)
        while (job := conn.recv()) is not None:
            conn.send(analyse(*job))
    except (EOFError, OSError):  # the parent is gone (even killed with -9): nothing left to do
        pass


def describe_exit(code: int | None) -> str:
    """Why a worker process ended, from its exit code (negative: killed by that signal)."""
    if code is None:
        return "the worker closed its pipe without a result and did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
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
    limit_memory(memory_mb)
    pickle.dump(analyse(task, settings), out)
    out.flush()


if __name__ == "__main__":
    main()
