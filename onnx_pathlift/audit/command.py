"""``onnx-pathlift audit``: run the audit with a progress display, write the reports, print the results."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..errors import FAIL_ON_EXIT, UsageError
from ..fileio.atomic import refuse_same_file
from ..sanitise import terminal
from . import report
from .batch import Audit, audit
from .files import discover
from .progress import Progress
from .record import DEFAULT_Q, STATUSES, InputShape, ModelResult, Settings

#: ``--fail-on oom`` names the errors that are out-of-memory failures (a cap or the OOM killer)
OOM = "oom"


def parse_fail_on(text: str | None) -> frozenset[str]:
    """``--fail-on error,timeout``: the statuses that make the audit exit with :data:`FAIL_ON_EXIT`."""
    if not text:
        return frozenset()
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = sorted(names - {*STATUSES, OOM})
    if unknown or not names:
        raise UsageError(f"--fail-on takes statuses separated by commas, among {', '.join((*STATUSES, OOM))} "
                         f"(got {text!r})")
    return frozenset(names)


def failing(r: ModelResult, fail_on: frozenset[str]) -> bool:
    """Whether ``r`` ends in one of the ``fail_on`` statuses (``oom``: an out-of-memory error)."""
    return r.status in fail_on or (OOM in fail_on and r.out_of_memory)


def _refuse_outputs_onto_models(paths: Sequence[str], *outputs: str | Path | None) -> None:
    """:class:`UsageError` (exit 2) when a report, the CSV or the database would replace a model the
    audit reads (``--report a.onnx``), before any model is analysed."""
    models = discover(paths)
    for out in (o for o in outputs if o):
        for model in models:
            refuse_same_file(out, model, model)


def run_command(paths: Sequence[str], *, q: Sequence[float] | None = None, input_shape: InputShape = None,
                jobs: int | None = None, timeout: float | None = None, memory_mb: float | None = None, db: str | None = None,
                html: str | None = None, csv: str | None = None, as_json: bool = False,
                scheduler: str | None = None, fail_on: str | None = None) -> int:
    """``onnx-pathlift audit``: :func:`~onnx_pathlift.audit.audit` with a progress display on stderr,
    then the reports (``html``: a self-contained HTML page, ``csv``: one row per model) and the results
    printed (``as_json``: JSON Lines, one object per model, then a summary line). Returns the exit
    code: 0 once every model has a result, whatever its status, unless some model's status is in
    ``fail_on`` (statuses separated by commas, ``oom`` for out-of-memory errors): then
    :data:`FAIL_ON_EXIT`. ``q``, ``input_shape``, ``jobs``, ``timeout`` (seconds), ``memory_mb`` (MB)
    and ``scheduler`` are :func:`~onnx_pathlift.audit.audit`'s. The database ``db`` defaults to the HTML
    report's name with ``.sqlite`` (else ``audit.sqlite`` here). Raises what
    :func:`~onnx_pathlift.audit.audit` raises, and :class:`UsageError` for an unknown ``fail_on`` status.
    """
    gate = parse_fail_on(fail_on)
    settings = Settings(q=tuple(q or DEFAULT_Q), input_shape=input_shape)
    db_path = Path(db) if db else Path(html).with_suffix(".sqlite") if html else Path("audit.sqlite")
    _refuse_outputs_onto_models(paths, db_path, html, csv)
    progress = Progress()
    try:
        result = audit(paths, settings, jobs=jobs, timeout=timeout, memory_mb=memory_mb, db=db_path, scheduler=scheduler,
                       listener=progress)
    finally:
        progress.close()
    if html:
        report.write_html(html, result, settings)
    if csv:
        report.write_csv(csv, result, settings)
    bad = sum(failing(r, gate) for r in result.results)
    code = FAIL_ON_EXIT if bad else 0
    if as_json:
        for line in report.json_lines(result):
            print(line)
        print(json.dumps({"summary": {**summary(result), "fail_on": sorted(gate), "failing": bad, "exit_code": code}}))
    else:
        _print_summary(result, settings, html, csv)
        if bad:
            print(f"{bad} file(s) ended in a status named by --fail-on {','.join(sorted(gate))}: exit code {code}")
    return code


def summary(result: Audit) -> dict:
    """Counts per status (every status, zeros included), files, models analysed and reused, the database."""
    counts = Counter(r.status for r in result.results)
    return {"files": len(result.results), "status_counts": {**dict.fromkeys(STATUSES, 0), **counts},
            "out_of_memory": sum(r.out_of_memory for r in result.results), "analysed": result.analysed,
            "reused": result.reused, "db": str(result.db)}


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
