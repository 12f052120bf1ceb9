"""The ``onnx-pathlift`` command line: argument parsing and printing only.

Exit codes: 0 ok, 1 anything else, 2 usage, 3 unsupported operators, 4 unreadable or invalid model,
6 an output could not be written.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .atomic import refuse_overwriting_input, write_bytes, write_with
from .errors import CertificateViolation, PathliftError, UsageError, VerificationError
from .sanitise import terminal

# The analyses (numpy, onnx, onnxruntime, networkx) are imported by the commands that use them: the
# audit's parent process needs none of them, so its workers start sooner.

_JSON_MODE = False  # set by main() before parsing, so usage errors honour --json


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
    def error(self, message: str):  # usage errors exit 2 with one clear line
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(UsageError(message), json_mode=_JSON_MODE))


def _fail(err: PathliftError, json_mode: bool) -> int:
    if json_mode:
        print(json.dumps(err.to_dict(), indent=2))
    else:
        print(f"onnx-pathlift: error: {terminal(err, keep_newlines=True)}", file=sys.stderr)
    return err.exit_code


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


def _load(args, path=None):
    from .importer import import_prepared
    from .load import load_model
    from .prepare import prepare

    t0 = time.perf_counter()
    model = load_model(path or args.model)
    prepared = prepare(model, _input_shape(args.input_shape))
    dag = import_prepared(prepared, args.output or None)
    return model, prepared, dag, time.perf_counter() - t0


def _fmt(log10: float) -> str:
    if log10 == -math.inf:
        return "0"
    if log10 < 300:
        return f"{10 ** log10:.6g}"
    return f"10^{log10:.6f}"


def cmd_norm(args) -> int:
    from .norm import LiftedSession

    model, prepared, dag, t_import = _load(args)
    t0 = time.perf_counter()
    session = LiftedSession([(dag, q) for q in args.q], args.provider)  # every q: one lifted model, one pass
    t1 = time.perf_counter()
    norms = session.norms()
    timings = {"import_s": t_import, "session_s": t1 - t0, "run_s": time.perf_counter() - t1}
    report = None
    if args.verify:
        from .verify import verify

        report = verify(model, dag, prepared.elem_types, providers=args.provider, raise_on_failure=False)
    result = {
        "model": str(args.model),
        "input_shapes": {k: list(v) for k, v in dag.input_shapes().items()},
        "outputs": list(dag.outputs),
        "notes": dag.notes,
        "parameters": dag.n_params,
        "layers": dag.kind_counts(),
        "provider": args.provider,
        "norms": [n.to_dict() for n in norms],
        "timings": timings,
    }
    if report is not None:
        result["verify"] = report.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: {dag.n_params} parameters, input {result['input_shapes']}, outputs {result['outputs']}")
        for note in dag.notes:
            print(f"  note: {note}")
        for n in norms:
            print(f"  L{n.q:g} path-norm = {_fmt(n.log10)}  (log10 = {n.log10:.9g})")
            if not n.certified:
                print(f"    not certified: float32 underflow may have lost mass; the true value lies in "
                      f"[{_fmt(n.lower_log10)}, {_fmt(n.upper_log10)}]")
        if report is not None:
            status = "passed" if report.passed else "FAILED"
            print(f"  re-emission check {status}: max relative error {max(report.max_rel_error.values()):.3g} "
                  f"(tolerance {report.rtol:g}, {report.trials} random inputs)")
    return 0 if report is None or report.passed else 1


def _save_model(model, out: str) -> None:
    """Write an ONNX model atomically (the target is replaced only once the whole file is written)."""
    write_bytes(out, model.SerializeToString())


def _save_npz(path: str, arrays: dict) -> None:
    """Write exactly ``path`` (np.savez would append .npz to a str path), atomically."""
    import numpy as np

    write_with(path, lambda f: np.savez_compressed(f, **arrays))


def cmd_lift(args) -> int:
    refuse_overwriting_input(args.out, args.model)
    _, _, dag, _ = _load(args)
    import onnx

    from .audit.files import task_for
    from .emit import LOG2_SUFFIX, describe_lifted
    from .norm import PathNormSession

    session = PathNormSession(dag, args.q, per_sample=False)  # static scales if their budget certifies them, else dynamic
    norm = session.run()
    model = describe_lifted(session.model, dag, args.q, session.static, task_for(args.model).sha256)
    onnx.checker.check_model(model)
    out = Path(args.out)
    _save_model(model, str(out))
    info = {"written": str(out), "q": args.q, "scales": "static" if session.static else "dynamic",
            "inputs": {k: list(v) for k, v in dag.input_shapes().items()},
            "outputs": [[o, o + LOG2_SUFFIX] for o in dag.outputs], "norm": norm.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"wrote the lifted network (q={args.q:g}, {info['scales']} scales) to {out}")
        print(f"run it with all-ones inputs; each analysed output o comes with an exponent o{LOG2_SUFFIX} (float64,")
        print("broadcastable to o: one per channel or neuron with static scales), and")
        print(f"  ||Phi||_q^q = sum over outputs o of  sum(o * 2**o{LOG2_SUFFIX})     (here: log10 {_fmt(norm.log10 * args.q)})")
        outs = ", ".join(repr(o) for o in dag.outputs)
        print("e.g.  python -c \"import onnxruntime as rt, numpy as np; s = rt.InferenceSession('%s'); "
              "r = dict(zip([o.name for o in s.get_outputs()], s.run(None, {i.name: np.ones(i.shape, np.float32) "
              "for i in s.get_inputs()}))); print(sum(float((r[o] * np.exp2(r[o + '%s'])).sum()) for o in [%s]) "
              "** (1 / %g))\"" % (out, LOG2_SUFFIX, outs, args.q))
    return 0


def cmd_compare(args) -> int:
    from .metric import check_bound, comparable, path_metric
    from .quant_bound import certify

    a_model, a_prep, dag_a, _ = _load(args, args.model)
    b_model, b_prep, dag_b, _ = _load(args, args.other)
    dag_a, dag_b, _, canon_a, canon_b = comparable(dag_a, dag_b)  # says where the architectures differ before any work
    metric = path_metric(dag_a, dag_b, providers=args.provider, breakdown=True)
    r = args.input_linf
    cert = certify(dag_a, dag_b, metric.bound_log10(r), r, providers=args.provider)
    result = {"a": str(args.model), "b": str(args.other), **metric.to_dict(r), **cert.to_dict(),
              "activation_quantization_in_b": dag_b.activation_qdq, "notes_b": dag_b.notes,
              "canonicalised": {"a": canon_a, "b": canon_b} if canon_a or canon_b else None}
    check = None
    if args.check:
        check = check_bound(a_model, b_model, dag_a, dag_b, metric, r, args.check, a_prep.elem_types,
                            b_prep.elem_types, providers=args.provider, search=args.check,
                            activation=cert.activation.term)
        result["check"] = check.to_dict()
    violation = None
    if check is not None and check.violated:
        violation = CertificateViolation(
            f"observed output change {check.max_observed:.6g} (models as shipped: {check.shipped_max_observed}) EXCEEDS "
            f"the certified bound {check.bound} (total: {check.shipped_bound}): this is a bug (in onnx-pathlift or in "
            "the theorem's preconditions); please report it with both models")
        result["error"] = violation.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"path-metric d(A, B) = ‖Φ(A) − Φ(B)‖_1 between {args.model} and {args.other}:")
        print(f"  lower {_fmt(metric.lower_log10)}   upper {_fmt(metric.upper_log10)}"
              + ("   (exact: |B| ≤ |A| or |B| ≥ |A| everywhere)" if metric.exact else ""))
        print(f"  ‖Φ(A)‖_1 = {_fmt(metric.norm_a_log10)}, ‖Φ(B)‖_1 = {_fmt(metric.norm_b_log10)}")
        _print_canonical(canon_a, canon_b)
        if metric.sign_consistent and metric.route != "direct":
            print(f"  upper through an intermediate model (route {metric.route}), below the direct two-stream "
                  f"bound {_fmt(metric.routes['direct'])}")
        if not metric.sign_consistent:
            bad = [s for s in metric.signs if s.violations]
            routes = ", ".join(f"{k} {_fmt(v)}" for k, v in metric.routes.items())
            print(f"  {sum(s.violations for s in bad)} parameter(s) change sign, in {len(bad)} layer(s); the bound goes "
                  f"through an intermediate model (route {metric.route}; routes: {routes}):")
            for s in bad[:20]:
                print(f"    {s.layer!r}: {s.violations} of {s.size}")
        _print_certificate(metric, cert)
        if check is not None:
            ratio = "n/a (no certificate)" if check.ratio is None else f"{check.ratio:.3g} of the bound"
            print(f"  check: largest observed ‖A(x) − B(x)‖_1 over {check.samples} inputs = {check.max_observed:.6g} ({ratio})")
            if check.shipped_max_observed is not None:
                ratio = "" if check.shipped_ratio is None else f" ({check.shipped_ratio:.3g} of the total bound)"
                print(f"  models as shipped (quantized activations): largest observed change {check.shipped_max_observed:.6g}{ratio}")
    if violation is not None:
        print(f"onnx-pathlift: error: {violation}", file=sys.stderr)
        return violation.exit_code
    return 0


def _print_certificate(metric, cert) -> None:
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


def cmd_lipschitz(args) -> int:
    from .lipschitz_bound import lipschitz

    _, _, dag, _ = _load(args)
    bound = lipschitz(dag, providers=args.provider)
    result = {"model": str(args.model), **bound.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: for all inputs x, x':  ‖R(x) − R(x')‖_1 ≤ L · ‖x − x'‖_∞")
        print(f"  L = ‖Φ_in‖_1 = {_fmt(bound.path_norm_log10)}   (paths starting at input neurons)")
        print(f"  naive product of layer ℓ∞ norms × output size = {_fmt(bound.naive_log10)}")
    return 0


def cmd_scores(args) -> int:
    import numpy as np

    from .scores import path_magnitude

    if args.out:
        refuse_overwriting_input(args.out, args.model)
    _, _, dag, _ = _load(args)
    t0 = time.perf_counter()
    scores = path_magnitude(dag, providers=args.provider)
    elapsed = time.perf_counter() - t0
    if args.out:
        _save_npz(args.out, {k: v.astype(np.float32) for k, v in scores.fraction.items()})
    rows = scores.summary()
    total = sum(row["share"] for row in rows)
    for row in rows:  # share: of ‖Φ‖_1, carried by the paths through the tensor; share_of_scores: sums to 1 over tensors
        row["share_of_scores"] = row["share"] / total if total > 0 else 0.0
    summary = {"model": str(args.model), "l1_path_norm_log10": scores.log10_norm, "seconds": elapsed,
               "written": args.out, "tensors": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.model}: path-magnitude scores of {len(scores.fraction)} weight tensors "
              f"(each weight's score as a fraction of ‖Φ‖_1 = {_fmt(scores.log10_norm)}), {elapsed:.3f} s")
        print("  'paths' is the fraction of ‖Φ‖_1 carried by paths through the tensor (a path crosses several tensors, so "
              "these sum to more than 1); 'share' is the tensor's part of all scores (sums to 1)")
        width = max([40, *(len(row["initializer"]) for row in rows)])
        print(f"  {'tensor':{width}s} {'paths':>10s} {'share':>10s} {'median':>10s} {'max':>10s} {'zeros':>15s}")
        for row in rows:
            q = row["quantiles"]
            print(f"  {row['initializer']:{width}s} {row['share']:10.4g} {row['share_of_scores']:10.4g} {q['median']:10.3g} "
                  f"{q['max']:10.3g} {str(row['zeros']) + '/' + str(row['size']):>15s}")
        if args.out:
            print(f"wrote {args.out} (float32 fractions keyed by initializer name)")
    return 0


def _accuracy(model, dag, data) -> float:
    import numpy as np

    from .verify import ModelRunner

    x, y = data["x"], data["y"]
    shape = dag.layer(dag.inputs[0]).shape
    run = ModelRunner(model, [next(iter(dag.outputs))], {})
    pred = [int(np.argmax(run({dag.inputs[0]: xi.reshape(shape).astype(np.float32)})[0])) for xi in x]
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def cmd_prune(args) -> int:
    import numpy as np

    from . import prune
    from .metric import path_metric
    from .scores import magnitude, path_magnitude

    criteria = {"weight": ("path-magnitude", "magnitude"), "channel": ("path-mass", "l1-norm")}[args.structure]
    args.criterion = args.criterion or criteria[0]
    if args.criterion not in criteria:
        raise UsageError(f"--structure {args.structure} takes --criterion {' or '.join(criteria)} (got {args.criterion})")
    refuse_overwriting_input(args.out, args.model)
    for extra in (args.mask, args.masked):
        if extra:
            refuse_overwriting_input(extra, args.model, args.out)
    if not 0.0 <= args.sparsity <= 1.0:
        raise UsageError(f"--sparsity must be in [0, 1] (got {args.sparsity})")
    if args.structure == "channel":
        return _prune_channels(args)
    if args.masked:
        raise UsageError("--masked goes with --structure channel (weight pruning writes its masked model to -o)")
    model, _, dag, _ = _load(args)
    scores = path_magnitude(dag).fraction if args.criterion == "path-magnitude" else magnitude(dag)
    keep = prune.masks(prune.select(scores, args.layers), args.sparsity, args.scope)
    pruned, report = prune.apply(model, keep)
    _save_model(pruned, args.out)
    if args.mask:
        _save_npz(args.mask, {k: v for k, v in keep.items() if k in report.tensors})
    from .importer import import_model

    metric = path_metric(dag, import_model(pruned, _input_shape(args.input_shape)))
    result = {"model": str(args.model), "written": args.out, "criterion": args.criterion, "scope": args.scope,
              "sparsity": report.sparsity, "pruned": report.pruned, "weights": report.total, "tensors": report.tensors,
              "skipped": report.skipped, "metric": metric.to_dict(args.input_linf)}
    if args.eval:
        data = np.load(args.eval)
        result["accuracy_before"], result["accuracy_after"] = _accuracy(model, dag, data), _accuracy(pruned, dag, data)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"pruned {report.pruned} of {report.total} weights by {args.criterion} ({args.scope}): "
              f"sparsity {report.sparsity:.4f}; wrote {args.out}")
        for name, why in report.skipped.items():
            print(f"  skipped {name}: {why}")
        print(f"  exact path-metric d = {_fmt(metric.upper_log10)}: for every input with ‖x‖_∞ ≤ {args.input_linf:g}, "
              f"the outputs moved by at most {_fmt(metric.bound_log10(args.input_linf))} in ℓ1")
        if args.eval:
            print(f"  top-1 accuracy {result['accuracy_before']:.4f} → {result['accuracy_after']:.4f}")
    return 0


def _channel_report(args, model, prepared, dag, result) -> dict:
    """The JSON record of ``prune --structure channel``: groups, costs, certificate, accuracy, latency."""
    import numpy as np

    from .importer import import_model
    from .metric import path_metric
    from .prepare import prepare
    from .slim import float_parameters, latency, layer_costs

    slim_prepared = prepare(result.slim, _input_shape(args.input_shape))
    after = {c.node: c for c in layer_costs(slim_prepared)}
    layers = [{"node": c.node, "op": c.op, "params_before": c.params, "params_after": after[c.node].params,
               "macs_before": c.macs, "macs_after": after[c.node].macs} for c in layer_costs(prepared)]
    metric = path_metric(dag, import_model(result.masked, _input_shape(args.input_shape)))  # sound: rounded outward
    removable = result.graph.removable()
    report = {"model": str(args.model), "written": args.out, "masked": args.masked, "structure": "channel",
              "criterion": args.criterion, "scope": args.scope, "sparsity": args.sparsity,
              "groups": {"total": len(result.graph.groups), "removable": len(removable), "removed": len(result.removed)},
              "channels_removed": sum(len(result.graph.groups[i].channels) for i in result.removed),
              "pinned": result.pinned(), "params_before": float_parameters(model),
              "params_after": float_parameters(result.slim), "macs_before": sum(r["macs_before"] for r in layers),
              "macs_after": sum(r["macs_after"] for r in layers), "layers": layers,
              "slim_vs_masked_max_rel_error": result.slim_error, "metric": metric.to_dict(args.input_linf),
              "latency_repeats": args.repeats, "latency_before_s": latency(model, prepared, args.repeats),
              "latency_after_s": latency(result.slim, slim_prepared, args.repeats)}
    if args.eval:
        data = np.load(args.eval)
        report["accuracy_before"], report["accuracy_after"] = _accuracy(model, dag, data), _accuracy(result.slim, dag, data)
    return report


def _prune_channels(args) -> int:
    from .slim import prune_channels

    if args.mask or args.layers:
        raise UsageError("--mask and --layers go with --structure weight")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {args.repeats})")
    model, prepared, dag, _ = _load(args)
    result = prune_channels(model, prepared, dag, args.sparsity, args.criterion, args.scope)
    r = _channel_report(args, model, prepared, dag, result)
    _save_model(result.slim, args.out)
    if args.masked:
        _save_model(result.masked, args.masked)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    g, m = r["groups"], r["metric"]
    print(f"removed {g['removed']} of {g['removable']} removable channel groups ({r['channels_removed']} channels) by "
          f"{args.criterion} ({args.scope}); {g['total'] - g['removable']} kept; wrote {args.out}"
          + (f" and {args.masked}" if args.masked else ""))
    for row in r["pinned"][:10]:
        print(f"  kept {row['groups']} group(s): {row['reason']}")
    print(f"  parameters {r['params_before']} → {r['params_after']} ({r['params_after'] / max(r['params_before'], 1):.1%}), "
          f"MACs {r['macs_before']} → {r['macs_after']} ({r['macs_after'] / max(r['macs_before'], 1):.1%})")
    for row in r["layers"]:
        print(f"    {row['node']!r:40} {row['op']:18s} params {row['params_before']:>9} → {row['params_after']:<9} "
              f"MACs {row['macs_before']:>11} → {row['macs_after']}")
    print(f"  slim model = masked model to {r['slim_vs_masked_max_rel_error']:.2g} (max relative error, random inputs)")
    d_log10 = m["upper_log10"] if m["upper_log10"] is not None else -math.inf
    print(f"  {'exact ' if m['exact'] else ''}path-metric d(original, masked) ≤ {_fmt(d_log10)}: "
          f"for every input with ‖x‖_∞ ≤ {args.input_linf:g}, the outputs moved by at most {m['bound']:.6g} in ℓ1")
    if r["latency_before_s"] is None or r["latency_after_s"] is None:
        print("  latency: n/a (onnxruntime cannot run this model)")
    else:
        print(f"  latency (onnxruntime, 1 thread, median of {args.repeats}): {r['latency_before_s'] * 1e3:.3f} ms → "
              f"{r['latency_after_s'] * 1e3:.3f} ms ({r['latency_after_s'] / r['latency_before_s']:.2f}×)")
    if args.eval:
        print(f"  top-1 accuracy {r['accuracy_before']:.4f} → {r['accuracy_after']:.4f}")
    return 0


def cmd_rescale(args) -> int:
    import numpy as np

    from .rescale import rescale
    from .verify import ModelRunner

    refuse_overwriting_input(args.out, args.model)
    model, _, dag, _ = _load(args)
    lo, hi = args.range
    if not 0 < lo <= hi:
        raise UsageError(f"--range needs 0 < LO ≤ HI (got {lo} {hi})")
    out, report = rescale(model, dag, seed=args.seed, low=lo, high=hi)
    names = list(dag.outputs)
    rng = np.random.default_rng(args.seed)
    feeds = {n: rng.uniform(-1, 1, dag.layer(n).shape).astype(np.float32) for n in dag.inputs}
    a, b = ModelRunner(model, names, {})(feeds), ModelRunner(out, names, {})(feeds)
    err = max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)) for x, y in zip(a, b))
    if err > 1e-4:
        raise VerificationError(f"the rescaled model changed the outputs (max relative error {err:.3g})")
    _save_model(out, args.out)
    result = {"written": args.out, "neurons": report.neurons, "layers": report.layers, "max_rel_output_change": err}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"rescaled {report.neurons} neurons in {report.layers} layers (λ log-uniform in [{lo:g}, {hi:g}], seed "
              f"{args.seed}); outputs unchanged to {err:.2g}; wrote {args.out}")
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
    return 0 if err is None else err.exit_code


def cmd_audit(args) -> int:
    from .audit import run_command

    _check_q(args.qs or [])
    return run_command(args.paths, q=args.qs, input_shape=_input_shape(args.input_shape), jobs=args.jobs,
                       timeout=args.timeout, memory_mb=args.max_memory, db=args.db, html=args.report, csv=args.csv,
                       as_json=args.json, scheduler=args.scheduler, fail_on=args.fail_on)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnx-pathlift", description="Path-norms of ONNX ReLU networks, computed in onnxruntime.",
                formatter_class=_HelpFormatter, epilog="examples:\n  " + "\n  ".join(
                    ["onnx-pathlift COMMAND --help   (options, defaults and an example of each command)", *(
                        EXAMPLES[c].split("\n")[0] for c in ("norm", "inspect", "audit"))]))
    p.add_argument("--version", action="version", version=f"onnx-pathlift {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str) -> _Parser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter,
                              epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))

    def common(sp):
        sp.add_argument("model", help="path to an .onnx file")
        sp.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                        help=f"static input shape (needed for symbolic dimensions other than the batch): {SHAPE_FORMS}")
        sp.add_argument("--output", action="append", metavar="NAME", help="tensor to analyse (repeatable)")
        sp.add_argument("--json", action="store_true", help="print one JSON object")

    n = command("norm", help="Lq path-norms of a model")
    common(n)
    n.add_argument("-q", type=float, action="append", help="norm exponent q ≥ 1, or inf for the largest path product (repeatable; default 1 and 2)")
    n.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")
    n.add_argument("--verify", action="store_true", help="also run the re-emission check")
    n.set_defaults(func=cmd_norm)

    lf = command("lift", help="write the lifted |W|^q network as an ONNX file")
    common(lf)
    lf.add_argument("-q", type=float, default=1.0, help="norm exponent q ≥ 1")
    lf.add_argument("-o", "--out", required=True, help="where to write the lifted model")
    lf.set_defaults(func=cmd_lift)

    c = command("compare", help="path-metric between two same-architecture models and the certified output-change bound")
    common(c)
    c.add_argument("other", help="the second .onnx file (same architecture)")
    c.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="inputs with ‖x‖_∞ ≤ R (default 1)")
    c.add_argument("--check", type=int, default=0, metavar="N",
                   help="also run both models on N random inputs in the box, then N steps of a search for the largest change")
    c.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")
    c.set_defaults(func=cmd_compare, q=[1.0])

    lp = command("lipschitz", help="input-space Lipschitz bound ‖Φ_in‖_1 (ℓ∞ → ℓ1)")
    common(lp)
    lp.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")
    lp.set_defaults(func=cmd_lipschitz, q=[1.0])

    sc = command("scores", help="path-magnitude scores of every Conv/Gemm/MatMul weight")
    common(sc)
    sc.add_argument("-o", "--out", help="write the scores (fractions of ‖Φ‖_1) to this .npz")
    sc.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")
    sc.set_defaults(func=cmd_scores, q=[1.0])

    pr = command("prune", help="prune weights or whole channels by path-magnitude (or magnitude / L1) and certify the output change")
    common(pr)
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
    pr.add_argument("--layers", metavar="REGEX", help="only the weight tensors whose name matches")
    pr.add_argument("-o", "--out", required=True, help="where to write the pruned model")
    pr.add_argument("--mask", help="also write the keep-masks (.npz keyed by initializer name)")
    pr.add_argument("--eval", metavar="DATA.npz", help="arrays x, y: top-1 accuracy before and after")
    pr.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="certify inputs with ‖x‖_∞ ≤ R")
    pr.set_defaults(func=cmd_prune, q=[1.0])

    rs = command("rescale", help="random neuron-wise rescaling that keeps the function")
    common(rs)
    rs.add_argument("--seed", type=int, default=0, help="seed of the random scale factors (and of the check's inputs)")
    rs.add_argument("--range", type=float, nargs=2, default=[1 / 8, 8.0], metavar=("LO", "HI"),
                    help="each hidden neuron's factor λ is drawn log-uniformly in [LO, HI]")
    rs.add_argument("-o", "--out", required=True, help="where to write the rescaled model")
    rs.set_defaults(func=cmd_rescale, q=[1.0])

    ins = command("inspect", help="what the importer sees: op and layer counts, folded, decomposed, cut, refused")
    common(ins)
    ins.set_defaults(func=cmd_inspect, q=[1.0])

    au = command("audit", help="audit many models (files, folders, globs) in isolated workers; resumable")
    au.add_argument("paths", nargs="+", metavar="PATH", help="an .onnx file, a folder (searched recursively) or a glob")
    au.add_argument("-q", dest="qs", type=float, action="append", metavar="Q",
                    help="norm exponent q ≥ 1 (repeatable; default 1, 2 and 4)")
    au.add_argument("--input-shape", action="append", metavar="[NAME=]SHAPE",
                    help=f"static input shape for every model: {SHAPE_FORMS}")
    au.add_argument("--jobs", type=int, help="local worker processes (default: one per CPU)")
    au.add_argument("--timeout", type=float, metavar="S", help="seconds per model before its worker is killed")
    au.add_argument("--max-memory", type=float, metavar="MB",
                    help="memory cap per worker process (its data segment, imports included: ~150 MB); a model "
                         "needing more fails with 'out of memory' and the audit goes on")
    au.add_argument("--db", help="SQLite results database (default: beside --report, else audit.sqlite)")
    au.add_argument("--report", metavar="REPORT.html", help="write a self-contained HTML report")
    au.add_argument("--csv", metavar="OUT.csv", help="write one CSV row per model")
    au.add_argument("--json", action="store_true", help="print JSON Lines (one object per model) on stdout")
    au.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at tcp://HOST:PORT")
    au.add_argument("--fail-on", metavar="STATUS[,STATUS]",
                    help="exit with code 6 when any model ends in one of these statuses (ok, unsupported, invalid, error, "
                         "timeout; oom: an out-of-memory error), e.g. error,timeout,invalid to gate CI")
    au.set_defaults(func=cmd_audit, q=[1.0])  # -q lands in qs: main() would turn a missing q into [1, 2]
    return p


def _check_q(qs: list[float]) -> None:
    for q in qs:
        if not q >= 1:  # NaN fails too; inf is the largest path product
            raise UsageError(f"q must be a number ≥ 1, or inf (got {q})")


def main(argv: list[str] | None = None) -> int:
    global _JSON_MODE
    _JSON_MODE = "--json" in (sys.argv[1:] if argv is None else argv)
    if hasattr(signal, "SIGXFSZ"):  # past a file size limit (ulimit -f), a write fails (exit 6) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    if getattr(args, "q", None) is None:
        args.q = [1.0, 2.0]
    try:
        _check_q(args.q if isinstance(args.q, list) else [args.q])
        if args.json:  # json.dumps escapes every control character itself
            return args.func(args)
        with contextlib.redirect_stdout(_TerminalSafe(sys.stdout)):
            return args.func(args)
    except PathliftError as err:
        return _fail(err, args.json)
    except KeyboardInterrupt:
        print("onnx-pathlift: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything unexpected: one clear line, exit 1, no traceback
        if isinstance(err, OSError) and err.filename is not None:  # a file it names cannot be read (--eval DATA.npz)
            return _fail(UsageError(f"{err.filename}: cannot read: {err.strerror or err}"), args.json)
        print(f"onnx-pathlift: internal error: {type(err).__name__}: {terminal(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
