"""The ``onnx-pathlift`` command line: argument parsing and printing only.

Each command parses its arguments, calls one library function (:mod:`onnx_pathlift.api`,
:func:`onnx_pathlift.prune.prune_weights` / :func:`~onnx_pathlift.prune.prune_channel_groups`,
:func:`onnx_pathlift.inspect.inspect_model`, :func:`onnx_pathlift.audit.run_command`) and prints the
report it returns: its ``to_dict()`` with ``--json``, else a text form.

Exit codes: 0 ok, 1 anything else, 2 usage, 3 unsupported operators, 4 unreadable or invalid model,
5 a certificate exceeded by ``compare --check``, 6 an output could not be written, 7 ``audit --fail-on``;
130 Ctrl-C, 143 SIGTERM (one line each), 141 stdout closed by its reader (quiet).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading

from . import __version__, prefetch
from .errors import FAIL_ON_EXIT, OutOfMemoryError, PathliftError, UsageError
from .sanitise import terminal

# The analyses (numpy, onnx, onnxruntime, networkx) are imported by the commands that use them: the
# audit's parent process needs none of them, so its workers start sooner.


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


_MODEL = "models/digits_cnn_torch_bn.onnx"  # a shipped model (examples run from the repository root)
#: one example per command, shown at the end of its --help
EXAMPLES = {
    "norm": f"onnx-pathlift norm {_MODEL} -q 1 -q 2 --verify\nonnx-pathlift norm model.onnx --input-shape input:1,3,224,224 --json",
    "lift": f"onnx-pathlift lift {_MODEL} -q 1 -o lifted.onnx   # then run it on all-ones inputs (see README)",
    "compare": f"onnx-pathlift compare {_MODEL} models/digits_cnn_torch_bn_pruned50.onnx --check 100",
    "lipschitz": f"onnx-pathlift lipschitz {_MODEL} --json",
    "scores": f"onnx-pathlift scores {_MODEL} -o scores.npz",
    "prune": f"onnx-pathlift prune {_MODEL} --sparsity 0.5 -o pruned.onnx --eval models/digits_test.npz",
    "rescale": f"onnx-pathlift rescale {_MODEL} --seed 1 -o rescaled.onnx && onnx-pathlift norm rescaled.onnx",
    "inspect": "onnx-pathlift inspect models/digits_mlp_sklearn.onnx",
    "audit": "onnx-pathlift audit models/ ../zoo/ --jobs 4 --timeout 300 --report report.html --fail-on error,timeout",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: main() prints one clear line (or JSON) and exits 2
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _fail(err: PathliftError, json_mode: bool, argv: list[str] | None = None) -> int:
    """Print the error (one JSON object with ``--json``); a refusal that names analysable tensors gets the
    command that analyses them: ``argv`` with its ``--output`` options replaced."""
    command = _way_out(err, argv)
    if json_mode:
        print(json.dumps({**err.to_dict(), **({"command": command} if command else {})}, indent=2))
    else:
        print(f"onnx-pathlift: error: {terminal(err, keep_newlines=True)}", file=sys.stderr)
        if command:
            print(f"  try: {terminal(command)}", file=sys.stderr)
    return err.exit_code


def _way_out(err: PathliftError, argv: list[str] | None) -> str | None:
    """``onnx-pathlift ARGV`` with ``--output`` set to the refusal's analysable tensors (None without them)."""
    outputs = getattr(err, "analysable", None)
    if not outputs or not argv or argv[0] == "audit":
        return None
    kept, rest = [], iter(argv)
    for arg in rest:
        if arg == "--output":
            next(rest, None)
        elif not arg.startswith("--output="):
            kept.append(arg)
    return shlex.join(["onnx-pathlift", *kept, *(x for o in outputs for x in ("--output", o))])


