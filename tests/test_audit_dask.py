"""The audit on a real Dask cluster: long-lived analysis processes reused across tasks, a worker
lost mid-audit (its tasks rescheduled), and no worker at all (the audit stops with a clear message,
keeping its partial results, and the same command resumes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from builders import write_mlps
from conftest import stored

from onnx_pathlift.audit import audit
from onnx_pathlift.audit.analyse import HOOK_ENV
from onnx_pathlift.errors import PathliftError

distributed = pytest.importorskip("distributed", reason="dask[distributed] not installed: pip install -e '.[dask]'")


def local_cluster(workers: int, **kwargs):
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address=":0", **kwargs)


class After:
    """A listener that calls ``action`` once, when the ``n``-th result arrives."""

    def __init__(self, n: int, action):
        self.n, self.action, self.seen = n, action, 0

    def start(self, todo: int, reused: int) -> None:
        pass

    def update(self, result) -> None:
        self.seen += 1
        if self.seen == self.n:
            self.action()


def analysis_pids(client) -> set[int]:
    """The analysis processes (children of the Dask worker processes) alive now."""
    def children() -> list[int]:
        me = str(os.getpid())
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == me]
    return {pid for pids in client.run(children).values() for pid in pids}


def _ppid(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="counts processes through /proc")
def test_analysis_processes_are_reused_across_tasks_and_audits(tmp_path):
    models = write_mlps(tmp_path / "m", [f"net{k}" for k in range(6)])
    with local_cluster(2) as cluster, distributed.Client(cluster.scheduler_address) as client:
        first = audit([models], db=tmp_path / "a.sqlite", scheduler=cluster.scheduler_address)
        pids = analysis_pids(client)
        second = audit([models], db=tmp_path / "b.sqlite", scheduler=cluster.scheduler_address)
        assert analysis_pids(client) == pids  # the same processes did the second audit
    assert 1 <= len(pids) <= 2  # one per worker thread at most, for 12 models
    assert [r.status for r in first.results] == ["ok"] * 6
    assert [r.norms for r in second.results] == [r.norms for r in first.results]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="counts processes through /proc")
def test_preload_starts_the_analysis_processes_with_the_worker(tmp_path):
    """``--preload onnx_pathlift.audit.cluster``: one analysis process per thread before any audit,
    and the audit uses those very processes."""
    models = write_mlps(tmp_path / "m", ["a", "b", "c"])
    with local_cluster(2, preload=["onnx_pathlift.audit.cluster"]) as cluster, \
            distributed.Client(cluster.scheduler_address) as client:
        before = analysis_pids(client)
        result = audit([models], db=tmp_path / "a.sqlite", scheduler=cluster.scheduler_address)
        assert analysis_pids(client) == before
    assert len(before) == 2 and [r.status for r in result.results] == ["ok"] * 3


@pytest.mark.slow
def test_a_lost_worker_has_its_tasks_rescheduled(tmp_path, monkeypatch, capsys):
    n = 8
    models = write_mlps(tmp_path / "m", [f"net{k}" for k in range(n)])
    monkeypatch.setenv(HOOK_ENV, "slow:")  # 0.5 s a model: the worker dies with a task in hand
    with local_cluster(2) as cluster, distributed.Client(cluster.scheduler_address) as client:
        victim = next(iter(client.run(os.getpid).values()))
        result = audit([models], db=tmp_path / "a.sqlite", scheduler=cluster.scheduler_address,
                       listener=After(1, lambda: os.kill(victim, signal.SIGKILL)))
    assert [r.status for r in result.results] == ["ok"] * n and result.analysed == n
    assert len(stored(tmp_path / "a.sqlite")) == n
    assert "was lost; Dask reschedules the models it held" in capsys.readouterr().err  # said, not silent


def test_an_unreachable_scheduler_fails_fast(tmp_path):
    """Nothing listens at the address: a clear error at once, not after Dask's retries (60 s: a hang detector)."""
    import socket

    with socket.socket() as s:  # a free port, closed again: a refused connection
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models = write_mlps(tmp_path / "m", ["a"])
    proc = subprocess.run([sys.executable, "-m", "onnx_pathlift", "audit", str(models), "--scheduler",
                           f"tcp://127.0.0.1:{port}", "--db", str(tmp_path / "a.sqlite")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "cannot reach the Dask scheduler" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_server_that_is_not_dask_fails_cleanly(tmp_path):
    """Something else answers at the address (an HTTP server): one clear error, no MemoryError from reading its
    reply as a Dask frame, no traceback."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 64)

    threading.Thread(target=answer, daemon=True).start()
    models = write_mlps(tmp_path / "m", ["a"])
    try:
        proc = subprocess.run([sys.executable, "-m", "onnx_pathlift", "audit", str(models), "--scheduler",
                               f"tcp://127.0.0.1:{server.getsockname()[1]}", "--db", str(tmp_path / "a.sqlite")],
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.close()
    assert proc.returncode == 1 and "cannot reach the Dask scheduler" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_no_worker_at_all_ends_the_audit_with_a_message(tmp_path):
    models = write_mlps(tmp_path / "m", ["a", "b"])
    db = tmp_path / "a.sqlite"
    with local_cluster(0) as cluster:
        proc = subprocess.run([sys.executable, "-m", "onnx_pathlift", "audit", str(models), "--scheduler",
                               cluster.scheduler_address, "--timeout", "3", "--db", str(db), "--json"],
                              capture_output=True, text=True, timeout=120, check=False)  # a hang detector
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    err = json.loads(proc.stdout)
    assert "no Dask worker connected to the scheduler" in err["message"] and "for 3 s" in err["message"]
    assert "2 model(s) left" in err["message"] and "0 result(s)" in err["message"]


@pytest.mark.slow
def test_workers_gone_mid_audit_keep_the_partial_results_and_the_audit_resumes(tmp_path, monkeypatch):
    n = 6
    models = write_mlps(tmp_path / "m", [f"net{k}" for k in range(n)])
    db = tmp_path / "a.sqlite"
    monkeypatch.setenv(HOOK_ENV, "slow:")
    with local_cluster(1) as cluster:
        with pytest.raises(PathliftError, match=r"no Dask worker .* for 3 s.*result\(s\) of this run are in the database"):
            audit([models], db=db, scheduler=cluster.scheduler_address, timeout=3, listener=After(2, lambda: cluster.scale(0)))
        kept = stored(db)
        assert 2 <= len(kept) < n
        cluster.scale(1)
        again = audit([models], db=db, scheduler=cluster.scheduler_address, timeout=30)
    assert again.reused == len(kept) and again.analysed == n - len(kept)
    assert [r.status for r in again.results] == ["ok"] * n and all(stored(db)[sha] == kept[sha] for sha in kept)


def test_a_scheduler_that_accepts_and_never_answers_is_given_up_within_the_timeout(tmp_path):
    """A real local socket that accepts the connection and stays silent (no Dask handshake): the audit
    stops within ``--timeout`` with one error line (exit 1), not after Dask's own waits (which never
    end there); the results already in the database are kept. 120 s is a hang detector."""
    import socket

    from conftest import run_cli

    folder = tmp_path / "models"
    write_mlps(folder, ["a", "b"])
    db = tmp_path / "audit.sqlite"
    assert run_cli("audit", folder, "--db", db, "--jobs", "1").returncode == 0
    before = stored(db)
    write_mlps(tmp_path / "more", ["a", "b", "c"])  # c is new: something left to analyse
    silent = socket.create_server(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    try:
        import threading

        threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
        port = silent.getsockname()[1]
        proc = run_cli("audit", folder, tmp_path / "more", "--db", db, "--scheduler", f"tcp://127.0.0.1:{port}",
                       "--timeout", "3", timeout=120)
    finally:
        silent.close()
    assert proc.returncode == 1, proc.stderr
    assert "did not answer within 3 s" in proc.stderr and "Traceback" not in proc.stderr
    assert accepted and stored(db) == before and len(before) == 2
