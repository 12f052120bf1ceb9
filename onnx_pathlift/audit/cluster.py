"""Beyond one machine: the same analyses on an existing Dask distributed cluster (``--scheduler``).

Each Dask worker keeps long-lived analysis processes, started on first use and reused by the
following tasks (one per task running at once on that worker: its ``--nthreads``). They run the
local pool's loop (:func:`~onnx_pathlift.audit.worker.serve`) over a socket pair, so a crash, an
out-of-memory kill or a hang (killed at the timeout) fails that model only: the process is
replaced, the Dask worker lives on. A Dask worker lost mid-task has its tasks rescheduled on the
others by Dask. With no Dask worker at all for ``--timeout`` seconds (:data:`NO_WORKER_S` without
one), the audit stops with an error; the results so far are in the database and the same command
resumes from them. The workers must see the client's model paths (a shared file system) and have
onnx-pathlift installed; the client writes every result (docs/dask.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection

from ..errors import PathliftError, UsageError
from ..sanitise import terminal
from .record import ModelResult, Settings, Task, failure
from .worker import READY, describe_exit, serve

#: seconds to wait for the scheduler to answer (a refused connection fails at once)
CONNECT_TIMEOUT_S = 5
#: with no ``--timeout``, how long the audit waits for a Dask worker when there is none
NO_WORKER_S = 60.0
#: how often the client looks at the cluster while no result arrives
POLL_S = 1.0


def run_dask(tasks: Sequence[Task], settings: Settings, timeout: float | None, address: str,
             memory_mb: float | None = None) -> Iterator[ModelResult]:
    """Submit one task per model to the Dask scheduler at ``address``; yield results as they finish.

    Raises :class:`PathliftError` when the cluster has had no worker for ``timeout`` seconds
    (:data:`NO_WORKER_S` when None) with models left to analyse."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs Dask distributed: pip install 'onnx-pathlift[dask]'") from None
    try:
        _reachable(address)
    except (OSError, ValueError) as exc:
        raise PathliftError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    client = _connect(Client, address, min(timeout or CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S))
    with client:
        futures = {client.submit(analyse_on_worker, replace(t, path=os.path.abspath(t.path)), settings, timeout,
                                 memory_mb, pure=False): t for t in tasks}
        try:
            yield from _collect(client, futures, timeout or NO_WORKER_S, address)
        finally:
            client.cancel(list(futures))


def _reachable(address: str) -> None:
    """A TCP scheduler address answers a connection within :data:`CONNECT_TIMEOUT_S` (else OSError), before Dask's
    client retries it for its whole timeout."""
    from distributed.comm import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme in ("tcp", "tls"):
        with socket.create_connection(parse_host_port(location), timeout=CONNECT_TIMEOUT_S):
            pass


def _say_lost(client, known: set[str]) -> set[str]:
    """The cluster's workers now; a worker gone since ``known`` is said on stderr (Dask reschedules its models,
    including results it held and not yet delivered)."""
    workers = set(client.scheduler_info().get("workers", {}))
    for gone in sorted(known - workers):
        print(terminal(f"audit: Dask worker {gone} was lost; Dask reschedules the models it held"), file=sys.stderr,
              flush=True)
    return workers


def _connect(client_class, address: str, deadline: float):
    """A Dask client of the scheduler at ``address``, connected within ``deadline`` seconds, else a
    :class:`PathliftError` (exit 1). The client connects on a daemon thread that is left behind when
    the deadline passes: Dask's own timeout does not cover a server that accepts the connection and
    never answers its handshake (``Client.start`` then waits for ever)."""
    box: list = []

    def connect() -> None:
        try:
            box.append(client_class(address, timeout=deadline))
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=connect, name="onnx-pathlift-dask-connect", daemon=True)
    thread.start()
    thread.join(deadline + 1)
    if not box:
        raise PathliftError(f"the Dask scheduler at {address} did not answer within {deadline:g} s (the connection was "
                            "accepted, the handshake never came back): the audit stops; results so far are in the database")
    if isinstance(box[0], (OSError, TimeoutError, ValueError)):
        raise PathliftError(f"cannot reach the Dask scheduler at {address}: {box[0]}") from box[0]
    if isinstance(box[0], Exception):  # something answered, not as a Dask scheduler (its reply read as a huge frame)
        raise PathliftError(f"cannot reach the Dask scheduler at {address}: what answers there is not a Dask "
                            f"scheduler ({type(box[0]).__name__}: {box[0]})") from box[0]
    return box[0]