class _TerminalSafe:
    """A text stream that shows control characters (ANSI/OSC escapes, ...) written to it as visible
    escapes: the text output of every command quotes model-supplied names."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(terminal(text, keep_newlines=True))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


SHAPE_FORMS = ("1x3x224x224, 1,3,224,224 or [1,3,224,224]; per input NAME=SHAPE, NAME:SHAPE or NAME:[1,3,224,224] "
               "(repeat --input-shape for several inputs)")


def _shape(text: str) -> tuple[int, ...]:
    """One shape in any accepted form (see :data:`SHAPE_FORMS`)."""
    from .prepare import parse_shape

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


def _fmt(log10: float) -> str:
    if log10 == -math.inf:
        return "0"
    if log10 < 300:
        return f"{10 ** log10:.6g}"
    return f"10^{log10:.6f}"


def _show(args, report, printer) -> None:
    """The report as one JSON object with ``--json``, else as text by ``printer``."""
    if args.json:  # json.dumps escapes every control character itself
        print(json.dumps(report.to_dict(), indent=2))
    else:
        printer(report)


def _model_args(args) -> dict:
    """The options every single-model command shares, as library keyword arguments."""
    return {"input_shape": _input_shape(args.input_shape), "outputs": args.output or None}


def _print_norms(r) -> None:
    d = r.to_dict()
    print(f"{r.model}: {r.dag.n_params} parameters, input {d['input_shapes']}, outputs {d['outputs']}")
    for note in r.dag.notes:
        print(f"  note: {note}")
    for n in r.norms:
        print(f"  L{n.q:g} path-norm = {_fmt(n.log10)}  (log10 = {n.log10:.9g})")
        if not n.certified:
            print(f"    not certified: float32 underflow may have lost mass; the true value lies in "
                  f"[{_fmt(n.lower_log10)}, {_fmt(n.upper_log10)}]")
    if r.verify is not None:
        v = r.verify
        print(f"  re-emission check {'passed' if v.passed else 'FAILED'}: max relative error "
              f"{max(v.max_rel_error.values()):.3g} (tolerance {v.rtol:g}, {v.trials} random inputs)")


def cmd_norm(args) -> int:
    from .api import compute_norms

    qs = args.q or [1.0, 2.0]
    _check_q(qs)
    report = compute_norms(args.model, qs, providers=args.provider, verify=args.verify, **_model_args(args))
    _show(args, report, _print_norms)
    return 0 if report.passed else 1


def _print_lift(r) -> None:
    """Where the lifted network went and a recipe that reads the norm off it (run as printed: tested)."""
    from .emit import LOG2_SUFFIX
    from .norm import Q_INF

    print(f"wrote the lifted network (q={r.q:g}, {'static' if r.static else 'dynamic'} scales) to {r.written}")
    print(f"run it with all-ones inputs; each analysed output o comes with an exponent o{LOG2_SUFFIX} (float64,")
    print("broadcastable to o: one per channel or neuron with static scales), and")
    outs = ", ".join(repr(o) for o in r.dag.outputs)
    run = ("import onnxruntime as rt, numpy as np; s = rt.InferenceSession(%r); r = dict(zip([o.name for o in "
           "s.get_outputs()], s.run(None, {i.name: np.ones(i.shape, np.float32) for i in s.get_inputs()}))); " % r.written)
    if math.isinf(r.q):
        print(f"  ||Phi||_inf = max over outputs o of  max((o * 2**o{LOG2_SUFFIX}) ** (1/Q)),  Q = 2**{math.log2(Q_INF):g}")
        print("  (lifted at q = Q: the largest path product to a relative 1e-9; in logs, since 2**o"
              f"{LOG2_SUFFIX} overflows)     (here: {_fmt(r.norm.log10)})")
        code = run + ("np.seterr(divide='ignore'); print(max(float(np.exp2(((np.log2(r[o].astype(np.float64)) + r[o + %r]) "
                      "/ %r).max())) for o in [%s]))" % (LOG2_SUFFIX, Q_INF, outs))
    else:
        print(f"  ||Phi||_q^q = sum over outputs o of  sum(o * 2**o{LOG2_SUFFIX})     (here: {_fmt(r.norm.log10 * r.q)}, "
              f"so ||Phi||_q = {_fmt(r.norm.log10)})")
        code = run + ("print(sum(float((r[o] * np.exp2(r[o + %r])).sum()) for o in [%s]) ** (1 / %r))"
                      % (LOG2_SUFFIX, outs, r.q))
    quoted = f'"{code}"' if not set(code) & set('"$`\\!') else shlex.quote(code)  # as the shell reads it
    print(f"e.g.  python -c {quoted}")


def cmd_lift(args) -> int:
    from .api import write_lifted

    qs = args.q or [1.0]
    if len(qs) > 1:
        raise UsageError(f"lift writes one lifted network: give one -q (got {', '.join(f'{q:g}' for q in qs)}; "
                         "run lift once per q, each with its own -o)")
    _check_q(qs)
    _show(args, write_lifted(args.model, args.out, qs[0], **_model_args(args)), _print_lift)
    return 0


def _print_signs(metric) -> None:
    """How the upper bound was routed: through an intermediate model, and the sign changes that forced it."""
    if metric.sign_consistent and metric.route.endswith("via-min"):
        print(f"  upper through an intermediate model (route {metric.route}), below the direct two-stream "
              f"bound {_fmt(metric.routes['direct'])}")
    elif metric.sign_consistent and metric.route != "direct":
        print(f"  upper by route {metric.route}, below the direct two-stream bound {_fmt(metric.routes['direct'])}")
    if not metric.sign_consistent:
        bad = [s for s in metric.signs if s.violations]
        routes = ", ".join(f"{k} {_fmt(v)}" for k, v in metric.routes.items())
        print(f"  {sum(s.violations for s in bad)} parameter(s) change sign, in {len(bad)} layer(s); the bound goes "
              f"through an intermediate model (route {metric.route}; routes: {routes}):")
        for s in bad[:20]:
            print(f"    {s.layer!r}: {s.violations} of {s.size}")


def _print_check(check) -> None:
    if check.max_observed is None:
        print(f"  check: NOT done: {check.note}")
        return
    ratio = "n/a (no certificate)" if check.ratio is None else f"{check.ratio:.3g} of the bound"
    print(f"  check: largest observed ‖A(x) − B(x)‖_1 over {check.samples} inputs = {check.max_observed:.6g} ({ratio})")
    if check.note:
        print(f"  check: {check.note}")
    if check.shipped_max_observed is not None:
        ratio = "" if check.shipped_ratio is None else f" ({check.shipped_ratio:.3g} of the total bound)"
        print(f"  models as shipped (quantized activations): largest observed change {check.shipped_max_observed:.6g}{ratio}")


def _print_comparison(c, quiet: bool = False) -> None:
    metric = c.metric
    print(f"path-metric d(A, B) = ‖Φ(A) − Φ(B)‖_1 between {c.a} and {c.b}:")
    print(f"  lower {_fmt(metric.lower_log10)}   upper {_fmt(metric.upper_log10)}"
          + ("   (exact: |B| ≤ |A| or |B| ≥ |A| everywhere)" if metric.exact else ""))
    print(f"  ‖Φ(A)‖_1 = {_fmt(metric.norm_a_log10)}, ‖Φ(B)‖_1 = {_fmt(metric.norm_b_log10)}")
    _print_alignment(metric.alignment or {})
    if not quiet:
        _print_canonical(c.canonical_a, c.canonical_b)
    _print_signs(metric)
    _print_certificate(metric, c.certificate, quiet)
    if c.check is not None:
        _print_check(c.check)


def _print_alignment(al: dict) -> None:
    """One line on the gauge alignment of B, when its routes were computed."""
    if "route" in al:
        print(f"  B brought to A's rescaling gauge ({al['aligned_neurons']} neurons in {al['groups']} layers, factors up to "
              f"10^±{al['max_abs_log10_factor']:.3g}, rounding ≤ {al['rounding'] or 0:.3g}): "
              + ("its route gives the bound" if al["used"] else "not below the unaligned routes"))


def cmd_compare(args) -> int:
    from .api import compare_models

    result = compare_models(args.model, args.other, r=args.input_linf, check=args.check, providers=args.provider,
                            **_model_args(args))
    _show(args, result, lambda c: _print_comparison(c, args.quiet))
    violation = result.violation
    if violation is not None:
        print(f"onnx-pathlift: error: {violation}", file=sys.stderr)
        return violation.exit_code
    return 0


def _print_certificate(metric, cert, quiet: bool = False) -> None:
    """The certified bound, its weight and activation terms, and where the weight term comes from."""
    r = cert.r
    if not cert.quantized_points:
        print(f"  certified: for every input with ‖x‖_∞ ≤ {r:g}, ‖A(x) − B(x)‖_1 ≤ {_fmt(metric.bound_log10(r))}")
    elif cert.total is None:
        print(f"  certified (B's weights in A's float architecture): for every input with ‖x‖_∞ ≤ {r:g}, "
              f"‖A(x) − B(x)‖_1 ≤ {_fmt(metric.bound_log10(r))}")
        print(f"  activation quantization NOT certified: {cert.activation.reason or 'the total exceeds float64'}")
    else:
        print(f"  certified: for every input with ‖x‖_∞ ≤ {r:g}, ‖A(x) − B(x)‖_1 ≤ {cert.total:.6g} (models as shipped)")
        print(f"    = weight term {_fmt(metric.bound_log10(r))} (max(R, 1)·upper) + activation term "
              f"{cert.activation.term:.6g} ({cert.quantized_points} quantized activation tensor(s))")
        points = sorted((p for p in cert.activation.points if p["term"]), key=lambda p: -p["term"])
        if points and cert.activation.term:
            print("  where the activation term comes from (each quantizer's Σ b(v)·ε(v); ε: rounding, or clipping in the box):")
            for p in points[:5]:
                how = "clipping" if p["clipping"] else "rounding"
                print(f"    {p['node']!r}: {p['term'] / cert.activation.term:.1%} ({p['term']:.6g}, ε ≤ {p['epsilon_max']:.3g}, {how})")
    if not quiet:
        _print_shares(metric)


def _print_shares(metric, top: int = 10) -> None:
    """Each layer's exact part of the certified upper bound, largest first."""
    from .metric import MAX_SHARE_PASSES

    if not metric.shares:
        print(f"  (per-layer parts not computed: they take one lifted pass per layer, more than {MAX_SHARE_PASSES})")
        return
    rows = sorted((sh for sh in metric.shares if sh.log10 > -math.inf), key=lambda sh: -sh.log10)
    if not rows:
        return
    print("  where the weight bound comes from (each layer's part of it):")
    for sh in rows[:top]:
        print(f"    {sh.op} {sh.layer!r}: {10 ** (sh.log10 - metric.estimate_log10):.1%} ({_fmt(sh.log10)})")
    if len(rows) > top:
        print(f"    ... {len(rows) - top} more layer(s)")
    if len(metric.shares) > len(rows):
        print(f"    ({len(metric.shares) - len(rows)} parameterised layer(s) unchanged: no part)")


