"""Random neuron-wise rescaling that keeps the function: the paper's test of invariance.

For a hidden channel of a conv/dense layer C whose only way onward is a chain of per-channel layers
(bias or BatchNormalization affine, ReLU, pools, a flatten) into one conv/dense layer D: multiply
C's incoming weights and every bias on the chain by λ > 0 and D's weights from that channel by 1/λ.
ReLU and pools commute with a positive per-channel factor, so the function is unchanged, and so is
the path-lifting Φ; the weights' magnitudes are not. Channels on other structures (skips, concats,
grouped convs downstream) are left alone and counted. Each layer op declares its part
(:attr:`~onnx_pathlift.ops.LayerOp.rescale_role`, :meth:`~onnx_pathlift.ops.LayerOp.rescale_axes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, numpy_helper

from .dag import Dag, Layer
from .ops import LAYER_OPS, require
from .ops.layer_op import RescaleAxes


@dataclass
class RescaleReport:
    neurons: int  # channels rescaled
    layers: int  # conv/dense layers whose output channels were rescaled


def _role(layer: Layer) -> str | None:
    return LAYER_OPS[layer.op].rescale_role


def _axes(layer: Layer) -> RescaleAxes | None:
    """Where a per-channel factor goes in ``layer``'s weight, None if it has no "weights" role."""
    return LAYER_OPS[layer.op].rescale_axes(layer) if _role(layer) == "weights" else None


def _chain(dag: Dag, c: Layer, consumers: dict[str, list[str]]) -> tuple[list[Layer], Layer, int] | None:
    """The per-channel chain from ``c`` to the next conv/dense layer, with the channel block size
    in that layer's input (a flatten spreads one channel over its spatial positions)."""
    path, cur, block = [], c, 1
    outputs = set(dag.outputs.values())
    axis = _axes(c).channel
    while True:
        if cur.name in outputs or len(consumers.get(cur.name, [])) != 1:
            return None
        nxt = dag.layer(consumers[cur.name][0])
        into = _axes(nxt)
        if _role(nxt) == "per_channel":
            path.append(nxt)
        elif _role(nxt) == "flatten" and len(nxt.shape) == 2 and len(cur.shape) >= 2 and nxt.shape[0] == cur.shape[0] \
                and axis == 1:
            block = int(np.prod(cur.shape[2:]))  # (N, C, ...) flattened to (N, C·S): channel o → o·S ... o·S+S−1
            path.append(nxt)
        elif into is not None and into.into is not None and (into.flat or (block == 1 and axis == into.channel)):
            return path, nxt, block
        else:
            return None
        cur = nxt


def _scale_initializer(arrays: dict[str, np.ndarray], origin: tuple[str, bool], factor: np.ndarray, axis: int) -> None:
    """Multiply an initializer along ``axis`` (of its DAG layout; transposed origins flip a 2-D axis)."""
    name, transposed = origin
    w = arrays[name]
    if transposed:
        axis = 1 - axis
    axis %= w.ndim
    if w.shape[axis] != factor.size:
        raise ValueError(f"{name}: axis {axis} has {w.shape[axis]} entries, expected {factor.size}")
    shape = [1] * w.ndim
    shape[axis] = -1
    arrays[name] = (w * factor.reshape(shape)).astype(w.dtype)


def rescale(model: ModelProto, dag: Dag, seed: int = 0, low: float = 1 / 8, high: float = 8.0) -> tuple[ModelProto, RescaleReport]:
    """A copy of ``model`` with random per-channel factors λ ~ log-uniform[low, high]."""
    require(dag, "rescale")
    rng = np.random.default_rng(seed)
    out = ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    arrays = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    consumers: dict[str, list[str]] = {}
    for layer in dag.layers():
        for i in layer.inputs:
            consumers.setdefault(i, []).append(layer.name)
    neurons = layers = 0
    for c in list(dag.layers()):
        axes = _axes(c)
        if axes is None or "W" not in c.origins or c.origins["W"][0] not in arrays:
            continue
        found = _chain(dag, c, consumers)
        if found is None:
            continue
        path, d, block = found
        biases = [(layer, key) for layer in path if layer.op == "affine" for key in ("bias", "mean") if key in layer.origins]
        if any(layer.op == "affine" and "bias" in layer.params and "bias" not in layer.origins for layer in path):
            continue  # a bias we cannot trace back to an initializer
        if any(layer.origins[key][0] not in arrays for layer, key in biases) or d.origins.get("W", ("", False))[0] not in arrays:
            continue
        channels = c.shape[axes.channel]
        lam = np.exp(rng.uniform(np.log(low), np.log(high), channels))
        try:
            staged = dict(arrays)
            _scale_initializer(staged, c.origins["W"], lam, axes.out)
            for layer, key in biases:
                name = layer.origins[key][0]
                axis = staged[name].ndim - (len(layer.shape) - axes.channel)  # channel axis in the broadcast constant
                _scale_initializer(staged, (name, False), lam, axis)
            inv = np.repeat(1.0 / lam, block)
            _scale_initializer(staged, d.origins["W"], inv, _axes(d).into)
        except ValueError:
            continue  # a broadcast layout this rule does not handle: leave the channel alone
        arrays = staged
        neurons += channels
        layers += 1
    for name, t in inits.items():
        t.CopyFrom(numpy_helper.from_array(arrays[name], name))
    return out, RescaleReport(neurons, layers)
