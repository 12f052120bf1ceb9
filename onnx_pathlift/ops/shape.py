"""Layers that only move neurons: reshape-likes, Transpose, Concat, and pure aliases.

Algebra: each output neuron copies one input neuron with weight 1 (Concat stacks its inputs), so
the lifted layer is the same op on the lifted tensors (Concat after bringing its inputs to one
power-of-two scale). Flatten, Reshape, Squeeze and Unsqueeze are all re-emitted as a Reshape to the
static output shape; Identity, Dropout (inference) and float-to-float Cast are aliases.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import TensorProto, helper

from ..errors import PathliftError, Refusal, RefuseNode, UnsupportedModelError
from ..fileio.read import FLOAT_TYPES
from ..graph.bounds import along_axis
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled, on_axis
from ..graph.exponents import compact
from ..ir.dag import Layer
from .context import ImportContext, attributes, operand
from .layer_op import ANY, MovesNeurons, OneLipschitz, ParameterFree
from .registry import channel_rule, head_role, imports, layer_op, spec_rule


@layer_op
class Reshape(MovesNeurons):
    op = "reshape"
    kind = "reshape"
    rescale_role = "flatten"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("Reshape", [xs[0], b.ints(layer.shape, "shape")], "reshape")

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        return values.reshape(layer.shape)

    def keeps_batch(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return len(layer.shape) > 0 and layer.shape[0] == in_shape[0]

    def move_back(self, b, layer, t, in_shape):
        return b.op("Reshape", [t, b.ints(in_shape, "shape")], "adj")


@layer_op
class Transpose(MovesNeurons):
    op = "transpose"
    kind = "reshape"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("Transpose", xs, "transpose", perm=layer.attrs["perm"])

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        return values.transpose(layer.attrs["perm"])

    def keeps_batch(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return layer.attrs["perm"][0] == 0

    def move_back(self, b, layer, t, in_shape):
        return b.op("Transpose", [t], "adj", perm=[int(i) for i in np.argsort(layer.attrs["perm"])])


@layer_op
class Pad(MovesNeurons):
    """Pad with zeros (a padded neuron starts no path) or by copying border neurons (edge, reflect):
    the lifted layer is the same Pad."""

    op = "pad"
    keeps_sign = False  # as analysed by the activation bound: a padding constant may be negative
    kind = "reshape"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        pads = b.ints(layer.attrs["pads"], "pads")
        return b.op("Pad", [xs[0], pads], "pad", mode=layer.attrs["mode"])

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        n = values.ndim
        width = list(zip(layer.attrs["pads"][:n], layer.attrs["pads"][n:]))
        if layer.attrs["mode"] == "constant":
            return np.pad(values, width, constant_values=-np.inf)  # log2 bound of a zero neuron
        return np.pad(values, width, mode="edge" if layer.attrs["mode"] == "edge" else "reflect")

    def move_back(self, b, layer, t, in_shape):
        if layer.attrs["mode"] != "constant":
            raise PathliftError(f"layer {layer.name!r}: scores through {layer.attrs['mode']} padding are not supported")
        n = len(in_shape)
        starts = np.array(layer.attrs["pads"][:n])
        return b.op("Slice", [t, b.ints(starts, "starts"), b.ints(starts + np.array(in_shape), "ends")], "adj")


@imports("Pad")
def import_pad(node, ctx: ImportContext) -> None:
    a = ctx.attrs(node)
    mode = a["mode"]
    rank = len(ctx.shape(node.input[0]))
    if ctx.prepared.opset < 11:
        pads, value = [int(p) for p in a.get("pads", a.get("paddings", []))], float(a.get("value", 0.0))
    else:
        pads = [int(p) for p in ctx.param(node, 1, "pads")]
        value = float(ctx.param(node, 2, "constant value")) if len(node.input) > 2 and node.input[2] else 0.0
        if len(node.input) > 3 and node.input[3]:  # opset 18: pads of the listed axes only
            axes = [int(ax) % rank for ax in ctx.param(node, 3, "axes")]
            full = [0] * (2 * rank)
            for k, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
            pads = full
    if mode not in ("constant", "edge", "reflect"):
        raise RefuseNode(f"padding mode {mode!r} is not supported")
    if any(p < 0 for p in pads):
        raise RefuseNode("negative pads (cropping) are not supported")
    out_shape, biased = ctx.shape(node.output[0]), mode == "constant" and value != 0.0
    padded = ctx.add(node, "pad", [ctx.act(node.input[0])], out_shape, attrs={"pads": pads, "mode": mode},
                     suffix="/pad" if biased else "")
    if biased:  # the padded neurons are constants: a zero pad, then a bias of `value` on the padded positions only
        x_shape = ctx.shape(node.input[0])
        if pads[0] == pads[rank] == 0:
            x_shape = (1, *x_shape[1:])  # the same for every sample (broadcast along the batch axis)
        bias = np.pad(np.zeros(x_shape), list(zip(pads[:rank], pads[rank:])), constant_values=value)
        ctx.add(node, "affine", [padded], out_shape, {"bias": bias})


@layer_op
class Concat(ParameterFree, OneLipschitz):
    op = "concat"
    keeps_sign = True
    adjoint_moves = True  # a split
    kind = "skip"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("Concat", xs, "concat", axis=layer.attrs["axis"])

    def map_axis(self, layer: Layer) -> str:
        return ANY

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        """Static maps (given at each input's full shape, as broadcast views) are concatenated like the
        tensors, each at the size it repeats (stride 0) elsewhere; one exponent per input (dynamic
        mode, or all ints) is aligned first."""
        axis = layer.attrs["axis"]
        if b.static and any(isinstance(x.log2, np.ndarray) for x in xs):
            rank = len(layer.shape)
            axis %= rank
            maps = [np.asarray(x.log2, dtype=np.float64) for x in xs]
            maps = [m[tuple(slice(None) if d == axis or m.strides[d] else slice(0, 1) for d in range(rank))] for m in maps]
            common = [max(m.shape[d] for m in maps) for d in range(rank)]
            maps = [np.broadcast_to(m, tuple(m.shape[d] if d == axis else common[d] for d in range(rank))) for m in maps]
            return Scaled(b.op("Concat", [x.tensor for x in xs], "concat", axis=axis),
                          compact(np.concatenate(maps, axis=axis), layer.shape))
        tensors, k = b.align(xs)
        return Scaled(b.op("Concat", tensors, "concat", axis=axis), k, max(x.bound for x in xs))

    def adjoint(self, b, layer, xs, g, in_shapes):
        axis = layer.attrs["axis"]
        sizes = b.ints([shape[axis] for shape in in_shapes], "split")
        parts = [b.fresh("adj") for _ in in_shapes]
        b.nodes.append(helper.make_node("Split", [g.tensor, sizes], parts, name=parts[0], axis=axis))
        return [replace(g, tensor=t) for t in parts], {}

    def bound(self, layer, bs, shapes, q):
        """The inputs' bounds along the axis, concatenated: one value when they are all one value (never
        materialised: a 4096-way Concat at the activation limit has 2**28 entries along its axis), else
        refused past :data:`MAX_CONCAT_MAP` entries, counted before allocating."""
        axis, rank = layer.attrs["axis"], len(layer.shape)
        parts = [along_axis(lu, shape, axis) for lu, shape in zip(bs, shapes)]
        values = {float(p[0]) for p in parts if p.size and p.strides == (0,)}
        if len(values) == 1 and all(p.size == 0 or p.strides == (0,) for p in parts):
            return np.full((), values.pop())
        entries = sum(p.size for p in parts)
        if entries > MAX_CONCAT_MAP:
            raise UnsupportedModelError([Refusal(layer.name, "Concat", f"its inputs' bounds differ along axis {axis}: an "
                                         f"exponent map of {entries} entries, over the limit of {MAX_CONCAT_MAP}")])
        return np.concatenate([on_axis(p, rank, axis) for p in parts], axis=axis)


#: the most entries of a Concat's exponent map along its axis (float64: 128 MiB)
MAX_CONCAT_MAP = 1 << 24


channel_rule("flatten", "Flatten", "Reshape")
channel_rule("spatial", "Squeeze", "Unsqueeze")
channel_rule("concat", "Concat")
channel_rule("same", "Identity", "Dropout", "Cast")
channel_rule("pad", "Pad")


@imports("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def import_reshape(node, ctx: ImportContext) -> None:
    x_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if int(np.prod(x_shape)) != int(np.prod(out_shape)):
        raise RefuseNode(f"reshapes {x_shape} to {out_shape}, which changes the number of elements")
    if node.op_type == "Reshape" and ctx.const(node.input[1]) is None:
        raise RefuseNode("its target shape is computed at run time from activations")
    ctx.add(node, "reshape", [ctx.act(node.input[0])], out_shape)


@spec_rule("Transpose")
def transpose_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """``perm`` is a permutation of the input's axes."""
    x, perm = operand(node, 0, shapes), attributes(node, opset).get("perm")
    if x is not None and perm is not None and sorted(perm) != list(range(len(x))):
        return f"its perm {list(perm)} is not a permutation of the axes of its input {x}"
    return None