def _print_canonical(canon_a: list[str], canon_b: list[str]) -> None:
    """The rewrites that brought A and B to one spelling (counts by kind, and the first few; layer names
    are printed as repr, so model-supplied text reaches the terminal escaped)."""
    from .canonical import summary

    if not (canon_a or canon_b):
        return
    print("  spelled differently: both brought to the canonical form (exact rewrites; d is about the canonical "
          "parameters)")
    for who, applied in (("A", canon_a), ("B", canon_b)):
        kinds = ", ".join(f"{n}× {k}" for k, n in summary(applied).items()) or "nothing to rewrite"
        print(f"    {who}: {kinds}")
        for line in applied[:5]:
            print(f"      {line}")
        if len(applied) > 5:
            print(f"      ... and {len(applied) - 5} more (--json lists them all)")


def _print_lipschitz(r) -> None:
    print(f"{r.model}: for all inputs x, x':  ‖R(x) − R(x')‖_1 ≤ L · ‖x − x'‖_∞")
    print(f"  L = ‖Φ_in‖_1 = {_fmt(r.bound.path_norm_log10)}   (paths starting at input neurons)")
    print(f"  naive product of layer ℓ∞ norms × output size = {_fmt(r.bound.naive_log10)}")


def cmd_lipschitz(args) -> int:
    from .api import lipschitz_report

    _show(args, lipschitz_report(args.model, providers=args.provider, **_model_args(args)), _print_lipschitz)
    return 0


