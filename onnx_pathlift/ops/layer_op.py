"""LayerOp: one layer type and what the analyses need of it, with the capabilities derived from the methods
it overrides, and the mixins that give common algebra (ParameterFree, OneLipschitz, MovesNeurons).

A layer op's :data:`capabilities <LayerOp.capabilities>` are derived from the methods it overrides
(:data:`CAPABILITY_METHODS`); every analysis checks a DAG against them before it emits anything
(:func:`onnx_pathlift.ops.capabilities.require`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ..graph.builder import GraphBuilder, LiftBuilder, Scaled
from ..graph.exponents import compact
from ..ir.dag import Layer
from .exact_api import LogPass, Logs

#: what a layer op can do: lifted (re-emitted, lifted, statically bounded), transposed (path-magnitude
#: scores), split into two streams (path-metric bound), bounded in ℓ∞ (naive Lipschitz bound),
#: rescaled per channel (:mod:`onnx_pathlift.analyses.rescale`)
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
    #: role in a random neuron-wise rescaling (:mod:`onnx_pathlift.analyses.rescale`): "weights" (its output
    #: channels take a factor λ on their incoming weights, its input channels 1/λ: :meth:`rescale_axes`),
    #: "per_channel" (commutes with a positive per-channel factor: bias, BatchNormalization, ReLU, pools),
    #: "flatten" (may flatten channels into a dense layer's rows); None: a rescaled chain stops here
    rescale_role: ClassVar[str | None] = None
    #: for "per_channel": the parameters a per-channel factor multiplies (``λ(s·x + t) = s·(λx) + λt``: an
    #: affine layer's bias), and the origins they are traced back to (a BatchNormalization's β and mean)
    rescaled_params: ClassVar[tuple[str, ...]] = ()
    #: whether an activation quantizer (QuantizeLinear→DequantizeLinear) may fold this layer into its
    #: clipping range, so that two spellings of one model differ by it (a ReLU; see :func:`onnx_pathlift.analyses.metric.pair_layers`)
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
        the activation-quantization bound (:mod:`onnx_pathlift.analyses.quant_bound`) uses it."""
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
        least the neuron's fan-in plus one. The error budget (:mod:`onnx_pathlift.graph.budget`) sums them."""
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
        for a linear layer (a zero pad stays zero either way); used by :mod:`onnx_pathlift.rewrite.canonical`."""
        return None

    # The canonical spelling (:mod:`onnx_pathlift.rewrite.canonical` asks these; each is exact on the function).

    def respelled(self, layer: Layer) -> Layer:
        """The layer in its canonical spelling (itself, unless an op has two spellings of one function)."""
        return layer

    def is_identity(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        """Whether the layer computes ``y = x`` on its first input, of shape ``in_shape``."""
        return False

    def lifts_to_identity(self, layer: Layer) -> bool:
        """Whether the lifted layer is ``y = x`` on its one input at every q: ``lift`` returns that input's
        value (its exponent map at most re-compacted, never moved) and ``bound`` that input's bound,
        unchanged (the lifted ReLU; an affine layer whose parameters were all folded away)."""
        return False

    def compose(self, first: Layer, second: Layer) -> Layer | None:
        """``second ∘ first`` as one layer of this op (``second`` is of this op and reads ``first``, which
        feeds nothing else), reading ``first``'s inputs; None when they do not compose."""
        return None

    def split_scale(self, layer: Layer, scale_first: bool) -> tuple[np.ndarray, Layer | None] | None:
        """A per-channel scale ``s`` factored out of the layer: ``(s, rest)`` with ``layer = rest ∘ (s ⊙ ·)``
        when ``scale_first``, else ``layer = (s ⊙ ·) ∘ rest`` (then ``s`` has no zero); ``rest`` None when it
        is the identity. None when the layer has no such scale."""
        return None

    def row_params(self, layer: Layer, rows: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """When the layer acts on each row of its input's last axis alike (so a reshape keeping that axis
        commutes with it): its parameters for an input of shape ``(*rows, last)``; else None."""
        return None

    def keeps_rows(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        """Whether the layer only regroups the rows of its input's last axis, keeping that axis."""
        return False

    def full_rank(self, layer: Layer) -> Layer:
        """The layer with its broadcast parameters laid out at the layer's full rank (itself by default)."""
        return layer

    # The exact float64 fallback (:mod:`onnx_pathlift.ops.exact_api`, driven by :mod:`onnx_pathlift.backend.exact`).

    def exact(self, run: LogPass, layer: Layer, xs: list[Logs], in_shapes: list[tuple[int, ...]],
              feeds: dict[str, np.ndarray]) -> Logs:
        """The lifted layer in the log domain: ``log2`` of its output neurons and their error bound, given
        its inputs' (``feeds``: log2 of the graph's lifted inputs). A layer op without it makes the fallback
        refuse the DAG."""
        raise NotImplementedError(f"{layer.op} has no exact form")

    def exact_work(self, layer: Layer, in_shapes: list[tuple[int, ...]], inf: bool) -> int:
        """The ``exp2`` (at q = ∞, ``inf``: max-plus terms) :meth:`exact` evaluates: by default one per
        entry of its output or of its largest input."""
        size = math.prod(layer.shape)
        return max(size, *(math.prod(s) for s in in_shapes)) if in_shapes else size


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

    def exact(self, run, layer, xs, in_shapes, feeds):
        """The same movement of the logs (exact: no error added)."""
        return np.ascontiguousarray(self.move(layer, xs[0][0])).reshape(layer.shape), max(e for _, e in xs)


#: :meth:`LayerOp.map_axis` of a layer whose ``lift`` carries exponent maps itself
ANY = "any"
