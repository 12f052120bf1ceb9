"""The op registry and the context an import rule works in.

An op module registers, in one place, everything about one family of layers:

* import rules: ``@imports("Conv")`` functions that turn one ONNX node into DAG layers (or raise
  :class:`~onnx_pathlift.errors.RefuseNode` saying *why* the node breaks the theory);
* a :class:`LayerOp` subclass per layer type, registered with ``@layer_op``, that re-emits the
  layer as itself (``emit``: signed weights, real activations) and as its lifted form
  (``lift``: ``|w|**q``, activations removed) on a :class:`~onnx_pathlift.graph.LiftBuilder`.

A layer op's :data:`capabilities <LayerOp.capabilities>` are derived from the methods it overrides
(:data:`CAPABILITY_METHODS`); every analysis checks a DAG against them before it emits anything
(:func:`onnx_pathlift.ops.capabilities.require`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
from onnx import AttributeProto, NodeProto, defs, helper

from ..dag import Dag, Layer
from ..errors import RefuseNode
from ..graph import (
    Exponent,
    GraphBuilder,
    LiftBuilder,
    Scaled,
    bias_values,
    compact,
    lifted_log2,
    log2_range,
    pow_exponent,
    pow_row_reduce,
    power32,
)

if TYPE_CHECKING:  # prepare imports this registry (SPEC_RULES) at run time
    from ..prepare import Prepared

ImportRule = Callable[[NodeProto, "ImportContext"], None]

IMPORTERS: dict[str, ImportRule] = {}
LAYER_OPS: dict[str, LayerOp] = {}
#: ONNX op type -> why importing it as its own layer is worth a word (``onnx-pathlift inspect``)
IMPORT_NOTES: dict[str, str] = {}
#: what an ONNX op does when it ends a network (the importer cuts such a head off and analyses the
#: logits): "head" (monotone: the winning class is unchanged), "picker" (the index, value or one-hot of
#: the winner), "carrier" (reshapes or retypes labels and probabilities: cut only behind a head or picker)
HEAD_ROLES: dict[str, str] = {}
#: label lookups after a picker: op type -> (input index of its constant class table, or None; of the picked index)
LOOKUPS: dict[str, tuple[int | None, int]] = {}
#: how structured pruning slices an ONNX op's channels (:mod:`onnx_pathlift.channels`, which pins the
#: channels of every op without a rule): "same" (each channel maps to itself), "pad" (the same when no
#: channel padding), "conv", "dense", "elementwise" (joins its operands' channels; constants sliced),
#: "elementwise_on_first" (the same, the activation first: PRelu's slope), "batchnorm", "flatten",
#: "spatial" (squeezes or reduces non-channel axes), "concat", "split", "crop" (a Slice)
CHANNEL_RULES: dict[str, str] = {}


def _registrar(table: dict[str, Callable], what: str, op_types: tuple[str, ...],
               notes: dict[str, str] | None = None, note: str = "") -> Callable[[Callable], Callable]:
    """A decorator that enters its function in ``table`` under each op type, once per op type (and
    ``note`` in ``notes``, when given)."""

    def register(fn: Callable) -> Callable:
        for op_type in op_types:
            if op_type in table:
                raise ValueError(f"two {what} for {op_type}")
            table[op_type] = fn
            if note and notes is not None:
                notes[op_type] = note
        return fn

    return register


def imports(*op_types: str, note: str = "") -> Callable[[ImportRule], ImportRule]:
    """Register an import rule for ONNX op types (default domain); ``note``: see :data:`IMPORT_NOTES`."""
    return _registrar(IMPORTERS, "import rules", op_types, IMPORT_NOTES, note)


#: ``(node, consts, shapes, opset) -> problem or None``: a rule of the ONNX spec that ONNX shape
#: inference does not check (onnxruntime refuses such models); ``prepare`` raises
#: :class:`~onnx_pathlift.errors.InvalidModelError` naming the node and the problem
SpecRule = Callable[[NodeProto, dict[str, np.ndarray], dict[str, tuple[int, ...]], int], "str | None"]
SPEC_RULES: dict[str, SpecRule] = {}


def spec_rule(*op_types: str) -> Callable[[SpecRule], SpecRule]:
    """Register the spec rule of ONNX op types (default domain), next to their import rule."""
    return _registrar(SPEC_RULES, "spec rules", op_types)


def head_role(role: str, *op_types: str) -> None:
    """Declare the role of ONNX op types at the end of a network (see :data:`HEAD_ROLES`)."""
    if role not in ("head", "picker", "carrier"):
        raise ValueError(f"unknown head role {role!r}")
    HEAD_ROLES.update(dict.fromkeys(op_types, role))


def channel_rule(rule: str, *op_types: str) -> None:
    """Declare how structured pruning slices the channels of ONNX op types (see :data:`CHANNEL_RULES`)."""
    CHANNEL_RULES.update(dict.fromkeys(op_types, rule))


def label_lookup(op_type: str, table: int | None, index: int) -> None:
    """Declare ``op_type`` a label lookup after a picker (see :data:`LOOKUPS`)."""
    LOOKUPS[op_type] = (table, index)


#: what a layer op can do: lifted (re-emitted, lifted, statically bounded), transposed (path-magnitude
#: scores), split into two streams (path-metric bound), bounded in ℓ∞ (naive Lipschitz bound),
#: rescaled per channel (:mod:`onnx_pathlift.rescale`)
LIFT, ADJOINT, TWO_STREAM, LIPSCHITZ, RESCALE = "lift", "adjoint", "two-stream", "lipschitz", "rescale"
#: each capability and the :class:`LayerOp` methods that provide it (a layer op has it when it overrides
#: them all); :data:`RESCALE` is a declared :attr:`LayerOp.rescale_role` instead
CAPABILITY_METHODS: dict[str, tuple[str, ...]] = {
    LIFT: ("emit", "lift", "bound"),
    ADJOINT: ("adjoint",),
    TWO_STREAM: ("split_params",),
    LIPSCHITZ: ("linf_gain",),
}


class LayerOp:
    """One layer type: how it is re-emitted as itself and as its lifted form.

    The methods of :data:`CAPABILITY_METHODS` raise :class:`NotImplementedError` here; a subclass
    overrides those it supports, and :attr:`capabilities` (set when the subclass is defined) names
    them, so an analysis refuses a DAG up front instead of failing mid-run."""

    op: ClassVar[str]
    kind: ClassVar[str]
    #: the capabilities this op provides (derived from the methods it overrides; see :data:`CAPABILITY_METHODS`)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: whether ``lift`` takes inputs that are not renormalised yet (``Scaled.dirty``)
    accepts_dirty: ClassVar[bool] = False
    #: whether ``adjoint`` only moves, copies or splits the backward masses (no arithmetic), so that the
    #: scores graph need not renormalise them first (the next layer that computes does)
    adjoint_moves: ClassVar[bool] = False
    #: static scales with map axis :data:`ANY`: whether ``lift`` needs its inputs' exponent maps at the
    #: inputs' full shapes (a layer that moves neurons does); an elementwise layer takes them as they
    #: are, broadcastable (per channel stays per channel: no full-size map is built and compacted)
    full_maps: ClassVar[bool] = True
    #: whether its weight ``W`` gets path-magnitude scores and can be pruned (as in the paper: the
    #: weights of Conv / ConvTranspose / Gemm / MatMul; not BN scales, not biases)
    scored: ClassVar[bool] = False
    #: role in a random neuron-wise rescaling (:mod:`onnx_pathlift.rescale`): "weights" (its output
    #: channels take a factor λ on their incoming weights, its input channels 1/λ: :meth:`rescale_axes`),
    #: "per_channel" (commutes with a positive per-channel factor: bias, BatchNormalization, ReLU, pools),
    #: "flatten" (may flatten channels into a dense layer's rows); None: a rescaled chain stops here
    rescale_role: ClassVar[str | None] = None
    #: whether an activation quantizer (QuantizeLinear→DequantizeLinear) may fold this layer into its
    #: clipping range, so that two spellings of one model differ by it (a ReLU; see :func:`onnx_pathlift.metric.pair_layers`)
    folds_into_quantizer: ClassVar[bool] = False
    #: whether its output is ≥ 0 whenever every input is (it moves, pools or reduces them): see
    #: :meth:`nonnegative`
    keeps_sign: ClassVar[bool] = False
    #: a per-channel ``scale ⊙ x + bias`` whose parameters the lifted network folds into the linear
    #: layer before it (``absorb_scale`` / ``absorb_bias`` of that layer's op)
    folds_into_previous: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        derived = {cap for cap, methods in CAPABILITY_METHODS.items()
                   if all(getattr(cls, m) is not getattr(LayerOp, m) for m in methods)}
        cls.capabilities = frozenset(derived | ({RESCALE} if cls.rescale_role else set()))

    def nonnegative(self, layer: Layer, inputs: bool) -> bool:
        """Whether the output is ≥ 0 for every input, given whether all its inputs are ≥ 0 (``inputs``):
        the activation-quantization bound (:mod:`onnx_pathlift.quant_bound`) uses it."""
        return self.keeps_sign and inputs

    def map_axis(self, layer: Layer) -> int | str | None:
        """Static scales: the axis of its inputs along which an exponent map may vary when ``lift``
        receives it (the map is collapsed along every other axis first), :data:`ANY` when ``lift``
        carries maps itself, None for one exponent per input."""
        return None

    def rounding_ops(self, layer: Layer, in_shapes: list[tuple[int, ...]]) -> int:
        """``c`` such that one output neuron is computed with relative rounding error at most ``c·2**-24``
        (a dot product of ``n`` non-negative terms: ``n``, Higham's γ_n; plus a bias and scalings) and at
        most ``2c`` underflows (absolute error 2**-126 in the units of its exponent each). It is also at
        least the neuron's fan-in plus one. The error budget (:mod:`onnx_pathlift.budget`) sums them."""
        return 4

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        """Emit the layer with its signed parameters and real activation; return the output name."""
        raise NotImplementedError(f"{layer.op} has no {LIFT!r} capability")

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        """Emit the lifted layer (``|w|**q``, activations → identity) on scaled tensors."""
        raise NotImplementedError(f"{layer.op} has no {LIFT!r} capability")

    def bound(self, layer: Layer, bs: list[np.ndarray], shapes: list[tuple[int, ...]], q: float) -> np.ndarray:
        """Static upper bound on ``log2`` of the lifted output, broadcastable to ``layer.shape``,
        given the inputs' bounds ``bs`` (same form) and shapes. Used to fix constant scales."""
        raise NotImplementedError(f"{layer.op} has no {LIFT!r} capability")

    def absorb_bias(self, layer: Layer, bias: np.ndarray) -> Layer | None:
        """This layer with a following per-output-channel bias as its own bias ``B``, or None."""
        return None

    def adjoint(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], g: Scaled,
                in_shapes: list[tuple[int, ...]]) -> tuple[list[Scaled], dict[str, Scaled]]:
        """Backward pass of the lifted layer (q = 1) for path-magnitude scores.

        ``g`` is the backward mass at the output (Σ over paths from each output neuron to the
        network's outputs); returns the backward masses at the inputs (the transposed layer) and,
        for each weight, ``|w| ⊙ ∂‖Φ‖_1/∂|w|`` (forward mass × backward mass, summed over the
        positions sharing the weight), all as scaled tensors.
        """
        raise NotImplementedError(f"{layer.op} has no {ADJOINT!r} capability")

    def split_params(self, a: Layer, b: Layer) -> tuple[dict, dict, dict] | None:
        """Two-stream form, for two parameter sets of this layer (path-metric upper bound).

        Returns ``(lo, hi_linear, diff)``: the parameters ``min(|θ|, |θ'|)``, ``max(|θ|, |θ'|)``
        without biases, and ``max − min`` (biases included), so that with ``f_p`` the layer under
        parameters ``p``: ``f_hi(hi) − f_lo(lo) = f_hi_linear(Δ) + f_diff(lo)``, ``Δ = hi − lo``.
        None for a layer without parameters (then ``Δ_out = f(Δ)``; see :class:`ParameterFree`).
        """
        raise NotImplementedError(f"{a.op} has no {TWO_STREAM!r} capability")

    def without_bias(self, layer: Layer) -> Layer:
        """The layer with its biases removed (paths that start at input neurons only). The layer
        itself by default: imported layers hold biases only in their own affine layers."""
        return layer

    def linf_gain(self, layer: Layer) -> float:
        """``log2`` of the layer's ℓ∞ → ℓ∞ operator norm (the naive Lipschitz bound's factor), per
        input branch (see :meth:`linf_combine`; 0 for a 1-Lipschitz op: :class:`OneLipschitz`)."""
        raise NotImplementedError(f"{layer.op} has no {LIPSCHITZ!r} capability")

    def linf_combine(self, ins: list[float]) -> float:
        """Given ``log2`` bounds on the ℓ∞ norms of the layer's inputs (per unit of the network's input),
        one that :meth:`linf_gain` multiplies: the largest, as each output neuron reads the neurons of
        one input (a concat, any one-input layer). A sum overrides it."""
        return max(ins)

    def keeps_channel(self, layer: Layer, axis: int) -> bool:
        """For :attr:`rescale_role` "per_channel": whether a positive factor per channel along ``axis`` of
        its input commutes with the layer and stays on ``axis`` of its output (always, unless overridden)."""
        return True

    def rescale_axes(self, layer: Layer) -> RescaleAxes | None:
        """For :attr:`rescale_role` "weights": where a per-channel factor goes in this layer's ``W``
        (DAG layout), or None when this layer's channels cannot be rescaled."""
        raise NotImplementedError(f"{layer.op} has no {RESCALE!r} capability")

    def absorb_scale(self, layer: Layer, scale: np.ndarray) -> Layer | None:
        """This layer with a following per-output-channel ``scale`` folded into its weights, or None.

        Used by the lifted network only: ``|s·w|**q = |s|**q·|w|**q``, so folding a scale (the ``s``
        of a BatchNormalization) is exact there, whereas folding a bias is not.
        """
        return None

    def absorb_input_scale(self, layer: Layer, scale: np.ndarray, in_shape: tuple[int, ...]) -> Layer | None:
        """This layer with a preceding per-input-channel ``scale`` (``f(s ⊙ x)``) folded into its weights,
        or None: ``W ∗ (s ⊙ x) = (W·s) ∗ x`` along the weight's input-channel axis. Exact on the function
        for a linear layer (a zero pad stays zero either way); used by :mod:`onnx_pathlift.canonical`."""
        return None