def _print_scores(r, quiet: bool = False) -> None:
    print(f"{r.model}: path-magnitude scores of {len(r.scores.fraction)} weight tensors "
          f"(each weight's score as a fraction of ‖Φ‖_1 = {_fmt(r.scores.log10_norm)}), {r.seconds:.3f} s")
    print("  'paths' is the fraction of ‖Φ‖_1 carried by paths through the tensor (a path crosses several tensors, so "
          "these sum to more than 1); 'share' is the tensor's part of all scores (sums to 1)")
    names = [terminal(row["initializer"]) for row in r.rows]  # a newline in a name is escaped too
    width = max([40, *map(len, names)])
    if quiet:
        print(f"  (the table of {len(r.rows)} tensors left out: --quiet)")
    else:
        print(f"  {'tensor':{width}s} {'paths':>10s} {'share':>10s} {'median':>10s} {'max':>10s} {'zeros':>15s}")
    for name, row in [] if quiet else zip(names, r.rows):
        q = row["quantiles"]
        print(f"  {name:{width}s} {row['share']:10.4g} {row['share_of_scores']:10.4g} {q['median']:10.3g} "
              f"{q['max']:10.3g} {str(row['zeros']) + '/' + str(row['size']):>15s}")
    if r.written:
        print(f"wrote {r.written} (float32 fractions keyed by initializer name)")


def cmd_scores(args) -> int:
    from .api import score_weights

    _show(args, score_weights(args.model, args.out, providers=args.provider, **_model_args(args)),
          lambda r: _print_scores(r, args.quiet))
    return 0


def _print_weight_pruning(r) -> None:
    report, metric = r.report, r.metric
    print(f"pruned {report.pruned} of {report.total} weights by {r.criterion} ({r.scope}): "
          f"sparsity {report.sparsity:.4f}; wrote {r.written}")
    for name, why in report.skipped.items():
        print(f"  skipped {name}: {why}")
    print(f"  exact path-metric d = {_fmt(metric.upper_log10)}: for every input with ‖x‖_∞ ≤ {r.input_linf:g}, "
          f"the outputs moved by at most {_fmt(metric.bound_log10(r.input_linf))} in ℓ1")
    if r.accuracy is not None:
        print(f"  top-1 accuracy {r.accuracy[0]:.4f} → {r.accuracy[1]:.4f}")


def _speed(before: float, after: float) -> str:
    """``speed-up 1.40×`` when ``after`` is the shorter time, ``slower 1.19×`` when it is the longer."""
    if after < before:
        return f"speed-up {before / after:.2f}×"
    return f"slower {after / before:.2f}×" if after > before else "same time"


