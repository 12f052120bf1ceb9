"""Local isolation: a pool of long-lived ``spawn`` worker processes, one model at a time each.

A worker that crashes (a segfault or abort in native code, the OOM killer) or that runs past the
timeout (it is killed) fails only the model it was analysing; it is replaced and the audit goes on.
Timeouts count from the moment a ready worker receives the model (not its start-up).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from ..errors import PathliftError
from .record import ModelResult, Settings, Task, failure
from .worker import READY, describe_exit, serve

_CTX = multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: Task | None = None
    started: float = 0.0

    @classmethod
    def start(cls, memory_mb: float | None) -> _Worker:
        parent, child = _CTX.Pipe()
        process = _CTX.Process(target=serve, args=(child, memory_mb, os.getpid()), name="onnx-pathlift-audit-worker",
                               daemon=True)
        process.start()
        child.close()
        return cls(process, parent)

    def give(self, task: Task, settings: Settings) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send((task, settings))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def ask_to_stop(self) -> None:
        """Ask an idle worker to exit (a busy one is killed by :meth:`stop`)."""
        if self.task is None:
            try:
                self.conn.send(None)
            except OSError:
                pass

    def stop(self) -> None:
        """Wait a little for an idle worker asked to exit, then kill it if it is still there."""
        if self.task is None:
            self.process.join(timeout=2)
        self.kill()


def run_local(tasks: Sequence[Task], settings: Settings, jobs: int, timeout: float | None,
              memory_mb: float | None = None) -> Iterator[ModelResult]:
    """Analyse ``tasks`` in ``jobs`` worker processes (each capped at ``memory_mb``); yield each result
    as it finishes (any order)."""
    pending = deque(tasks)
    workers = [_Worker.start(memory_mb) for _ in range(min(jobs, len(pending)))]
    try:
        while pending or any(w.task for w in workers):
            for w in workers:
                if w.ready and w.task is None and pending:
                    w.give(pending.popleft(), settings)
            events = [w.conn for w in workers] + [w.process.sentinel for w in workers]
            ready = set(wait(events, _wait_time(workers, timeout)))
            for i, w in enumerate(workers):
                if w.conn in ready or w.process.sentinel in ready:
                    result = _receive(w, timeout, memory_mb)
                elif w.task is not None and timeout is not None and time.monotonic() - w.started > timeout:
                    result = failure(w.task, "timeout", f"no result within {timeout:g} s: the worker was killed",
                                     time.monotonic() - w.started, timeout)
                    w.kill()
                else:
                    continue
                if result is not None:
                    yield result
                if w.conn.closed:  # dead or killed: replace it while there is work left
                    workers[i] = _Worker.start(memory_mb) if pending else None
            workers = [w for w in workers if w is not None]
    finally:
        for w in workers:
            w.ask_to_stop()  # all at once: they exit in parallel
        for w in workers:
            w.stop()


def _wait_time(workers: list[_Worker], timeout: float | None) -> float | None:
    """Seconds until the earliest deadline of a busy worker (None: wait for the next event)."""
    deadlines = [w.started + timeout for w in workers if w.task is not None] if timeout is not None else []
    return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def _receive(w: _Worker, timeout: float | None, memory_mb: float | None) -> ModelResult | None:
    """Handle a worker's message, or its death: the result of its model, if there is one."""
    try:
        message = w.conn.recv() if w.conn.poll() else None
    except (EOFError, OSError):  # the pipe closed: the process died or is exiting
        message = None
    if message == READY:
        w.ready = True
        return None
    if isinstance(message, ModelResult):
        task, w.task = w.task, None
        return replace(message, path=task.path, timeout_s=timeout)
    w.process.join(timeout=5)
    code = w.process.exitcode
    task, elapsed = w.task, time.monotonic() - w.started
    w.kill()
    if not w.ready:  # dying before ever being ready would repeat for every replacement
        raise PathliftError(f"an audit worker failed to start: {describe_exit(code)}")
    return None if task is None else failure(task, "error", describe_exit(code, memory_mb), elapsed, timeout)
