"""The text forms of the reports (model-supplied strings reach the terminal escaped)."""

from __future__ import annotations

import builtins
import math

from ..analyses import fmt as _fmt
from ..errors import PathliftError
from ..sanitise import terminal


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
    import shlex  # here: a refusal's suggestion only (norm's start-up does without it)

    return shlex.join(["onnx-pathlift", *kept, *(x for o in outputs for x in ("--output", o))])


def _print_norms(r) -> None:
    d = r.to_dict()
    print(f"{r.model}: {r.dag.n_params} parameters, input {d['input_shapes']}, outputs {d['outputs']}")
    for note in r.dag.notes:
        print(f"  note: {note}")
    for n in r.norms:
        if n.reason is None:
            print(f"  L{n.q:g} path-norm = {_fmt(n.log10)}  (log10 = {n.log10:.9g})")
        else:  # no point value: only the interval is certified
            print(f"  L{n.q:g} path-norm: no value ({n.reason})")
        if not n.certified:
            print(f"    not certified: float32 underflow may have lost mass; the true value lies in "
                  f"[{_fmt(n.lower_log10)}, {_fmt(n.upper_log10)}]")
        elif n.fallback is not None:
            print(f"    certified by the exact {n.fallback} fallback (float32 underflow had lost mass)")
    if r.verify is not None:
        v = r.verify
        print(f"  re-emission check {'passed' if v.passed else 'FAILED'}: max relative error "
              f"{max(v.max_rel_error.values()):.3g} (tolerance {v.rtol:g}, {v.trials} random inputs)")


def _print_lift(r) -> None:
    """Where the lifted network went and a recipe that reads the norm off it (run as printed: tested)."""
    import shlex  # here: norm's start-up does without it

    from ..backend.emit import LOG2_SUFFIX
    from ..backend.norm import Q_INF

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
                print(f"    {p['node']!r} on {p['layer']!r}: {p['term'] / cert.activation.term:.1%} "
                      f"({p['term']:.6g}, ε ≤ {p['epsilon_max']:.3g}, {how})")
    if not quiet:
        _print_shares(metric)


def _print_shares(metric, top: int = 10) -> None:
    """Each layer's exact part of the certified upper bound, largest first."""
    from ..analyses.metric import MAX_SHARE_PASSES

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
    from ..rewrite.canonical import summary

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


def _print_weight_pruning(r, quiet: bool = False) -> None:
    report, metric = r.report, r.metric
    print(f"pruned {report.pruned} of {report.total} weights by {r.criterion} ({r.scope}): "
          f"sparsity {report.sparsity:.4f}; wrote {r.written}")
    for name, why in report.skipped.items():
        print(f"  skipped {name}: {why}")
    if quiet:
        print(f"    (the table of {len(r.layers)} layers left out: --quiet)")
    for row in [] if quiet else r.layers:
        print(f"    {row['layer']!r:40} zeros {row['zeros']:>9} of {row['size']:<9} ({row['zeros'] / max(row['size'], 1):.1%})")
    print(f"  exact path-metric d = {_fmt(metric.upper_log10)}: for every input with ‖x‖_∞ ≤ {r.input_linf:g}, "
          f"the outputs moved by at most {_fmt(metric.bound_log10(r.input_linf))} in ℓ1")
    print(f"    {_scale(metric.upper_log10, metric.norm_a_log10)}")
    if r.accuracy is not None:
        print(f"  top-1 accuracy {r.accuracy[0]:.4f} → {r.accuracy[1]:.4f}")
        _print_observed(r.observed, metric.bound_log10(r.input_linf), r.input_linf)


def _scale(d_log10: float, norm_log10: float) -> str:
    """The certificate's scale: ``d`` as a fraction of ``‖Φ‖_1``, which bounds the outputs themselves."""
    if not math.isfinite(norm_log10) or d_log10 == -math.inf:
        return "(the outputs did not move: d = 0)" if d_log10 == -math.inf else ""
    return (f"scale: d is {10 ** (d_log10 - norm_log10):.3g} of ‖Φ(original)‖_1 = {_fmt(norm_log10)}, which bounds the "
            "outputs themselves (‖R(x)‖_1 ≤ max(‖x‖_∞, 1)·‖Φ‖_1): a worst case over the whole box, usually far above "
            "the change on real inputs")


