"""``onnx-pathlift audit``: run the audit with a progress display, write the reports, print the results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..sanitise import terminal
from . import report
from .batch import Audit, audit
from .progress import Progress
from .record import DEFAULT_Q, STATUSES, InputShape, Settings


def run_command(paths: Sequence[str], *, q: Sequence[float] | None = None, input_shape: InputShape = None,
                jobs: int | None = None, timeout: float | None = None, memory_mb: float | None = None, db: str | None = None,
                html: str | None = None, csv: str | None = None, as_json: bool = False,
                scheduler: str | None = None) -> int:
    """The audit command; returns its exit code (0 once every model has a result, whatever its status).

    The database defaults to the HTML report's name with ``.sqlite`` (else ``audit.sqlite`` here).
    """
    settings = Settings(q=tuple(q or DEFAULT_Q), input_shape=input_shape)
    db_path = Path(db) if db else Path(html).with_suffix(".sqlite") if html else Path("audit.sqlite")
    result = audit(paths, settings, jobs=jobs, timeout=timeout, memory_mb=memory_mb, db=db_path, scheduler=scheduler,
                   listener=Progress())
    if html:
        report.write_html(html, result, settings)
    if csv:
        report.write_csv(csv, result, settings)
    if as_json:
        for line in report.json_lines(result):
            print(line)
    else:
        _print_summary(result, settings, html, csv)
    return 0


def _print_summary(result: Audit, settings: Settings, html: str | None, csv: str | None) -> None:
    def log10(x: float | None) -> str:
        return "-" if x is None else f"{x:.6f}"

    heads = ["status".ljust(11), *(f"log10 L{q:g}".rjust(11) for q in settings.q), "params".rjust(9), "path"]
    print("  ".join(heads))
    for r in result.results:
        norms = [log10(r.norm_log10(q)).rjust(11) for q in settings.q]
        params = "-" if r.params is None else str(r.params)
        why = f"  ({terminal(r.brief())})" if r.reason else ""
        print("  ".join([r.status.ljust(11), *norms, params.rjust(9), terminal(r.path)]) + why)
    counts = Counter(r.status for r in result.results)
    statuses = ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s])
    print(f"{len(result.results)} files: {statuses} ({result.analysed} models analysed, {result.reused} reused) "
          f"in {result.db}")
    written = [f"{kind} {path}" for kind, path in (("report", html), ("csv", csv)) if path]
    if written:
        print("wrote " + ", ".join(written))
