"""Pieces of lifted and two-stream forms shared by op modules: biases, weight splits, broadcasting."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..graph.builder import GraphBuilder, LiftBuilder, Scaled
from ..graph.exponents import Exponent, bias_values, lifted_log2
from ..ir.dag import Layer


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
    if "B" not in layer.params or not layer.params["B"].any():
        return None
    t = bias_values(lifted_log2(layer.params["B"], q), k_out)
    rank = len(layer.shape)
    if t.ndim > rank:
        return None
    t = t.reshape((1,) * (rank - t.ndim) + t.shape)
    if any(n != 1 for i, n in enumerate(t.shape) if i != axis):
        return None
    return t.reshape(-1) if t.size == layer.shape[axis] else np.ascontiguousarray(np.broadcast_to(t.reshape(-1), (layer.shape[axis],)))


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