@imports("Transpose")
def import_transpose(node, ctx: ImportContext) -> None:
    x_shape = ctx.shape(node.input[0])
    perm = [int(p) for p in ctx.attrs(node).get("perm", list(reversed(range(len(x_shape)))))]
    ctx.add(node, "transpose", [ctx.act(node.input[0])], ctx.shape(node.output[0]), attrs={"perm": perm})


@imports("Concat")
def import_concat(node, ctx: ImportContext) -> None:
    out_shape = ctx.shape(node.output[0])
    axis = int(ctx.attrs(node)["axis"]) % len(out_shape)
    inputs = [n for n in node.input if n]
    if any(ctx.const(n) is not None for n in inputs):
        raise RefuseNode("concatenates a constant with activations (constant neurons are not supported)")
    ctx.add(node, "concat", [ctx.act(n) for n in inputs], out_shape, attrs={"axis": axis})


head_role("carrier", "Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


@imports("Identity", "Dropout", "Cast")
def import_alias(node, ctx: ImportContext) -> None:
    if node.op_type == "Dropout":
        ctx.only_first_output(node, "dropout mask")
        if len(node.input) > 2 and node.input[2] and bool(np.asarray(ctx.const(node.input[2])).all()):
            raise RefuseNode("training_mode=True drops neurons at random")
    if node.op_type == "Cast":
        to = int(ctx.attrs(node)["to"])
        if to not in FLOAT_TYPES or ctx.prepared.elem_types.get(node.input[0]) not in FLOAT_TYPES:
            raise RefuseNode(f"casts an activation to {TensorProto.DataType.Name(to)}: not a float-to-float copy")
    ctx.alias(node.output[0], ctx.act(node.input[0]))