def _print_channel_pruning(report, quiet: bool = False) -> None:
    r = report.record
    g, m = r["groups"], r["metric"]
    print(f"removed {g['removed']} of {g['removable']} removable channel groups ({r['channels_removed']} channels) by "
          f"{r['criterion']} ({r['scope']}, {r['ranking']}, {r['steps']} step(s); {r['achieved']:.1%} of the {r['target']}); "
          f"{g['total'] - g['removable']} kept; "
          f"wrote {r['written']}"
          + (f" and {r['masked']}" if r["masked"] else ""))
    for row in [] if quiet else r["pinned"][:10]:
        print(f"  kept {row['groups']} group(s): {row['reason']}")
    print(f"  parameters {r['params_before']} → {r['params_after']} ({r['params_after'] / max(r['params_before'], 1):.1%}), "
          f"MACs {r['macs_before']} → {r['macs_after']} ({r['macs_after'] / max(r['macs_before'], 1):.1%})")
    if quiet:
        print(f"    (the table of {len(r['layers'])} layers left out: --quiet)")
    for row in [] if quiet else r["layers"]:
        print(f"    {row['node']!r:40} {row['op']:18s} params {row['params_before']:>9} → {row['params_after']:<9} "
              f"MACs {row['macs_before']:>11} → {row['macs_after']}")
    print(f"  slim model = masked model to {r['slim_vs_masked_max_rel_error']:.2g} (max relative error, random inputs)")
    d_log10 = m["upper_log10"] if m["upper_log10"] is not None else -math.inf
    print(f"  {'exact ' if m['exact'] else ''}path-metric d(original, masked) ≤ {_fmt(d_log10)}: "
          f"for every input with ‖x‖_∞ ≤ {m['input_linf']:g}, the outputs moved by at most {m['bound']:.6g} in ℓ1")
    before, after, repeats = r["latency_before_s"], r["latency_after_s"], r["latency_repeats"]
    if before is None or after is None:
        print("  latency: n/a (onnxruntime cannot run this model)")
    else:
        print(f"  latency (onnxruntime, 1 thread, median of {repeats}): {before * 1e3:.3f} ms → "
              f"{after * 1e3:.3f} ms ({_speed(before, after)})")
    if "accuracy_before" in r:
        print(f"  top-1 accuracy {r['accuracy_before']:.4f} → {r['accuracy_after']:.4f}")
    for warning in r["warnings"]:
        print(f"  warning: {warning}")
    if "recovery" in r:
        _print_recovery(r["recovery"], m)


def _print_recovery(rec: dict, metric: dict) -> None:
    exact = "the pruning-exact case" if metric["exact"] else "not the pruning-exact case"
    if rec["data_aware_scores"]:
        print("  scores: path mass weighted by the activations seen on the calibration samples (data-aware)")
    print(f"  recovered from {rec['samples']} calibration samples: {rec['refit']} layer(s) re-fitted by least squares, "
          f"{rec['shifted']} bias-shifted; the certificate above is for the recovered model ({exact}, route "
          f"{metric['route']})")
    for name, table in (("calibration", rec["calibration"]), ("eval", rec["eval"])):
        if table is None:
            continue
        for k in ("pruned", "recovered"):
            row = table[k]
            top1 = f"top-1 {row['top1']:.4f} (original {table['original']['top1']:.4f}), " if "top1" in row else ""
            print(f"    {name:11s} {k:9s}: {top1}output error {row['output_rel_error']:.4g} (relative), "
                  f"{row['output_mean_l1']:.4g} (mean ℓ1)")


def cmd_prune(args) -> int:
    from .prune import prune_channel_groups, prune_weights

    common = {"criterion": args.criterion, "scope": args.scope, "input_linf": args.input_linf, "eval_data": args.eval,
              **_model_args(args)}
    if args.structure == "channel":
        if args.mask:
            raise UsageError("--mask goes with --structure weight")
        report = prune_channel_groups(args.model, args.sparsity, args.out, masked_out=args.masked, repeats=args.repeats,
                                      target=args.target, round_to=args.round_to, min_keep=args.min_keep,
                                      layers=args.layers, ranking=args.ranking, steps=args.steps,
                                      calibration=args.calibration, **common)
        _show(args, report, lambda r: _print_channel_pruning(r, args.quiet))
        return 0
    if args.calibration:
        raise UsageError("--calibration goes with --structure channel")
    if args.masked or args.target != "groups" or {args.round_to, args.min_keep, args.ranking, args.steps} != {None}:
        raise UsageError("--masked, --target, --round-to, --min-keep, --ranking and --steps go with --structure channel")
    report = prune_weights(args.model, args.sparsity, args.out, layers=args.layers, mask_out=args.mask, **common)
    _show(args, report, _print_weight_pruning)
    return 0


def _print_rescale(r) -> None:
    print(f"rescaled {r.neurons} neurons in {r.layers} layers (λ log-uniform in [{r.low:g}, {r.high:g}], seed "
          f"{r.seed}); outputs unchanged to {r.max_rel_output_change:.2g}; wrote {r.written}")
    if r.note:
        print(f"  note: {r.note}")


def cmd_rescale(args) -> int:
    from .api import rescale_model

    lo, hi = args.range
    _show(args, rescale_model(args.model, args.out, seed=args.seed, low=lo, high=hi, **_model_args(args)), _print_rescale)
    return 0