class RescaleAxes(NamedTuple):
    """Where a per-channel factor goes in a "weights" layer (:meth:`LayerOp.rescale_axes`)."""

    channel: int  #: the channel axis (≥ 0) of its input and output activations
    out: int  #: the axis of ``W`` along its output channels (λ multiplies them)
    into: int | None  #: the axis of ``W`` along its input channels (1/λ), None if they cannot take it
    flat: bool  #: whether it reads channels flattened over spatial positions (a dense layer's rows)


class ParameterFree(LayerOp):
    """A layer op without parameters: its two-stream form is itself on each stream (``Δ_out = f(Δ)``)."""

    def split_params(self, a: Layer, b: Layer) -> None:
        return None


class OneLipschitz(LayerOp):
    """A layer op that is 1-Lipschitz in ℓ∞ on each input branch: ReLU, max/average pools, neuron
    moves (reshape, transpose, pad, selections), concat, sum (its branches add: :meth:`linf_combine`),
    a graph input (the reference: gain 1)."""

    def linf_gain(self, layer: Layer) -> float:
        return 0.0


class MovesNeurons(ParameterFree, OneLipschitz):
    """A layer whose every output neuron copies one input neuron with weight 1 (reshape, transpose):
    its lifted form is the op itself on the lifted tensor, scale unchanged."""

    accepts_dirty = True
    adjoint_moves = True
    keeps_sign = True

    def adjoint(self, b, layer, xs, g, in_shapes):
        return [replace(g, tensor=self.move_back(b, layer, g.tensor, in_shapes[0]))], {}

    def move_back(self, b: GraphBuilder, layer: Layer, t: str, in_shape: tuple[int, ...]) -> str:
        """The inverse neuron movement, as ONNX nodes (the adjoint of a permutation is its inverse)."""
        raise NotImplementedError

    def map_axis(self, layer: Layer) -> int | str | None:
        return ANY

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        """The same movement of the tensor and, for a static exponent map (given at the input's
        full shape), of the map."""
        k = xs[0].log2
        if isinstance(k, np.ndarray):
            k = compact(self.move(layer, np.asarray(k, dtype=np.float64)), layer.shape)
        return replace(xs[0], tensor=self.emit(b, layer, [xs[0].tensor]), log2=k)

    def bound(self, layer: Layer, bs: list[np.ndarray], shapes: list[tuple[int, ...]], q: float) -> np.ndarray:
        if bs[0].size == 1:
            return bs[0].reshape(())
        lu, shape = bs[0], shapes[0]
        padded = lu.reshape((1,) * (len(shape) - lu.ndim) + lu.shape)
        if padded.shape[0] == 1 and shape[0] > 1 and self.keeps_batch(layer, shape):  # one sample is enough
            return self.move(replace(layer, shape=(1, *layer.shape[1:])), np.broadcast_to(padded, (1, *shape[1:])))
        return self.move(layer, np.broadcast_to(lu, shape))

    def keeps_batch(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        """Whether axis 0 maps to axis 0 unchanged (then bounds are computed on one sample)."""
        return False

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        """The same neuron movement applied to a numpy array of the input's shape."""
        raise NotImplementedError



def along_axis(lu: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Max of a bound (broadcastable to ``shape``) over every axis but ``axis``: a vector of ``shape[axis]``."""
    lu = np.asarray(lu, dtype=np.float64)
    lu = lu.reshape((1,) * (len(shape) - lu.ndim) + lu.shape)
    axis %= len(shape)
    others = tuple(i for i in range(lu.ndim) if i != axis and lu.shape[i] > 1)
    v = (lu.max(axis=others, keepdims=True) if others else lu).reshape(-1)
    return np.broadcast_to(v, (shape[axis],)) if v.size == 1 else v


def log2_weighted_sum(a: np.ndarray, rows: np.ndarray, q: float, lu: np.ndarray) -> np.ndarray:
    """An upper bound on ``log2(|rows|**q @ 2**lu)`` for ``rows`` (outputs × inputs, a view of the
    parameter ``a``) whose powers lose no entry to underflow, without overflow (terms
    ``2**(lu − max lu)`` that underflow are bounded by :func:`log2_outward`); float64, a block of rows
    at a time (:func:`~onnx_pathlift.graph.pow_row_reduce`)."""
    top = float(np.max(lu, initial=-np.inf))
    if not np.isfinite(top):
        return np.full(rows.shape[0], -np.inf)
    fast = log2_power_matvec32(a, rows, q, lu)
    if fast is not None:
        return fast
    low = float(np.min(lu[np.isfinite(lu)]))  # -inf terms are exact zeros, not underflow
    weights = np.exp2(lu - top)
    sums, e = pow_row_reduce(a, rows, q, lambda m: m @ weights)
    return log2_outward(sums, rows.shape[1], 0.0, low - top) + top + e


def log2_max_row_sum(a: np.ndarray, rows: np.ndarray, q: float) -> float:
    """An upper bound on ``log2 max_o Σ_i |rows[o, i]|**q · 2**-e`` (``e`` of
    :func:`~onnx_pathlift.graph.pow_exponent`; ``rows`` a 2-D view of the parameter ``a``): the
    largest lifted output of ``|a|**q · 2**-e`` on an all-ones input (``-inf`` when ``a`` is 0)."""
    top = float(np.max(log2_weighted_sum(a, rows, q, np.zeros(rows.shape[1])), initial=-np.inf))
    return top - pow_exponent(a, q)[0] if np.isfinite(top) else -math.inf


#: float32 unit roundoff
_U32 = 2.0**-24


def log2_power_matvec32(a: np.ndarray, rows: np.ndarray, q: float, lu: np.ndarray) -> np.ndarray | None:
    """An upper bound on ``log2(|rows|**q @ 2**lu)`` (``rows``: outputs × inputs, a view of the float32
    parameter ``a``; ``lu`` per input) computed in float32, a block of rows at a time, or None where
    this does not apply (then the float64 route is taken). For q = 1, 2 when every nonzero product
    ``|w|**q · 2**(lu − max lu)`` is a normal float32 and no sum can overflow, with fewer than 2^20
    inputs per output; a row of zero products gives ``-inf``, exactly.

    Error (Higham, nonnegative terms, no underflow): with ``v = fl32(2**(lu − top))`` (relative error
    ≤ u), ``|w|²`` rounded once (≤ u), and the float32 dot products of ``n`` terms (``ŝ ≥ s(1 − γ_n)``
    in any summation order, ``γ_n = nu/(1 − nu)``): ``s ≤ ŝ / ((1 − u)² (1 − γ_n))``, rounded up once
    more in float64 (``1 + 2**-48`` covers float64's ``exp2`` and this formula), and ``2**-40`` added to
    the log2 (its own rounding)."""
    n = rows.shape[1]
    top = float(np.max(lu, initial=-np.inf))
    if q not in (1.0, 2.0) or a.dtype != np.float32 or not 0 < n < 2**20 or not np.isfinite(top):
        return None
    low_w, top_w = log2_range(a)
    if top_w == -math.inf:
        return np.full(rows.shape[0], -np.inf)
    spread = float(lu[np.isfinite(lu)].min()) - top  # each factor 2**(lu − top) and each product: normal float32
    if q * top_w + math.log2(n) > 125 or spread < -125 or q * low_w + spread < -125:
        return None
    sums = _power_matvec(rows, q, np.exp2(lu - top).astype(np.float32))
    gamma = n * _U32 / (1.0 - n * _U32)
    with np.errstate(divide="ignore"):
        return np.log2(sums / ((1.0 - _U32) ** 2 * (1.0 - gamma)) * (1.0 + 2.0**-48)) + (top + 2.0**-40)


def _power_matvec(rows: np.ndarray, q: float, v: np.ndarray) -> np.ndarray:
    """``|rows|**q @ v`` in float32, returned in float64. Rows laid out contiguously (or their
    transpose) are powered whole, in memory order, and the powers kept for the lift of the same
    weights (:func:`~onnx_pathlift.graph.power32`); other layouts a block of rows at a time."""
    for src, transposed in ((rows, False), (rows.T, True)):
        if src.flags.c_contiguous:
            m = power32(src, q, keep=True)
            return np.asarray(v @ m if transposed else m @ v, dtype=np.float64)
    step = max(1, 2**22 // rows.shape[1])
    sums = np.empty(rows.shape[0])
    for i in range(0, rows.shape[0], step):
        sums[i:i + step] = power32(rows[i:i + step], q) @ v
    return sums


def log2_rows(w: np.ndarray, q: float, lu: np.ndarray) -> np.ndarray:
    """An upper bound on ``log2 Σ_c |w[o, c]|**q · 2**lu[o, c]`` per row ``o`` (``lu`` broadcast against
    ``w``), entry by entry in the log domain (each row scaled by its own largest term, so nothing that
    matters underflows), in chunks of rows to bound memory. For the ranges where one scale per
    tensor would lose entries (large q, extreme weights)."""
    out = np.empty(w.shape[0])
    n = w.shape[1] if w.ndim > 1 else 1
    step = max(1, 2**22 // max(n, 1))
    lu = np.broadcast_to(lu, w.shape)
    for i in range(0, w.shape[0], step):
        with np.errstate(divide="ignore", invalid="ignore"):
            lg = q * np.log2(np.abs(w[i:i + step].astype(np.float64))) + lu[i:i + step]
        top = lg.max(axis=1, initial=-np.inf)
        safe = np.where(np.isfinite(top), top, 0.0)
        sums = np.exp2(lg - safe[:, None]).sum(axis=1)
        out[i:i + step] = np.where(np.isfinite(top), log2_outward(sums, n, 1.0, 0.0) + safe, -np.inf)
    return out


def log2_outward(sums: np.ndarray, n: int, lost: float, low: float) -> np.ndarray:
    """``log2`` of non-negative float64 sums of ``n`` products, rounded up: the sums' rounding
    (``n·2**-52`` relative) and, where a factor may have underflowed (``lost`` > 0, or input terms
    ``2**low`` below float64's range), ``n·2**-1070`` added."""
    slack = n * 2.0**-1070 if (lost > 0 or low < -1000) else 0.0
    with np.errstate(divide="ignore"):
        return np.log2(sums * (1.0 + (n + 2) * 2.0**-52) + slack)


def channel_vector(scale: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``scale`` as a vector along ``axis`` of ``out_shape`` if it broadcasts along that axis only."""
    s = np.asarray(scale)
    if s.ndim > len(out_shape):
        return None
    padded = (1,) * (len(out_shape) - s.ndim) + s.shape
    axis %= len(out_shape)
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, out_shape[axis]):
        return None  # it varies along other axes, or widens this one (broadcasting the layer's output)
    return np.broadcast_to(s.reshape(-1), (out_shape[axis],))


#: :meth:`LayerOp.map_axis` of a layer whose ``lift`` carries exponent maps itself
ANY = "any"


def layer_op(cls: type[LayerOp]) -> type[LayerOp]:
    """Register a :class:`LayerOp` subclass under its ``op`` key."""
    if cls.op in LAYER_OPS:
        raise ValueError(f"two layer ops named {cls.op}")
    LAYER_OPS[cls.op] = cls()
    return cls


class ImportContext:
    """What an import rule sees: constants, static shapes, and the DAG being built."""

    def __init__(self, prepared: Prepared, dag: Dag):
        self.prepared = prepared
        self.dag = dag
        self.producer: dict[str, str] = {}  # ONNX tensor name -> DAG layer name
        self.used: set[str] = set()  # tensors read by live nodes or analysed as outputs

    def const(self, name: str) -> np.ndarray | None:
        """The folded constant value of a tensor, or None if it is an activation."""
        return self.prepared.consts.get(name) if name else None

    def param(self, node: NodeProto, index: int, what: str, weight: bool = False) -> np.ndarray:
        """Input ``index`` of ``node`` as a float64 parameter; refuses if it is not a constant.

        ``weight``: a kernel or weight matrix stored in float32 (or narrower) stays float32, without a
        copy. Every float32 is exact in float64; each computation on weights that rounds upcasts first
        (``pow_scaled``, ``scaled_power``, ``log2_rows``, the sums of ``linf_gain``, ``split_weight``),
        and compare upcasts both networks (:func:`onnx_pathlift.dag.Dag.float64_params`)."""
        name = node.input[index] if index < len(node.input) else ""
        value = self.const(name)
        if value is None:
            raise RefuseNode(f"its {what} ({name!r}) is computed at run time, not a constant")
        if value.dtype.kind not in "fiu":
            raise RefuseNode(f"its {what} ({name!r}) has non-numeric type {value.dtype}")
        narrow = weight and value.dtype.kind == "f" and value.dtype.itemsize <= 4
        value = np.asarray(value, dtype=np.float32 if narrow else np.float64)
        if not np.all(np.isfinite(value)):
            bad = np.argwhere(~np.isfinite(value))[0]
            raise RefuseNode(f"its {what} ({name!r}) holds NaN/Inf (first at index {tuple(int(i) for i in bad)})")
        return value

    def act(self, name: str) -> str:
        """The DAG layer that produces activation tensor ``name``."""
        if name not in self.producer:
            raise RefuseNode(f"input {name!r} is neither a constant nor a supported activation")
        return self.producer[name]

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.prepared.shapes.get(name)
        if shape is None:
            raise RefuseNode(f"tensor {name!r} has no static shape (try --input-shape)")
        return shape

    def attrs(self, node: NodeProto) -> dict[str, Any]:
        """The node's attributes, normalised (:func:`attributes` at the model's opset)."""
        return attributes(node, self.prepared.opset)

    def activations(self, node: NodeProto) -> list[str]:
        """Names of the node's inputs that are activations (not constants, not empty)."""
        return [n for n in node.input if n and n not in self.prepared.consts]

    def add(
        self,
        node: NodeProto,
        op: str,
        inputs: list[str],
        shape: tuple[int, ...],
        params: dict[str, np.ndarray] | None = None,
        attrs: dict[str, Any] | None = None,
        suffix: str = "",
        origins: dict[str, tuple[str, bool]] | None = None,
    ) -> str:
        """Add a layer computed by ``node``; with no suffix it produces the node's first output."""
        name = node.output[0] + suffix
        while name in self.dag.graph:
            name += "'"
        layer = Layer(name, op, inputs, tuple(shape), params or {}, attrs or {}, source=node.name or node.output[0],
                      origins=origins or {})
        self.dag.add(layer)
        if not suffix:
            self.producer[node.output[0]] = name
        return name

    def only_first_output(self, node: NodeProto, what: str) -> None:
        """Refuse a node whose secondary outputs (indices, masks, running stats) are used."""
        for extra in node.output[1:]:
            if extra and extra in self.used:
                raise RefuseNode(f"its output {extra!r} ({what}) is used; only the main output is supported")

    def alias(self, tensor: str, layer: str) -> None:
        """Tensor ``tensor`` is the same activation as layer ``layer`` (Identity, Dropout, ...)."""
        self.producer[tensor] = layer


def _decoded(value: Any) -> Any:
    """An attribute value with its strings (bytes in the protobuf) decoded."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


@cache
def _schema_defaults(op_type: str, domain: str, opset: int) -> dict[str, Any]:
    """The defaults the op's schema (the version in force at ``opset``) gives its attributes."""
    try:
        schema = defs.get_schema(op_type, opset, domain)
    except defs.SchemaError:
        return {}
    return {name: _decoded(helper.get_attribute_value(attr.default_value))
            for name, attr in schema.attributes.items() if attr.default_value.type != AttributeProto.UNDEFINED}


def attributes(node: NodeProto, opset: int) -> dict[str, Any]:
    """The node's attributes as Python values, normalised once: strings decoded, and every attribute
    its ONNX schema at ``opset`` has a default for filled with that default when the node omits it
    (float defaults are float32 values, as the runtime reads them)."""
    given = {a.name: _decoded(helper.get_attribute_value(a)) for a in node.attribute}
    defaults = _schema_defaults(node.op_type, node.domain if node.domain != "ai.onnx" else "", opset)
    return {**{k: list(v) if isinstance(v, list) else v for k, v in defaults.items()}, **given}


def operand(node: NodeProto, i: int, table: dict):
    """``table``'s entry (a shape or a constant) for the node's input ``i``, None if absent or unknown."""
    return table.get(node.input[i]) if i < len(node.input) and node.input[i] else None


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` one way (ONNX unidirectional broadcasting)."""
    return len(shape) <= len(target) and all(d in (1, t) for d, t in zip(shape[::-1], target[::-1]))


def pads_problem(a: dict[str, Any]) -> str | None:
    """A conv or pool node may not set both explicit ``pads`` and an ``auto_pad`` other than NOTSET."""
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode(errors="replace") if isinstance(auto_pad, bytes) else auto_pad
    if "pads" in a and auto_pad not in ("", "NOTSET"):
        return f"it sets both pads {a['pads']} and auto_pad {auto_pad!r}"
    return None


def spatial_attrs(a: dict[str, Any], in_spatial: tuple[int, ...], kernel: tuple[int, ...]) -> dict[str, list[int]]:
    """Strides, dilations and explicit pads (``auto_pad`` resolved) of a conv or pool node (``a``: its
    normalised attributes)."""
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    auto_pad = a["auto_pad"]
    if auto_pad in ("", "NOTSET"):
        pads = list(a.get("pads", [0] * (2 * n)))
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                  for size, k, s, d in zip(in_spatial, kernel, strides, dilations)]
        pads = split_pads(totals, odd_at_end=auto_pad == "SAME_UPPER")
    else:
        raise RefuseNode(f"unknown auto_pad {auto_pad!r}")
    return {"strides": strides, "dilations": dilations, "pads": pads}


def split_pads(totals: list[int], odd_at_end: bool) -> list[int]:
    """Begin pads then end pads, each total padding halved; an odd unit goes at the end (SAME_UPPER)
    or at the beginning (SAME_LOWER, and ConvTranspose's output_shape)."""
    small, large = [t // 2 for t in totals], [t - t // 2 for t in totals]
    return small + large if odd_at_end else large + small


def lift_bias(b: LiftBuilder, layer: Layer, y: Scaled, q: float, k_out=None) -> Scaled:
    """Add the lifted bias ``|B|**q`` a conv or dense layer took over from the affine layer after it
    (static scales: at exponent ``k_out``, default the layer's target)."""
    if "B" not in layer.params or not np.any(layer.params["B"]):
        return y
    return b.add_bias(y, lifted_log2(layer.params["B"], q), len(layer.shape), k_out)


def channel_bias(layer: Layer, q: float, k_out: Exponent, axis: int) -> np.ndarray | None:
    """Static scales: the lifted bias ``|B|**q`` of a conv or dense layer at its output's exponent map
    ``k_out``, as the 1-D constant (one value per index of output ``axis``) that Conv's ``B`` or Gemm's
    ``C`` input takes; None where the layer has no bias or it varies along another axis (then
    :func:`lift_bias` adds it). The same values and the same one rounding of the sum as that Add,
    without its pass over the output."""
    if "B" not in layer.params or not np.any(layer.params["B"]):
        return None
    t = bias_values(lifted_log2(layer.params["B"], q), k_out)
    rank = len(layer.shape)
    if t.ndim > rank:
        return None
    t = t.reshape((1,) * (rank - t.ndim) + t.shape)
    if any(n != 1 for i, n in enumerate(t.shape) if i != axis):
        return None
    return np.ascontiguousarray(np.broadcast_to(t.reshape(-1), (layer.shape[axis],)))


def bias_bound(layer: Layer, lu: np.ndarray, q: float) -> np.ndarray:
    """The static bound ``lu`` of a conv or dense layer's output, with its own bias added."""
    if "B" not in layer.params:
        return lu
    with np.errstate(divide="ignore"):
        return np.logaddexp2(lu, q * np.log2(np.abs(layer.params["B"])))


def split_weight(a: Layer, b: Layer, name: str = "W") -> tuple[dict, dict, dict]:
    """``split_params`` of a layer whose only parameter is the weight ``name`` (no bias)."""
    wa, wb = np.abs(a.params[name], dtype=np.float64), np.abs(b.params[name], dtype=np.float64)
    lo, hi = np.minimum(wa, wb), np.maximum(wa, wb)
    return {name: lo}, {name: hi}, {name: hi - lo}


def unbroadcast(b: GraphBuilder, t: str, shape: tuple[int, ...], to: tuple[int, ...]) -> str:
    """Sum ``t`` (of ``shape``) over the axes along which a tensor of shape ``to`` was broadcast."""
    if tuple(shape) == tuple(to):
        return t
    padded = (1,) * (len(shape) - len(to)) + tuple(to)
    axes = [i for i, (s, d) in enumerate(zip(shape, padded)) if d == 1 and s != 1]
    if axes:
        t = b.op("ReduceSum", [t, b.ints(axes, "axes")], "unbroadcast", keepdims=1)
    return b.op("Reshape", [t, b.ints(to, "shape")], "unbroadcast")


def product_exponent(b: LiftBuilder, x: Scaled, g: Scaled, e: int) -> str:
    """Exponent of a forward mass times a backward mass times a weight of exponent ``e``."""
    return b.shift(Scaled(x.tensor, b.op("Add", [x.log2, g.log2], "k")), e).log2


def transpose_attrs(a: dict[str, Any], kernel: tuple[int, ...], x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                    pads: list[int] | None = None, group: int | None = None) -> dict[str, Any]:
    """ConvTranspose attributes that undo a Conv (or sum-pool) of these attributes exactly: the
    adjoint maps back to the input's spatial size (``output_padding`` covers the positions the
    forward windows never reached)."""
    n = len(kernel)
    pads = list(a["pads"] if pads is None else pads)
    dil = a.get("dilations", [1] * n)
    covered = [(y_shape[2 + i] - 1) * a["strides"][i] - pads[i] - pads[n + i] + dil[i] * (kernel[i] - 1) + 1 for i in range(n)]
    return {"strides": a["strides"], "pads": pads, "dilations": dil, "group": a.get("group", 1) if group is None else group,
            "kernel_shape": list(kernel), "output_padding": [x_shape[2 + i] - covered[i] for i in range(n)]}
