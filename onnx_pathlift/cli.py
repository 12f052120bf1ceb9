"""The ``onnx-pathlift`` command line: argument parsing and printing only.

Exit codes: 0 ok, 1 anything else, 2 usage, 3 unsupported operators, 4 unreadable or invalid model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from . import __version__
from .errors import CertificateViolation, PathliftError, UsageError, VerificationError

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
        print(f"onnx-pathlift: error: {err}", file=sys.stderr)
    return err.exit_code


SHAPE_FORMS = ("1x3x224x224, 1,3,224,224 or [1,3,224,224]; per input NAME=SHAPE, NAME:SHAPE or NAME:[1,3,224,224] "
               "(repeat --input-shape for several inputs)")


def _shape(text: str) -> tuple[int, ...]:
    """One shape in any accepted form (see :data:`SHAPE_FORMS`)."""
    from .load import parse_shape

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
    from .load import load_model, prepare

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
        if report is not None:
            status = "passed" if report.passed else "FAILED"
            print(f"  re-emission check {status}: max relative error {max(report.max_rel_error.values()):.3g} "
                  f"(tolerance {report.rtol:g}, {report.trials} random inputs)")
    return 0 if report is None or report.passed else 1


def cmd_lift(args) -> int:
    _, _, dag, _ = _load(args)
    import onnx

    from .audit.files import task_for
    from .emit import HEALTH, HEALTH_MIN_LOG2, LOG2_SUFFIX, describe_lifted
    from .norm import PathNormSession

    session = PathNormSession(dag, args.q, per_sample=False)  # runs once: static scales if they are fine, else dynamic
    norm = session.run()
    model = describe_lifted(session.model, dag, args.q, session.static, task_for(args.model).sha256)
    onnx.checker.check_model(model)
    out = Path(args.out)
    onnx.save(model, str(out))
    info = {"written": str(out), "q": args.q, "scales": "static" if session.static else "dynamic",
            "inputs": {k: list(v) for k, v in dag.input_shapes().items()},
            "outputs": [[o, o + LOG2_SUFFIX] for o in dag.outputs], "health_output": HEALTH if session.static else None,
            "norm": norm.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"wrote the lifted network (q={args.q:g}, {info['scales']} scales) to {out}")
        print(f"run it with all-ones inputs; each analysed output o comes with a scalar o{LOG2_SUFFIX}, and")
        print(f"  ||Phi||_q^q = sum over outputs o of  sum(o) * 2**o{LOG2_SUFFIX}     (here: {_fmt(norm.log10 * args.q)})")
        if session.static:
            print(f"  (valid when min({HEALTH}) >= 2**-{HEALTH_MIN_LOG2}, as it is for this model)")
        outs = ", ".join(repr(o) for o in dag.outputs)
        print("e.g.  python -c \"import onnxruntime as rt, numpy as np; s = rt.InferenceSession('%s'); "
              "r = dict(zip([o.name for o in s.get_outputs()], s.run(None, {i.name: np.ones(i.shape, np.float32) "
              "for i in s.get_inputs()}))); print(sum(float(r[o].sum()) * 2.0 ** float(r[o + '%s']) for o in [%s]) "
              "** (1 / %g))\"" % (out, LOG2_SUFFIX, outs, args.q))
    return 0


def cmd_compare(args) -> int:
    from .metric import check_bound, pair_layers, path_metric

    a_model, a_prep, dag_a, _ = _load(args, args.model)
    b_model, b_prep, dag_b, _ = _load(args, args.other)
    pair_layers(dag_a, dag_b)  # says where the architectures differ before any work
    metric = path_metric(dag_a, dag_b, providers=args.provider)
    r = args.input_linf
    result = {"a": str(args.model), "b": str(args.other), **metric.to_dict(r),
              "activation_quantization_in_b": dag_b.activation_qdq, "notes_b": dag_b.notes}
    check = None
    if args.check:
        check = check_bound(a_model, b_model, dag_a, dag_b, metric, r, args.check, a_prep.elem_types,
                            b_prep.elem_types, providers=args.provider)
        result["check"] = check.to_dict()
    violation = None
    if check is not None and check.violated:
        violation = CertificateViolation(
            f"observed output change {check.max_observed:.6g} EXCEEDS the certified bound {check.bound:.6g}: "
            "this is a bug (in onnx-pathlift or in the theorem's preconditions); please report it with both models")
        result["error"] = violation.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"path-metric d(A, B) = ‖Φ(A) − Φ(B)‖_1 between {args.model} and {args.other}:")
        print(f"  lower {_fmt(metric.lower_log10)}   upper {_fmt(metric.upper_log10)}"
              + ("   (exact: |B| ≤ |A| or |B| ≥ |A| everywhere)" if metric.exact else ""))
        print(f"  ‖Φ(A)‖_1 = {_fmt(metric.norm_a_log10)}, ‖Φ(B)‖_1 = {_fmt(metric.norm_b_log10)}")
        if dag_b.activation_qdq:
            print(f"  note: B quantizes activations ({dag_b.activation_qdq} QuantizeLinear→DequantizeLinear pairs); the "
                  "certificate covers B's weights in A's float architecture, not the activation quantization")
        if metric.sign_consistent:
            print(f"  certified: for every input with ‖x‖_∞ ≤ {r:g}, ‖A(x) − B(x)‖_1 ≤ {_fmt(metric.bound_log10(r))}")
        else:
            bad = [s for s in metric.signs if s.violations]
            print(f"  NOT certified: {sum(s.violations for s in bad)} parameter(s) change sign, in {len(bad)} layer(s):")
            for s in bad[:20]:
                print(f"    {s.layer}: {s.violations} of {s.size}")
        if check is not None:
            ratio = "n/a (no certificate)" if check.ratio is None else f"{check.ratio:.3g} of the bound"
            print(f"  check: largest observed ‖A(x) − B(x)‖_1 over {check.samples} inputs = {check.max_observed:.6g} ({ratio})")
            if check.shipped_max_observed is not None:
                print(f"  B as shipped (not certified): largest observed change {check.shipped_max_observed:.6g}")
    if violation is not None:
        print(f"onnx-pathlift: error: {violation}", file=sys.stderr)
        return violation.exit_code
    return 0


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

    _, _, dag, _ = _load(args)
    t0 = time.perf_counter()
    scores = path_magnitude(dag, providers=args.provider)
    elapsed = time.perf_counter() - t0
    if args.out:
        np.savez_compressed(args.out, **{k: v.astype(np.float32) for k, v in scores.fraction.items()})
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
    import onnx

    from . import prune
    from .metric import path_metric
    from .scores import magnitude, path_magnitude

    model, _, dag, _ = _load(args)
    if not 0.0 <= args.sparsity <= 1.0:
        raise UsageError(f"--sparsity must be in [0, 1] (got {args.sparsity})")
    scores = path_magnitude(dag).fraction if args.criterion == "path-magnitude" else magnitude(dag)
    keep = prune.masks(prune.select(scores, args.layers), args.sparsity, args.scope)
    pruned, report = prune.apply(model, keep)
    onnx.save(pruned, args.out)
    if args.mask:
        np.savez_compressed(args.mask, **{k: v for k, v in keep.items() if k in report.tensors})
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


def cmd_rescale(args) -> int:
    import numpy as np
    import onnx

    from .rescale import rescale
    from .verify import ModelRunner

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
    onnx.save(out, args.out)
    result = {"written": args.out, "neurons": report.neurons, "layers": report.layers, "max_rel_output_change": err}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"rescaled {report.neurons} neurons in {report.layers} layers (λ log-uniform in [{lo:g}, {hi:g}], seed "
              f"{args.seed}); outputs unchanged to {err:.2g}; wrote {args.out}")
    return 0


def _print_inspection(r) -> None:
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
    n.add_argument("-q", type=float, action="append", help="norm exponent q ≥ 1 (repeatable; default 1 and 2)")
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
    c.add_argument("--input-linf", type=float, default=1.0, metavar="R", help="inputs with ‖x‖_∞ ≤ R")
    c.add_argument("--check", type=int, default=0, metavar="N", help="also run both models on N random inputs in the box")
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

    pr = command("prune", help="prune by path-magnitude (or magnitude) and certify the output change")
    common(pr)
    pr.add_argument("--sparsity", type=float, required=True, help="fraction of the scored weights to zero")
    pr.add_argument("--criterion", default="path-magnitude", choices=["path-magnitude", "magnitude"],
                    help="score of a weight: path-magnitude |θ_i|·∂‖Φ‖_1/∂|θ_i| (the ℓ1 path-norm carried by its paths) "
                         "or plain magnitude |θ_i|")
    pr.add_argument("--scope", default="global", choices=["global", "layer"],
                    help="global: the lowest-scored weights over all tensors together; layer: the same fraction in each tensor")
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
        if not (math.isfinite(q) and q >= 1):
            raise UsageError(f"q must be a finite number ≥ 1 (got {q})")


def main(argv: list[str] | None = None) -> int:
    global _JSON_MODE
    _JSON_MODE = "--json" in (sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "q", None) is None:
        args.q = [1.0, 2.0]
    try:
        _check_q(args.q if isinstance(args.q, list) else [args.q])
        return args.func(args)
    except PathliftError as err:
        return _fail(err, args.json)
    except KeyboardInterrupt:
        print("onnx-pathlift: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything unexpected: one clear line, exit 1, no traceback
        print(f"onnx-pathlift: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
