"""One function per command: parse its arguments into one library call, print the report it returns
(``--json``: its ``to_dict()``)."""

from __future__ import annotations

import json
import sys

from ..analyses import check_q, declared
from ..errors import UsageError
from ..sanitise import terminal
from .render import (
    _print_channel_pruning,
    _print_comparison,
    _print_inspection,
    _print_lift,
    _print_norms,
    _print_weight_pruning,
    _way_out,
)

SHAPE_FORMS = ("1x3x224x224, 1,3,224,224 or [1,3,224,224]; per input NAME=SHAPE, NAME:SHAPE or NAME:[1,3,224,224] "
               "(repeat --input-shape for several inputs)")


def _shape(text: str) -> tuple[int, ...]:
    """One shape in any accepted form (see :data:`SHAPE_FORMS`)."""
    from ..frontend.prepare import parse_shape

    inner = text.strip()
    if inner[:1] + inner[-1:] in ("[]", "()"):
        inner = inner[1:-1]
    try:
        return parse_shape(inner)
    except UsageError as err:
        raise UsageError(f"{err}; --input-shape accepts {SHAPE_FORMS}") from None


def _input_shape(texts: list[str] | None):
    """``--input-shape SHAPE`` or, per input, ``NAME=SHAPE`` / ``NAME:SHAPE`` (repeatable; forms in :data:`SHAPE_FORMS`).

    A name is split off at the last ``=``, else at the last ``:`` (names such as ``input:0`` keep theirs)."""
    if not texts:
        return None
    named = [text.rpartition("=") if "=" in text else text.rpartition(":") for text in texts]
    if len(texts) == 1 and not named[0][1]:
        return _shape(texts[0])
    shapes = {}
    for text, (name, sep, shape) in zip(texts, named):
        if not sep or not name:
            raise UsageError(f"with several --input-shape, name each input (got {text!r}); --input-shape accepts {SHAPE_FORMS}")
        shapes[name] = _shape(shape)
    return shapes


def _show(args, report, printer) -> None:
    """The report as one JSON object with ``--json``, else as text by ``printer``."""
    if args.json:  # json.dumps escapes every control character itself
        print(json.dumps(report.to_dict(), indent=2))
    else:
        printer(report)


def _model_args(args) -> dict:
    """The options every single-model command shares, as library keyword arguments."""
    return {"input_shape": _input_shape(args.input_shape), "outputs": args.output or None}


def cmd_norm(args) -> int:
    from ..api import compute_norms

    qs = args.q or [1.0, 2.0]
    check_q(qs)
    report = compute_norms(args.model, qs, providers=args.provider, verify=args.verify, **_model_args(args))
    _show(args, report, _print_norms)
    return 0 if report.passed else 1


def cmd_lift(args) -> int:
    from ..api import write_lifted

    qs = args.q or [1.0]
    if len(qs) > 1:
        raise UsageError(f"lift writes one lifted network: give one -q (got {', '.join(f'{q:g}' for q in qs)}; "
                         "run lift once per q, each with its own -o)")
    check_q(qs)
    _show(args, write_lifted(args.model, args.out, qs[0], **_model_args(args)), _print_lift)
    return 0


def cmd_compare(args) -> int:
    from ..api import compare_models

    result = compare_models(args.model, args.other, r=args.input_linf, check=args.check, providers=args.provider,
                            **_model_args(args))
    _show(args, result, lambda c: _print_comparison(c, args.quiet))
    violation = result.violation
    if violation is not None:
        print(f"onnx-pathlift: error: {violation}", file=sys.stderr)
        return violation.exit_code
    return 0


def cmd_declared(args) -> int:
    """A command an analysis declares about itself (:mod:`onnx_pathlift.analyses`): its run, its report
    shown, its exit code."""
    command = declared(args.command)
    report = command.run(args, _model_args(args))
    _show(args, report, lambda r: command.render(r, args))
    return command.exit_code(report)


def cmd_prune(args) -> int:
    from ..pruning.prune import prune_channel_groups, prune_weights

    common = {"criterion": args.criterion, "scope": args.scope, "input_linf": args.input_linf, "eval_data": args.eval,
              **_model_args(args)}
    if args.structure == "channel":
        if args.mask:
            raise UsageError("--mask goes with --structure weight")
        report = prune_channel_groups(args.model, args.sparsity, args.out, masked_out=args.masked,
                                      repeats=20 if args.repeats is None else args.repeats,
                                      target=args.target, round_to=args.round_to, min_keep=args.min_keep,
                                      layers=args.layers, ranking=args.ranking, steps=args.steps,
                                      calibration=args.calibration, **common)
        if "criterion_reason" in report.record:  # a model the importer refuses: no path mass, no certificate
            print(f"onnx-pathlift: note: ranked by {report.record['criterion']}: "
                  f"{terminal(report.record['criterion_reason'])}", file=sys.stderr)
        _show(args, report, lambda r: _print_channel_pruning(r, args.quiet))
        return 0
    if args.calibration:
        raise UsageError("--calibration goes with --structure channel")
    if args.repeats is not None:
        raise UsageError("--repeats goes with --structure channel: weight pruning zeroes weights in place, so the model "
                         "keeps its size and its latency is not measured")
    if args.masked or args.target != "groups" or {args.round_to, args.min_keep, args.ranking, args.steps} != {None}:
        raise UsageError("--masked, --target, --round-to, --min-keep, --ranking and --steps go with --structure channel")
    report = prune_weights(args.model, args.sparsity, args.out, layers=args.layers, mask_out=args.mask, **common)
    _show(args, report, lambda r: _print_weight_pruning(r, args.quiet))
    return 0


def cmd_inspect(args) -> int:
    from ..analyses.inspection import inspect_model
    from ..pruning.readiness import channel_readiness

    report = inspect_model(args.model, _input_shape(args.input_shape), args.output or None, name=str(args.model),
                           readiness=channel_readiness)
    err = report.error()
    if args.json:
        result = report.to_dict()
        if err is not None:
            result["error"] = err.to_dict()
        print(json.dumps(result, indent=2))
    else:
        _print_inspection(report)
        if err is not None:
            print(f"onnx-pathlift: error: {len(err.refusals)} node(s) cannot be represented as a ReLU network "
                  "(listed above)", file=sys.stderr)
            shapes = [x for shape in args.input_shape or [] for x in ("--input-shape", shape)]
            if command := _way_out(err, ["norm", args.model, *shapes]):
                print(f"  try: {terminal(command)}", file=sys.stderr)
            if report.channel_pruning.get("prunable"):  # channel groups need no DAG
                import shlex  # here: norm's start-up does without it

                prune = shlex.join(["onnx-pathlift", "prune", str(args.model), *shapes, "--structure", "channel",
                                    "--sparsity", "0.5", "-o", "slim.onnx"])
                print(f"  channel-prunable all the same (by l1-norm, no certificate): {terminal(prune)}", file=sys.stderr)
    return 0 if err is None else err.exit_code


def cmd_audit(args) -> int:
    from ..audit import run_command

    check_q(args.q or [])
    return run_command(args.paths, q=args.q, input_shape=_input_shape(args.input_shape), jobs=args.jobs,
                       timeout=args.timeout, memory_mb=args.max_memory, db=args.db, html=args.report, csv=args.csv,
                       as_json=args.json, scheduler=args.scheduler, fail_on=args.fail_on)