def _print_observed(observed: dict, bound_log10: float, r: float) -> None:
    """The change seen on the --eval samples, beside the certified worst case."""
    seen, inside = observed["max_l1"], observed["max_input_linf"] <= r
    ratio = f"; the bound is {10 ** (bound_log10 - math.log10(seen)):.3g}× that" if seen > 0 and math.isfinite(bound_log10) else ""
    print(f"  observed on the {observed['samples']} --eval samples: the outputs moved by at most {seen:.6g} in ℓ1{ratio} "
          + ("(samples inside the certified box)" if inside else
             f"(samples reach ‖x‖_∞ = {observed['max_input_linf']:g}, outside the box ‖x‖_∞ ≤ {r:g}: --input-linf to cover them)"))


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
        print(f"    {row['layer']!r:40} {row['op']:18s} params {row['params_before']:>9} → {row['params_after']:<9} "
              f"MACs {row['macs_before']:>11} → {row['macs_after']}")
    print(f"  slim model = masked model to {r['slim_vs_masked_max_rel_error']:.2g} (max relative error, random inputs)")
    if m is None:
        print(f"  no certificate: {r['metric_reason']}")
    else:
        d_log10 = m["upper_log10"] if m["upper_log10"] is not None else -math.inf
        print(f"  {'exact ' if m['exact'] else ''}path-metric d(original, masked) ≤ {_fmt(d_log10)}: "
              f"for every input with ‖x‖_∞ ≤ {m['input_linf']:g}, the outputs moved by at most {m['bound']:.6g} in ℓ1")
        if m["norm_a_log10"] is not None:
            print(f"    {_scale(d_log10, m['norm_a_log10'])}")
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
        _print_recovery(r["recovery"], m, r["criterion"])


#: what data-aware scores are, per criterion
_DATA_AWARE = {"path-mass": "path mass weighted by the activations seen on the calibration samples (data-aware)",
               "reconstruction": "the change each removal makes to the next layers' outputs on the calibration samples "
                                 "(reconstruction)"}


def _print_recovery(rec: dict, metric: dict | None, criterion: str) -> None:
    if rec["data_aware_scores"]:
        print(f"  scores: {_DATA_AWARE[criterion]}")
    if metric is None:
        certificate = "no certificate (above)"
    else:
        exact = "the pruning-exact case" if metric["exact"] else "not the pruning-exact case"
        certificate = f"the certificate above is for the recovered model ({exact}, route {metric['route']})"
    print(f"  recovered from {rec['samples']} calibration samples: {rec['refit']} layer(s) re-fitted by least squares, "
          f"{rec['shifted']} bias-shifted; {certificate}")
    for name, table in (("calibration", rec["calibration"]), ("eval", rec["eval"])):
        if table is None:
            continue
        for k in ("pruned", "recovered"):
            row = table[k]
            top1 = f"top-1 {row['top1']:.4f} (original {table['original']['top1']:.4f}), " if "top1" in row else ""
            print(f"    {name:11s} {k:9s}: {top1}output error {row['output_rel_error']:.4g} (relative), "
                  f"{row['output_mean_l1']:.4g} (mean ℓ1)")


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
    print(f"  analyse (path-norms, scores, certificates): {'yes' if r.analysable else 'no (refused above)'}")
    print(f"  channel-prune: {_channel_readiness(r.channel_pruning)}")


def _channel_readiness(c: dict) -> str:
    """One line: whether ``prune --structure channel`` can remove groups, by which criterion, certified or not."""
    if "reason" in c:
        return f"no ({c['reason']})"
    kept = "; ".join(f"{k['groups']} kept: {k['reason']}" for k in c["kept"])
    if not c["prunable"]:
        return f"no: none of its {c['groups']} channel groups is removable ({kept})"
    how = (f"by l1-norm ({c['criterion_reason']}); no certificate" if "criterion_reason" in c
           else "by path-mass, certified by the path-metric")
    return f"yes, {c['removable']} of {c['groups']} channel groups removable, {how}"