def _collect(client, futures: dict, patience: float, address: str) -> Iterator[ModelResult]:
    """Yield each future's result as it finishes; give up after ``patience`` seconds without a worker."""
    from distributed import wait

    pending, yielded, alone_since, workers = set(futures), 0, None, set()
    while pending:
        workers = _say_lost(client, workers)
        try:
            done, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for future in done:
            task = futures.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # the Dask task itself failed (e.g. its worker died repeatedly)
                result = failure(task, "error", f"Dask task failed: {type(exc).__name__}: {exc}", 0.0, None)
            future.release()  # collected: a lost worker holding it does not make Dask compute it again
            yielded += 1
            yield replace(result, path=task.path)
        if done or client.nthreads():  # results arriving: some worker is there
            alone_since = None
        elif alone_since is None:
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since > patience:
            raise PathliftError(
                f"no Dask worker connected to the scheduler at {address} for {patience:g} s, with {len(pending)} "
                f"model(s) left: the audit stops; the {yielded} result(s) of this run are in the database, and the "
                "same command resumes from them once workers are back")


class _Analyser:
    """A long-lived analysis process on a Dask worker: :func:`serve` over a socket pair."""

    def __init__(self, memory_mb: float | None):
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno()), repr(memory_mb)],
                                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        self.conn = Connection(ours.detach())
        self.ready, self.memory_mb = False, memory_mb

    def analyse(self, task: Task, settings: Settings, timeout: float | None) -> ModelResult:
        """Analyse one model; a crash or the timeout kills this process (then :attr:`alive` is False)."""
        if not self.ready:
            self._wait_ready()
        self.conn.send((task, settings))
        t0 = time.monotonic()
        if not self.conn.poll(timeout):
            self.kill()
            return failure(task, "timeout", f"no result within {timeout:g} s: the worker was killed",
                           time.monotonic() - t0, timeout)
        try:
            return replace(self.conn.recv(), path=task.path, timeout_s=timeout)
        except (EOFError, OSError):  # it died: its exit code says how
            self.kill()
            return failure(task, "error", describe_exit(self.process.returncode, self.memory_mb), time.monotonic() - t0, timeout)

    def _wait_ready(self) -> None:
        while not self.conn.poll(POLL_S):
            if self.process.poll() is not None:
                break
        try:
            self.ready = self.conn.recv() == READY
        except (EOFError, OSError):
            pass
        if not self.ready:
            self.kill()
            raise PathliftError(f"an analysis process failed to start on {socket.gethostname()}: "
                                f"{describe_exit(self.process.returncode)}")

    @property
    def alive(self) -> bool:
        return not self.conn.closed

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()


#: idle analysis processes of this Dask worker, by memory cap (the module lives as long as the worker)
_IDLE: dict[float | None, list[_Analyser]] = {}
_LOCK = threading.Lock()


def analyse_on_worker(task: Task, settings: Settings, timeout: float | None, memory_mb: float | None = None) -> ModelResult:
    """Run on a Dask worker: analyse one model in one of the worker's analysis processes (an idle one,
    else a new one, capped at ``memory_mb``), killed past ``timeout``."""
    if not os.path.isfile(task.path):
        return failure(task, "error", f"{task.path} is not visible on the Dask worker {socket.gethostname()} "
                       "(the workers must see the client's paths)", 0.0, timeout)
    with _LOCK:
        idle = _IDLE.setdefault(memory_mb, [])
        analyser = idle.pop() if idle else None
    analyser = analyser or _Analyser(memory_mb)
    try:
        result = analyser.analyse(task, settings, timeout)
    except BaseException:  # its state is unknown: it is not reused
        analyser.kill()
        raise
    if analyser.alive:
        with _LOCK:
            _IDLE[memory_mb].append(analyser)
    return result


def dask_setup(worker) -> None:
    """``dask worker --preload onnx_pathlift.audit.cluster``: start the worker's analysis processes (one
    per thread, no memory cap) with the worker, so that the first audit does not wait for their imports."""
    started = [_Analyser(None) for _ in range(worker.state.nthreads)]
    with _LOCK:
        _IDLE.setdefault(None, []).extend(started)


if __name__ == "__main__":  # an analysis process: python -m onnx_pathlift.audit.cluster FD MEMORY_MB
    serve(Connection(int(sys.argv[1])), None if sys.argv[2] == "None" else float(sys.argv[2]), parent=os.getppid())