def _print_inspection(r) -> None:
    """The inspection report, one line per print: a newline inside a model-supplied name is escaped."""

    def print(line: str) -> None:
        builtins.print(terminal(line))

    print(f"{r.model}: {r.status}; opset {', '.join(f'{d} {v}' for d, v in r.opset.items())}; "
          f"producer {r.producer or '(none)'}; IR version {r.ir_version}")
    print(f"  {r.nodes} nodes: " + ", ".join(f"{op} {n}" for op, n in r.node_counts.items()))
    print(f"  inputs (declared): {r.graph_inputs}; outputs: {r.graph_outputs}")
    if r.input_shapes:
        batch = ", ".join(f"{k} {b['size']} (declared {b['declared']})" for k, b in r.batch.items())
        print(f"  analysed input shapes: {r.input_shapes}" + (f"; batch: {batch}" if batch else ""))
    if r.analysed_outputs:
        print(f"  analysed outputs: {r.analysed_outputs}")
    if r.layers:
        what = f"{r.parameters} parameters" if r.parameters is not None else "parameters: n/a (refused)"
        print(f"  {r.layers} layers{' (imported before the refusal)' if r.status != 'ok' else ''}, {what}: "
              + ", ".join(f"{k} {n}" for k, n in r.layer_kinds.items()))
    if r.folded.get("nodes"):
        print(f"  folded {r.folded['nodes']} constant-valued node(s): "
              + ", ".join(f"{op} {n}" for op, n in r.folded["ops"].items()))
        for note in r.folded["notes"]:
            print(f"    {note}")
    for c in r.cut:
        chain = " → ".join(f"{op} {name!r}" for op, name in c["nodes"])
        print(f"  cut at output {c['output']!r}: {chain}; analysing {c['analysed']!r}")
    for d in r.dropped:
        print(f"  dropped output {d['output']!r} ({d['tensor']!r}): {d['reason']}")
    if r.imported:
        print("  imported:")
        for i in r.imported:
            layers = ", ".join(f"{sig} ×{n}" if n > 1 else sig for sig, n in i.layers.items())
            print(f"    {i.op_type} ×{i.nodes} → {layers}" + (f"  [{i.how}: {i.note}]" if i.note else ""))
    if r.unreached:
        print("  not reached by any analysed output: " + ", ".join(f"{op} {n}" for op, n in r.unreached.items()))
    if r.refusals:
        print(f"  {len(r.refusals)} refused node(s):")
        for ref in r.refusals:
            print(f"    - {ref}")
        if r.blocked:
            print("  not imported (behind a refused node): " + ", ".join(f"{op} {n}" for op, n in r.blocked.items()))
        if r.analysable_outputs:
            print("  analysable instead (the nearest tensors before the refusal): "
                  + " ".join(f"--output {o}" for o in r.analysable_outputs))
    for note in r.notes:  # the cuts and the folding are listed above
        if not note.startswith(("cut ", "folded ")):
            print(f"  note: {note}")


def cmd_inspect(args) -> int:
    from .inspect import inspect_model

    report = inspect_model(args.model, _input_shape(args.input_shape), args.output or None, name=str(args.model))
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
    return 0 if err is None else err.exit_code


def cmd_audit(args) -> int:
    from .audit import run_command

    _check_q(args.q or [])
    return run_command(args.paths, q=args.q, input_shape=_input_shape(args.input_shape), jobs=args.jobs,
                       timeout=args.timeout, memory_mb=args.max_memory, db=args.db, html=args.report, csv=args.csv,
                       as_json=args.json, scheduler=args.scheduler, fail_on=args.fail_on)


def _common(sp: argparse.ArgumentParser) -> None:
    """The model argument and the options of every single-model command."""
    sp.add_argument("model", help="path to an .onnx file")
    sp.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                    help=f"static input shape (needed for symbolic dimensions other than the batch): {SHAPE_FORMS}")
    sp.add_argument("--output", action="append", metavar="NAME", help="tensor to analyse (repeatable)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--quiet", action="store_true",
                    help="text output: the summary lines only, without the per-layer / per-tensor tables")
    _max_file_size(sp)


def _max_file_size(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--max-file-size", type=float, metavar="MB",
                    help=f"largest model file read, in MiB (default {prefetch.DEFAULT_MAX_FILE_MB}, protobuf's own limit; "
                         f"also ${prefetch.FILE_LIMIT_VARIABLE}); a larger one is refused before it is read (exit 4)")


def _provider(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")


def _add_norm(n: argparse.ArgumentParser) -> None:
    n.add_argument("-q", type=float, action="append", help="norm exponent q ≥ 1, or inf for the largest path product (repeatable; default 1 and 2)")
    _provider(n)
    n.add_argument("--verify", action="store_true", help="also run the re-emission check")


def _add_lift(lf: argparse.ArgumentParser) -> None:
    lf.add_argument("-q", type=float, action="append",
                    help="norm exponent q ≥ 1, or inf for the largest path product (default 1; one q: lift writes one network)")
    lf.add_argument("-o", "--out", required=True, help="where to write the lifted model")


def _add_compare(c: argparse.ArgumentParser) -> None:
    c.add_argument("other", help="the second .onnx file (same architecture)")
    c.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="inputs with ‖x‖_∞ ≤ R (default 1)")
    c.add_argument("--check", type=int, default=0, metavar="N",
                   help="also run both models on N random inputs in the box, then N steps of a search for the largest change")
    _provider(c)


def _add_scores(sc: argparse.ArgumentParser) -> None:
    sc.add_argument("-o", "--out", help="write the scores (fractions of ‖Φ‖_1) to this .npz")
    _provider(sc)


