"""Random neuron-wise rescaling that keeps the function: the paper's test of invariance.

For a hidden channel of a conv/dense layer C whose only way onward is a chain of per-channel layers
(bias or BatchNormalization affine, ReLU, pools, reductions that keep the channel axis, a flatten)
into one conv/dense layer D: multiply
C's incoming weights and every bias on the chain by λ > 0 and D's weights from that channel by 1/λ.
ReLU and pools commute with a positive per-channel factor, so the function is unchanged, and so is
the path-lifting Φ; the weights' magnitudes are not. Channels on other structures (skips, concats,
grouped convs downstream) are left alone and counted. Each layer op declares its part
(:attr:`~onnx_pathlift.ops.LayerOp.rescale_role`, :meth:`~onnx_pathlift.ops.LayerOp.rescale_axes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto

from ..frontend.edit import ModelEditor, copy_model
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS, require
from ..ops.layer_op import RescaleAxes


@dataclass
class RescaleReport:
    neurons: int  # channels rescaled
    layers: int  # conv/dense layers whose output channels were rescaled
    shared: int = 0  # channels left alone: an initializer they would scale also feeds another node


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
        if _role(nxt) == "per_channel" and LAYER_OPS[nxt.op].keeps_channel(nxt, axis):
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


def scaled(w: np.ndarray, factor: np.ndarray, axis: int) -> np.ndarray:
    """``w`` times ``factor`` along ``axis`` (same dtype); ValueError when the axis has another length."""
    axis %= w.ndim
    if w.shape[axis] != factor.size:
        raise ValueError(f"axis {axis} has {w.shape[axis]} entries, expected {factor.size}")
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * factor.reshape(shape)).astype(w.dtype)


def _scale_initializer(arrays: dict[str, np.ndarray], origin: tuple[str, bool], factor: np.ndarray, axis: int) -> None:
    """Multiply an initializer along ``axis`` (of its DAG layout; transposed origins flip a 2-D axis)."""
    name, transposed = origin
    try:
        arrays[name] = scaled(arrays[name], factor, 1 - axis if transposed else axis)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


@dataclass(frozen=True)
class Group:
    """The hidden channels of a conv/dense layer ``c`` that may take λ > 0 together: ``c``'s weights along
    ``axes.out`` and every bias on the per-channel ``path`` times λ, ``d``'s weights along its input
    axis times 1/λ (each channel repeated ``block`` times: a flatten)."""

    c: Layer
    axes: RescaleAxes
    path: list[Layer]
    d: Layer
    block: int

    @property
    def channels(self) -> int:
        return self.c.shape[self.axes.channel]

    def bias_axis(self, layer: Layer, bias: np.ndarray) -> int:
        """The channel axis of a chain layer's broadcast bias constant."""
        return bias.ndim - (len(layer.shape) - self.axes.channel)


def groups(dag: Dag) -> list[Group]:
    """Every rescalable channel group of ``dag``, in topological order of ``c`` (see the module doc)."""
    consumers: dict[str, list[str]] = {}
    for layer in dag.layers():
        for i in layer.inputs:
            consumers.setdefault(i, []).append(layer.name)
    out = []
    for c in dag.layers():
        axes = _axes(c)
        found = None if axes is None or "W" not in c.params else _chain(dag, c, consumers)
        if found is not None:
            out.append(Group(c, axes, *found))
    return out


def _initializers(g: Group) -> list[tuple[tuple[str, bool], str | Layer]] | None:
    """The initializers a group scales (origin, what: "W" of c, "D" of d, or the chain layer of a bias),
    None when one of them cannot be traced back to the ONNX file."""
    if "W" not in g.c.origins or "W" not in g.d.origins:
        return None
    rescaled = {layer.name: LAYER_OPS[layer.op].rescaled_params for layer in g.path}
    if any(k in layer.params and k not in layer.origins for layer in g.path for k in rescaled[layer.name]):
        return None  # a bias we cannot trace back to an initializer
    biases = [(layer.origins[key], layer) for layer in g.path for key in rescaled[layer.name] if key in layer.origins]
    return [(g.c.origins["W"], "W"), *biases, (g.d.origins["W"], "D")]


def rescale(model: ModelProto, dag: Dag, seed: int = 0, low: float = 1 / 8, high: float = 8.0) -> tuple[ModelProto, RescaleReport]:
    """A copy of ``model`` with random per-channel factors λ ~ log-uniform[low, high]; the channels of a
    group with an initializer that also feeds another node are left alone (counted)."""
    require(dag, "rescale")
    rng = np.random.default_rng(seed)
    out = copy_model(model)
    editor = ModelEditor(out)
    arrays = {name: editor.get(name) for name in editor.init}
    shared = editor.shared()
    report = RescaleReport(0, 0)
    for g in groups(dag):
        found = _initializers(g)
        if found is None or any(origin[0] not in arrays for origin, _ in found):
            continue
        if any(origin[0] in shared for origin, _ in found):
            report.shared += g.channels
            continue
        lam = np.exp(rng.uniform(np.log(low), np.log(high), g.channels))
        try:
            staged = dict(arrays)
            for (name, transposed), what in found:
                if what == "W":
                    _scale_initializer(staged, (name, transposed), lam, g.axes.out)
                elif what == "D":
                    _scale_initializer(staged, (name, transposed), np.repeat(1.0 / lam, g.block), _axes(g.d).into)
                else:
                    _scale_initializer(staged, (name, False), lam, g.bias_axis(what, staged[name]))
        except ValueError:
            continue  # a broadcast layout this rule does not handle: leave the channel alone
        arrays = staged
        report.neurons += g.channels
        report.layers += 1
    for name, value in arrays.items():
        editor.set(name, value)
    return out, report
