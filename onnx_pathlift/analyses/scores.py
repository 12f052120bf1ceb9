"""Path-magnitude scores: ``score_i = |θ_i| · ∂‖Φ‖_1/∂|θ_i| = ‖Φ(θ)‖_1 − ‖Φ(θ with θ_i = 0)‖_1``.

``‖Φ‖_1`` is multilinear in ``|θ|`` (a path uses a parameter at most once), so every score comes from
one forward pass of the lifted network (forward masses ``a``) and one backward pass of its transpose
(backward masses ``g``: sums over paths from a neuron to the outputs): for an edge ``u → v``,
``|w|·a_u·g_v``, summed over the positions that share a conv kernel weight. Both passes are one
emitted ONNX graph (each op's ``adjoint``), run by onnxruntime, with the run-time power-of-two scales
of the lifted network; scores come back as fractions of ``‖Φ‖_1`` in float64, whatever the size of
``‖Φ‖_1``. Limit: masses are float32 with one scale per tensor, so a score below about ``2**-126``
of the largest score of its tensor is rounded, or flushed to 0 (it then ties with zero weights).
Scores are rescaling-invariant; magnitudes are not.

A weight tensor used by several layers is not scored: ``‖Φ‖_1`` is not multilinear in a shared
parameter (a path may use it twice), so the sum of per-use scores is not its drop when zeroed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..backend.emit import LOG2_SUFFIX, emit_opset, identity_node, lift_forward, settled
from ..backend.norm import combine
from ..backend.runtime import make_session
from ..backend.samples import one_sample
from ..fileio.atomic import refuse_overwriting_input, save_npz
from ..fileio.load import ModelSource
from ..frontend.names import LayerNames, layer_names, named_dag
from ..frontend.pipeline import load, model_name
from ..graph.builder import BuiltModel, LiftBuilder, Scaled
from ..graph.exponents import lift_run
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS, require
from ..sanitise import terminal
from . import Command, fmt, provider

if TYPE_CHECKING:
    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared


@dataclass
class Scores:
    """Per weight tensor (keyed by its ONNX initializer name, in the initializer's layout):
    ``fraction`` = score / ‖Φ‖_1, float64; ``log10_norm`` = log10 ‖Φ‖_1."""

    fraction: dict[str, np.ndarray]
    log10_norm: float
    layers: dict[str, str]  # initializer -> its layer (:mod:`onnx_pathlift.frontend.names`; a DAG's own: its DAG layer)
    skipped: dict[str, str] = field(default_factory=dict)  # initializer -> why it has no score

    def summary(self, rounded: dict[str, np.ndarray] | None = None) -> list[dict]:
        """Per weight tensor: its share of ‖Φ‖_1 and quantiles of the per-weight fractions (min and max
        exact, the others from the fractions rounded to float32: :func:`_quantiles`). ``rounded``: those
        float32 arrays where already made (the ``.npz``'s), sorted in place here (their order is lost)."""
        rows = []
        for name, f in self.fraction.items():
            x = None if rounded is None else rounded[name]
            q = [float(f.min()), *_quantiles(f, (0.5, 0.9, 0.99), x), float(f.max())] if f.size else [0.0] * 5
            rows.append({"initializer": name, "layer": self.layers[name], "size": int(f.size),
                         "share": float(f.sum()), "zeros": int(np.count_nonzero(f == 0)),
                         "quantiles": dict(zip(["min", "median", "p90", "p99", "max"], map(float, q)))})
        return rows


def _quantiles(f: np.ndarray, ps: tuple[float, ...], rounded: np.ndarray | None = None) -> list[float]:
    """numpy's linear quantiles of ``f`` rounded to float32, from one float32 copy sorted in place
    (``np.quantile`` would flatten a float64 copy and partition it at several ranks, which numpy does
    without SIMD: on 10⁸ weights a float32 sort costs a third of that partition, 0.5 s against 1.4 s);
    ``rounded``: that copy where made already (``f`` as float32), then sorted instead (no second copy)."""
    r = f.astype(np.float32) if rounded is None else rounded  # the one copy
    x = (r.T if r.flags.f_contiguous else r).reshape(-1)  # in memory order: a view of a contiguous copy
    x.sort()
    out = []
    for p in ps:
        h = (x.size - 1) * p
        lo = math.floor(h)
        a, b = float(x[lo]), float(x[min(lo + 1, x.size - 1)])
        out.append(a + (h - lo) * (b - a))
    return out


def scores_model(dag: Dag) -> tuple[BuiltModel, list[tuple[str, str, bool]]]:
    """The forward + adjoint graph. Outputs: each analysed output (and its exponent) and, per scored
    layer ``(layer, output, transposed)``, ``<layer>__score`` (in the layout of the layer's W, or of
    Wᵀ when ``transposed``) with ``<layer>__score__log2_scale``."""
    require(dag, "scores")
    with lift_run():  # the forward lift and the adjoint share one powers memo
        return _scores_model(dag)


def _scores_model(dag: Dag) -> tuple[BuiltModel, list[tuple[str, str, bool]]]:
    b = LiftBuilder(emit_opset(dag), taken=set(dag.inputs) | set(dag.outputs) | {o + LOG2_SUFFIX for o in dag.outputs})
    lifted = lift_forward(dag, 1.0, b, output_bounds=False)  # scores need no error budget
    layers, value = lifted.layers, lifted.value
    shapes = {layer.name: layer.shape for layer in layers}

    def clean(name: str) -> Scaled:
        return settled(b, value, name, len(shapes[name]))

    grads: dict[str, list[Scaled]] = {}
    for lname in dag.outputs.values():  # the output neurons' backward mass is 1
        grads.setdefault(lname, []).append(Scaled(b.const(np.ones(shapes[lname]), "ones"), b.scalar(0.0)))
    scored: list[tuple[str, str, bool]] = []
    outputs: list[tuple[str, tuple[int, ...] | None]] = []
    for layer in reversed(layers):
        if layer.name not in grads:
            continue
        tensors, k = b.align(grads.pop(layer.name))
        g = tensors[0]
        for t in tensors[1:]:
            g = b.op("Add", [g, t], "grad")
        g = Scaled(g, k) if LAYER_OPS[layer.op].adjoint_moves else b.normalize(Scaled(g, k), len(layer.shape))
        xs = [clean(i) for i in layer.inputs]
        start = len(b.nodes)
        g_in, scores = LAYER_OPS[layer.op].adjoint(b, layer, xs, g, [shapes[i] for i in layer.inputs])
        for name, gi in zip(layer.inputs, g_in):
            if dag.layer(name).inputs:  # a graph input passes no mass further back
                grads.setdefault(name, []).append(gi)
        if LAYER_OPS[layer.op].scored:
            transposed = "W" not in scores  # "W^T": the score of W in the layout of Wᵀ
            s = scores["W^T" if transposed else "W"]
            out = b.fresh(layer.name + "__score")
            _write_as(b, start, s.tensor, out)
            b.nodes.append(identity_node(s.log2, out + LOG2_SUFFIX))
            shape = layer.params["W"].shape
            outputs += [(out, shape[::-1] if transposed else shape), (out + LOG2_SUFFIX, None)]
            scored.append((layer.name, out, transposed))
    for out, lname in dag.outputs.items():
        b.nodes.append(identity_node(value[lname].tensor, out))
        b.nodes.append(identity_node(value[lname].log2, out + LOG2_SUFFIX))
        outputs = [(out, dag.layer(lname).shape), (out + LOG2_SUFFIX, None)] + outputs
    return b.build([(n, dag.layer(n).shape) for n in dag.inputs], outputs, "path_magnitude_scores",
                   "onnx-pathlift forward + adjoint graph of the lifted network (q = 1): path-magnitude scores"), scored


def _write_as(b: LiftBuilder, start: int, tensor: str, out: str) -> None:
    """Make ``tensor`` the graph output ``out``: renamed at the node among ``b.nodes[start:]`` that
    writes it when no node there reads it (an Identity would copy it: 100 MB, 0.12 s on light
    ResNet-50's scores), else through an Identity."""
    new = b.nodes[start:]
    producer = next((n for n in new if tensor in n.output), None)
    if producer is None or any(tensor in n.input for n in new):
        b.nodes.append(identity_node(tensor, out))
        return
    producer.output[list(producer.output).index(tensor)] = out


def _to_initializer_layout(layer: Layer, score: np.ndarray) -> tuple[str, np.ndarray]:
    name, transposed = layer.origins.get("W", (layer.name, False))
    return name, (score.T if transposed else score)


def path_magnitude(model: ModelSource | Dag, input_shape=None, providers=None, names: LayerNames | None = None,
                   rounded: dict[str, np.ndarray] | None = None) -> Scores:
    """Path-magnitude scores of every Conv/Gemm/MatMul weight, as fractions of ‖Φ‖_1; ``layers`` names each
    tensor's layer as every command does (:mod:`onnx_pathlift.frontend.names`): a file's by its layer names,
    a DAG's by ``names`` (None: by DAG name). ``rounded``: a dict filled with each tensor's fractions rounded
    to float32 (``fraction[k].astype(np.float32)``, same layout), written over the run's own float32 outputs
    (no new memory: a fresh 100 MB array took 0.13-0.25 s of light ResNet-50's command in page faults)."""
    dag, naming = named_dag(model, input_shape, names)
    # N independent samples: every path, and so every score, counts N times; fractions are unchanged
    dag, copies = one_sample(dag)
    proto, scored = scores_model(dag)
    session = make_session(proto, providers, rewrites="none")
    feeds = {n: np.ones(dag.layer(n).shape, np.float32) for n in dag.inputs}
    names = [o.name for o in session.get_outputs()]
    res = dict(zip(names, session.run(None, feeds)))
    norm = combine(1.0, {o: (res[o], float(res[o + LOG2_SUFFIX])) for o in dag.outputs})
    log2_norm = norm.log10 / math.log10(2.0)
    fraction: dict[str, np.ndarray] = {}
    layers: dict[str, str] = {}
    uses: dict[str, int] = {}
    for lname, _, _ in scored:
        name = dag.layer(lname).origins.get("W", (lname, False))[0]
        uses[name] = uses.get(name, 0) + 1
    skipped = {n: f"used by {k} layers: a shared parameter's score is not the sum of its uses' scores"
               for n, k in uses.items() if k > 1}
    for lname, out, transposed in scored:
        shift = float(res[out + LOG2_SUFFIX]) - log2_norm
        t = res.pop(out)  # the float32 scores, freed as their fractions are made (unless rounded into)
        if math.isfinite(shift):
            f = t.astype(np.float64)
            f *= np.exp2(shift)  # in place: the same rounding as one float64 product, without a mixed-type loop
        else:
            f = np.zeros(t.shape)
        name, f = _to_initializer_layout(dag.layer(lname), f.T if transposed else f)
        if name not in skipped:
            named = naming.of_dag(lname) if naming is not None else None
            fraction[name], layers[name] = f, named.layer if named else lname
            if rounded is not None:  # float32(f), round to nearest as astype, in t viewed as f is
                t = t if t.flags.writeable else np.empty_like(t)  # a runtime may hand back read-only outputs
                rounded[name] = _to_initializer_layout(dag.layer(lname), t.T if transposed else t)[1]
                np.copyto(rounded[name], f)
    return Scores(fraction, norm.log10 + math.log10(copies), layers, skipped)


def magnitude(dag: Dag) -> dict[str, np.ndarray]:
    """Plain magnitude scores ``|θ_i|`` of the same weights (not rescaling-invariant), as the DAG
    holds them (a Gemm's ``alpha`` included)."""
    out: dict[str, np.ndarray] = {}
    for layer in dag.layers():
        if LAYER_OPS[layer.op].scored:
            name, w = _to_initializer_layout(layer, np.abs(layer.params["W"]))
            out[name] = w
    return out


@dataclass
class ScoresReport:
    """``onnx-pathlift scores``: path-magnitude scores and a summary row per weight tensor."""

    model: str
    scores: Scores
    seconds: float  # wall time of the forward + adjoint pass
    written: str | None
    rows: list[dict] = field(default_factory=list)  # Scores.summary() with share_of_scores added

    def to_dict(self) -> dict:
        return {"model": self.model, "l1_path_norm_log10": self.scores.log10_norm, "seconds": self.seconds,
                "written": self.written, "tensors": self.rows}


def score_weights(source: ModelSource, out: str | os.PathLike | None = None, input_shape: InputShape = None,
                  outputs: list[str] | None = None, providers: str = "cpu") -> ScoresReport:
    """Path-magnitude scores ``|θ_i|·∂‖Φ‖_1/∂|θ_i|`` of every Conv/ConvTranspose/Gemm/MatMul weight of ``source``, as
    fractions of ``‖Φ‖_1``; with ``out``, written there as a float32 ``.npz`` keyed by initializer name.
    Per tensor, ``share`` is the fraction of ``‖Φ‖_1`` carried by the paths through it (these sum to
    more than 1) and ``share_of_scores`` its part of all scores (they sum to 1).
    Raises :class:`UsageError` when ``out`` is the input."""
    if out and isinstance(source, (str, os.PathLike)):
        refuse_overwriting_input(out, source)
    loaded = load(source, input_shape, outputs, whole=False)
    names = layer_names(loaded.prepared, loaded.dag)
    t0 = time.perf_counter()
    rounded: dict[str, np.ndarray] | None = {} if out else None  # the .npz's float32 arrays
    scores = path_magnitude(loaded.dag, providers=providers, names=names, rounded=rounded)
    elapsed = time.perf_counter() - t0
    if out:
        # deflated only where it pays (a pruned tensor's zeros): scores of live weights barely shrink
        save_npz(out, rounded, compress="auto")
    rows = scores.summary(rounded)  # sorts the written arrays for their quantiles: no second float32 copy
    total = sum(row["share"] for row in rows)
    for row in rows:  # the tensor's layer (docs/design.md, "Layer names"); "tensor": the .npz key
        tensor, named = row["initializer"], names.of_tensor(row["initializer"])
        row.update(tensor=tensor, **(named.to_dict() if named else {"layer": tensor, "onnx_node": ""}))
        row["share_of_scores"] = row["share"] / total if total > 0 else 0.0
    return ScoresReport(model_name(source), scores, elapsed, None if out is None else str(out), rows)


def _print(r: ScoresReport, args) -> None:
    print(f"{r.model}: path-magnitude scores of {len(r.scores.fraction)} weight tensors "
          f"(each weight's score as a fraction of ‖Φ‖_1 = {fmt(r.scores.log10_norm)}), {r.seconds:.3f} s")
    print("  'paths' is the fraction of ‖Φ‖_1 carried by paths through the tensor (a path crosses several tensors, so "
          "these sum to more than 1); 'share' is the tensor's part of all scores (sums to 1)")
    names = [terminal(row["layer"]) for row in r.rows]  # a newline in a name is escaped too
    width = max([40, *map(len, names)])
    if args.quiet:
        print(f"  (the table of {len(r.rows)} tensors left out: --quiet)")
    else:
        print(f"  {'layer':{width}s} {'paths':>10s} {'share':>10s} {'median':>10s} {'max':>10s} {'zeros':>15s}")
    for name, row in [] if args.quiet else zip(names, r.rows):
        q = row["quantiles"]
        print(f"  {name:{width}s} {row['share']:10.4g} {row['share_of_scores']:10.4g} {q['median']:10.3g} "
              f"{q['max']:10.3g} {str(row['zeros']) + '/' + str(row['size']):>15s}")
    if r.written:
        print(f"wrote {r.written} (float32 fractions keyed by initializer name)")


def _options(parser) -> None:
    parser.add_argument("-o", "--out", help="write the scores (fractions of ‖Φ‖_1) to this .npz")
    provider(parser)


COMMAND = Command("scores", _options, lambda args, common: score_weights(args.model, args.out, providers=args.provider, **common),
                  _print, score_weights)
