"""One audit: which models to analyse, which results to reuse from the database, where results go.

A stored result is reused when the file's content hash and the settings match, except a timeout
recorded under a shorter limit than the one now in force (or when no limit is given), and an
out-of-memory failure recorded under a smaller ``--max-memory`` than now (or none now): that model
is tried again. Files with the same content are analysed once and reported under every path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from .files import discover, task_for
from .record import ModelResult, Settings, Task
from .runner import run_local
from .store import Store


class Listener(Protocol):
    """Told how much work there is, then of every result as it arrives (e.g. a progress bar)."""

    def start(self, todo: int, reused: int) -> None: ...

    def update(self, result: ModelResult) -> None: ...


@dataclass(frozen=True)
class Audit:
    """The outcome of :func:`audit`: one result per file, in discovery order."""

    results: list[ModelResult]
    analysed: int  # distinct models analysed by this run
    reused: int  # distinct models whose result came from the database
    run_id: int
    db: Path


def audit(paths: Sequence[str | Path], settings: Settings | None = None, *, jobs: int | None = None,
          timeout: float | None = None, memory_mb: float | None = None, db: str | Path = "audit.sqlite",
          scheduler: str | None = None,
          listener: Listener | None = None) -> Audit:
    """Audit every model under ``paths`` (files, folders, globs), each in an isolated worker process.

    ``settings`` default to q = 1, 2, 4 and each model's own input shape; ``jobs`` local workers
    (default: one per CPU), or the Dask cluster at ``scheduler`` (``tcp://HOST:PORT``); ``timeout``
    seconds per model (default: none); ``memory_mb`` caps each worker's data segment in MB (default:
    none); ``listener`` is told of each result (progress display). Results are committed to the SQLite
    file ``db`` as each model finishes, and results already there under the same settings and file hash
    are reused. Returns the :class:`Audit` (one :class:`ModelResult` per file, whatever its status: a
    model's failure is its result, not an exception). Raises :class:`UsageError` for bad arguments, no
    file found or a corrupt database, and :class:`~onnx_pathlift.errors.OutputError` when the database
    cannot be written.
    """
    settings = settings or Settings()
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {jobs})")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be positive (got {timeout})")
    if memory_mb is not None and not memory_mb > 0:
        raise UsageError(f"--max-memory must be positive (got {memory_mb})")
    if scheduler and jobs is not None:
        raise UsageError("--jobs sets local workers; with --scheduler the Dask cluster's workers do the work")
    files = discover(paths)
    entries: list[Task | ModelResult] = []
    for path in files:
        try:
            entries.append(task_for(path))
        except OSError as exc:
            entries.append(ModelResult(path, "", 0, "invalid", f"{path}: cannot read: {exc.strerror}"))
    store = Store(db)
    try:
        done = store.results(settings)
        todo: dict[str, Task] = {}
        for t in entries:
            if isinstance(t, Task) and not _reusable(done.get(t.sha256), timeout, memory_mb):
                todo.setdefault(t.sha256, t)
        reused = len({t.sha256 for t in entries if isinstance(t, Task)}) - len(todo)
        run_id = store.start_run(settings, files)
        if listener is not None:
            listener.start(len(todo), reused)
        if scheduler:
            from .cluster import run_dask

            results = run_dask(list(todo.values()), settings, timeout, scheduler, memory_mb)
        else:
            results = run_local(list(todo.values()), settings, jobs or _usable_cpus(), timeout, memory_mb)
        with closing(results):  # stops the workers at once if anything goes wrong here
            for result in results:
                done[result.sha256] = store.put(replace(result, memory_mb=memory_mb), settings, run_id)
                if listener is not None:
                    listener.update(result)
        store.finish_run(run_id, len(todo), reused)
    finally:
        store.close()
    out = [replace(done[e.sha256], path=e.path) if isinstance(e, Task) else e for e in entries]
    return Audit(out, len(todo), reused, run_id, Path(db))


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _reusable(stored: ModelResult | None, timeout: float | None, memory_mb: float | None) -> bool:
    if stored is None:
        return False
    if stored.status == "timeout":
        return timeout is not None and stored.timeout_s is not None and timeout <= stored.timeout_s
    if stored.out_of_memory and stored.memory_mb is not None:  # it may fit under a larger cap, or none
        return memory_mb is not None and memory_mb <= stored.memory_mb
    return True