def _add_prune(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--sparsity", type=float, required=True,
                    help="fraction of the scored weights to zero (--structure channel: of the removable channel groups)")
    pr.add_argument("--structure", default="weight", choices=["weight", "channel"],
                    help="weight: zero single weights (default); channel: remove whole channels, write a smaller model")
    pr.add_argument("--criterion", choices=["path-magnitude", "magnitude", "path-mass", "l1-norm"],
                    help="weight: path-magnitude (default) or magnitude; channel: path-mass (default) or l1-norm")
    pr.add_argument("--masked", metavar="MASKED.onnx",
                    help="--structure channel: also write the masked model (removed channels' outgoing weights zeroed)")
    pr.add_argument("--repeats", type=int, default=20, help="--structure channel: latency runs per model (median)")
    pr.add_argument("--scope", default="global", choices=["global", "layer"],
                    help="global: the lowest-scored weights (or channel groups) over all tensors together; layer: the same fraction in each tensor")
    pr.add_argument("--layers", metavar="REGEX",
                    help="only the weight tensors whose name matches (channel: the groups whose tensors or writing weights match)")
    pr.add_argument("--target", default="groups", choices=["groups", "params", "macs", "latency"],
                    help="--structure channel: what --sparsity is a fraction of: removable groups (default), parameters, "
                         "MACs, or onnxruntime latency (per-node kernel times of the original, scaled by the work kept)")
    pr.add_argument("--round-to", type=int, metavar="N",
                    help="--structure channel: keep a multiple of N channels per layer (default 8, measured: docs/pruning.md)")
    pr.add_argument("--ranking", choices=["raw", "normalised"],
                    help="--structure channel: rank raw scores or scores divided by their layer's mean "
                         "(default: raw for path-mass, normalised for l1-norm)")
    pr.add_argument("--steps", type=int, metavar="K", help="--structure channel: remove in K steps, path mass "
                    "recomputed on the masked model after each (default 8 for path-mass, 1 for l1-norm)")
    pr.add_argument("--min-keep", type=float, metavar="F",
                    help="--structure channel: each layer keeps at least max(N, ⌈F·width⌉) channels (default 0.1)")
    pr.add_argument("-o", "--out", required=True, help="where to write the pruned model")
    pr.add_argument("--mask", help="also write the keep-masks (.npz keyed by initializer name)")
    pr.add_argument("--eval", metavar="DATA.npz", help="arrays x, y: top-1 accuracy before and after")
    pr.add_argument("--calibration", metavar="DATA.npz",
                    help="--structure channel: arrays x (optional y): path-mass weighted by the activations seen, and the "
                         "slim model re-fitted to reproduce the original's outputs (least squares, no training)")
    pr.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="certify inputs with ‖x‖_∞ ≤ R")


def _add_rescale(rs: argparse.ArgumentParser) -> None:
    rs.add_argument("--seed", type=int, default=0, help="seed of the random scale factors (and of the check's inputs)")
    rs.add_argument("--range", type=float, nargs=2, default=[1 / 8, 8.0], metavar=("LO", "HI"),
                    help="each hidden neuron's factor λ is drawn log-uniformly in [LO, HI]")
    rs.add_argument("-o", "--out", required=True, help="where to write the rescaled model")


def _add_audit(au: argparse.ArgumentParser) -> None:
    au.add_argument("paths", nargs="+", metavar="PATH", help="an .onnx file, a folder (searched recursively) or a glob")
    au.add_argument("-q", type=float, action="append", metavar="Q", help="norm exponent q ≥ 1 (repeatable; default 1, 2 and 4)")
    au.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                    help=f"static input shape for every model: {SHAPE_FORMS}")
    au.add_argument("--jobs", type=int, help="local worker processes (default: one per CPU)")
    au.add_argument("--timeout", type=float, metavar="S",
                    help="seconds per model before its worker is killed (default: none, no time limit)")
    au.add_argument("--max-memory", type=float, metavar="MB",
                    help="memory cap per worker process (its data segment, imports included: ~150 MB); a model "
                         "needing more fails with 'out of memory' and the audit goes on; rerun those with a larger "
                         "cap (default: none, no cap)")
    au.add_argument("--db", help="SQLite results database (default: beside --report, else audit.sqlite)")
    au.add_argument("--report", metavar="REPORT.html", help="write a self-contained HTML report")
    au.add_argument("--csv", metavar="OUT.csv", help="write one CSV row per model")
    au.add_argument("--json", action="store_true", help="print JSON Lines (one object per model) on stdout")
    au.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at tcp://HOST:PORT")
    _max_file_size(au)
    au.add_argument("--fail-on", metavar="STATUS[,STATUS]",
                    help=f"exit with code {FAIL_ON_EXIT} when any model ends in one of these statuses (ok, unsupported, invalid, error, "
                         "timeout; oom: an out-of-memory error), e.g. error,timeout,invalid to gate CI")


def _no_options(sp: argparse.ArgumentParser) -> None:
    """A command with only the common options."""


