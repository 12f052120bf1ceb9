"""Batch audit: status, facts and path-norms of many ONNX models, each analysed in an isolated worker.

    from onnx_pathlift.audit import Settings, audit
    result = audit(["models/"], Settings(q=(1, 2, 4)), jobs=2, timeout=60, db="audit.sqlite")
    for r in result.results:            # one ModelResult per file
        print(r.status, r.path, r.norm_log10(1), r.brief())

Modules: ``files`` (PATH arguments → files and hashes), ``analyse`` (one model, in-process; the test
hook), ``worker`` (worker processes), ``runner`` (the local pool: crashes, hangs and timeouts fail
one model), ``cluster`` (Dask), ``store`` (SQLite, resumable), ``batch`` (one audit), ``progress``,
``report`` (HTML, CSV, JSON Lines) and ``command`` (the ``audit`` subcommand).
"""

from .batch import Audit, audit
from .command import run_command
from .record import DEFAULT_Q, STATUSES, ModelResult, Settings, Task

__all__ = ["DEFAULT_Q", "STATUSES", "Audit", "ModelResult", "Settings", "Task", "audit", "run_command"]