#: each command: (help, whether it takes one model and the common options, its own options, what runs it)
COMMANDS = {
    "norm": ("Lq path-norms of a model", True, _add_norm, cmd_norm),
    "lift": ("write the lifted |W|^q network as an ONNX file", True, _add_lift, cmd_lift),
    "compare": ("path-metric between two same-architecture models and the certified output-change bound", True,
                _add_compare, cmd_compare),
    "lipschitz": ("input-space Lipschitz bound ‖Φ_in‖_1 (ℓ∞ → ℓ1)", True, _provider, cmd_lipschitz),
    "scores": ("path-magnitude scores of every Conv/Gemm/MatMul weight", True, _add_scores, cmd_scores),
    "prune": ("prune weights or whole channels by path-magnitude (or magnitude / L1) and certify the output change",
              True, _add_prune, cmd_prune),
    "rescale": ("random neuron-wise rescaling that keeps the function", True, _add_rescale, cmd_rescale),
    "inspect": ("what the importer sees: op and layer counts, folded, decomposed, cut, refused", True, _no_options,
                cmd_inspect),
    "audit": ("audit many models (files, folders, globs) in isolated workers; resumable", False, _add_audit, cmd_audit),
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnx-pathlift", description="Path-norms of ONNX ReLU networks, computed in onnxruntime.",
                formatter_class=_HelpFormatter, epilog="examples:\n  " + "\n  ".join(
                    ["onnx-pathlift COMMAND --help   (options, defaults and an example of each command)", *(
                        EXAMPLES[c].split("\n")[0] for c in ("norm", "inspect", "audit"))]))
    p.add_argument("--version", action="version", version=f"onnx-pathlift {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (text, single_model, options, run) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter,
                            epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))
        if single_model:
            _common(sp)
        options(sp)
        sp.set_defaults(func=run)
    return p


def _check_q(qs: list[float]) -> None:
    for q in qs:
        if not q >= 1:  # NaN fails too; inf is the largest path product
            raise UsageError(f"q must be a number ≥ 1, or inf (got {q})")


def _not_a_folder(args) -> None:
    """A single-model command given a folder says so (and names the command for folders)."""
    for path in (getattr(args, "model", None), getattr(args, "other", None)):
        if isinstance(path, str) and os.path.isdir(path):
            raise UsageError(f"{path} is a folder: {args.command} reads one .onnx file (`onnx-pathlift audit "
                             f"{path}` analyses every model in a folder)")


def _run(args) -> int:
    """The command, its text output escaped for the terminal (``--json`` output is escaped by json.dumps);
    a model file is read on a thread while the command imports its analyses (:mod:`onnx_pathlift.prefetch`)."""
    saved = os.environ.get(prefetch.FILE_LIMIT_VARIABLE)
    if args.max_file_size is not None:
        if not args.max_file_size > 0:
            raise UsageError(f"--max-file-size must be a positive number of MiB (got {args.max_file_size})")
        os.environ[prefetch.FILE_LIMIT_VARIABLE] = repr(args.max_file_size)  # the audit's workers inherit it
    if isinstance(getattr(args, "model", None), str):
        prefetch.start(args.model)
    try:
        if args.json:
            return args.func(args)
        with contextlib.redirect_stdout(_TerminalSafe(sys.stdout)):
            return args.func(args)
    finally:
        prefetch.forget()
        if saved is None:
            os.environ.pop(prefetch.FILE_LIMIT_VARIABLE, None)
        else:
            os.environ[prefetch.FILE_LIMIT_VARIABLE] = saved


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as on Ctrl-C (an audit keeps its results)."""


def _terminate(signum: int, frame) -> None:
    raise Terminated


def _quiet_stdout() -> int:
    """stdout's reader went away (``| head -1``): point stdout at /dev/null so that nothing more fails;
    the exit code of a process killed by SIGPIPE (128 + 13)."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor (captured) needs nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in argv  # usage errors honour --json too
    if hasattr(signal, "SIGXFSZ"):  # past a file size limit (ulimit -f), a write fails (exit 6) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args = build_parser().parse_args(argv)
        json_mode = args.json
        _not_a_folder(args)
        code = _run(args)
        sys.stdout.flush()  # a closed pipe fails here, not at the interpreter's exit
        return code
    except PathliftError as err:
        return _fail(err, json_mode, argv)
    except BrokenPipeError:
        return _quiet_stdout()
    except Terminated:
        print("onnx-pathlift: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("onnx-pathlift: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # an allocation failed (a model too large for this machine or its memory limit)
        return _fail(OutOfMemoryError("out of memory: the model needs more memory than this process may use"), json_mode)
    except Exception as err:  # anything unexpected: one clear line, exit 1, no traceback
        if isinstance(err, OSError) and err.filename is not None:  # a file it names cannot be read (--eval DATA.npz)
            return _fail(UsageError(f"{err.filename}: cannot read: {err.strerror or err}"), json_mode)
        print(f"onnx-pathlift: internal error: {type(err).__name__}: {terminal(err)}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
