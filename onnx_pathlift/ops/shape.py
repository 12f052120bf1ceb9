"""Layers that only move neurons: reshape-likes, Transpose, Concat, and pure aliases.

Algebra: each output neuron copies one input neuron with weight 1 (Concat stacks its inputs), so
the lifted layer is the same op on the lifted tensors (Concat after bringing its inputs to one
power-of-two scale). Flatten, Reshape, Squeeze and Unsqueeze are all re-emitted as a Reshape to the
static output shape; Identity, Dropout (inference) and float-to-float Cast are aliases. On constant
inputs these ops (and Transpose, any Cast between plain types) fold in numpy (``@folds``, at the end).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from onnx import TensorProto, helper

from ..errors import PathliftError, Refusal, RefuseNode, UnsupportedModelError
from ..fileio.read import FLOAT_TYPES, MAX_RANK
from ..graph.bounds import along_axis
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled, on_axis
from ..graph.exponents import compact
from ..ir.dag import Layer
from .channel_api import ChannelBuilder, Layout, per_channel
from .context import ImportContext, attributes, operand
from .layer_op import ANY, MovesNeurons, OneLipschitz, ParameterFree
from .registry import channel_rule, fold_size, folds, graph_role, head_role, imports, layer_op, spec_rule


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

    def is_identity(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return tuple(layer.shape) == tuple(in_shape)

    def compose(self, first: Layer, second: Layer) -> Layer | None:
        """Two reshapes are the second alone: a reshape keeps the row-major order of the neurons."""
        return replace(second, inputs=list(first.inputs)) if first.op == self.op else None

    def keeps_rows(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return bool(layer.shape) and layer.shape[-1] == in_shape[-1]


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

    def is_identity(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return list(layer.attrs["perm"]) == list(range(len(layer.shape)))

    def compose(self, first: Layer, second: Layer) -> Layer | None:
        """Two transposes are one, by the composed permutation: ``y[i] = x[p₁[p₂[i]]]``."""
        if first.op != self.op:
            return None
        perm = [first.attrs["perm"][p] for p in second.attrs["perm"]]
        return replace(second, inputs=list(first.inputs), attrs={**second.attrs, "perm": perm})


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

    def exact(self, run, layer, xs, in_shapes, feeds):
        """The logs concatenated (exact)."""
        return np.concatenate([v for v, _ in xs], axis=layer.attrs["axis"]), max(e for _, e in xs)


#: the most entries of a Concat's exponent map along its axis (float64: 128 MiB)
MAX_CONCAT_MAP = 1 << 24


channel_rule("Identity", "Dropout", "Cast")(per_channel)


@channel_rule("Flatten")
def flatten_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Flatten (axis 1) of ``(N, C, rest...)``: channel ``c`` becomes a block of ``Π rest`` features."""
    if int(b.attrs(node).get("axis", 1)) != 1:
        return b.opaque(node)
    _flat(b, node, xs[0])


@channel_rule("Reshape")
def reshape_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Reshape to ``(N, C·rest)``: as Flatten; its constant target's entry 1, when it is neither -1
    nor 0 (on an unflattened tensor), is rewritten to the kept width (a computed target pins). A
    reshape that keeps the batch axis and regroups the channel axis is :func:`_regroup`."""
    x, shape_in, shape_out = xs[0], b.shape(node.input[0]), b.shape(node.output[0])
    if len(shape_out) > 2 and len(shape_in) >= 2 and x.axis == 1 and x.block == 1 and shape_in[0] == shape_out[0]:
        return _regroup(b, node, x, shape_out)
    out = _flat(b, node, x)
    if out is None:
        return
    name, target = node.input[1], b.consts.get(node.input[1])
    if target is None or target.shape != (2,):
        return b.pin(out, f"{b.label(node)}: its shape is not a constant")
    if int(target[1]) != -1 and not (int(target[1]) == 0 and out.block == 1):
        if b.owned_or_pin([name], [out], node):
            b.width(name, 1, node.output[0])


def _regroup(b: ChannelBuilder, node, x: Layout, shape_out: tuple[int, ...]) -> None:
    """``(N, C, rest...)`` → ``(N, C', rest'...)`` with ``C'`` = ``C`` (channels kept: ``(N, C)`` →
    ``(N, C, 1, 1)``), ``C/k`` (GroupNorm's ``(N, G, -1)``: slot ``g`` holds the ``k = C/G`` channels
    ``g·k .. g·k + k − 1``, contiguous in row-major order, so only whole groups can go and removable
    counts are multiples of ``C/G``) or ``C·k`` (back: slot ``g`` becomes channels ``g·k ..``). The
    target's entry 1 is rewritten (a constant) or follows a ``Shape`` of a tensor with the output's
    channels, joined to them (computed in the slim model); any other target pins."""
    n = shape_out[1]
    if x.n % n and n % x.n:
        return b.opaque(node)
    out = b.new(node.output[0], n, 1)
    big, small = (x, out) if x.n >= n else (out, x)
    k = big.n // small.n
    b.join(b.slots(big), small.base + np.arange(big.n) // k)
    name, target = node.input[1], b.consts.get(node.input[1])
    if target is None or target.shape != (len(shape_out),):
        return b.pin(out, f"{b.label(node)}: its shape is not a constant")
    shape_of = _shape_source(b, name)
    if shape_of is not None and b.shape(shape_of) == shape_out and b.layouts[shape_of] == Layout(b.layouts[shape_of].base, n, 1):
        return b.join(b.slots(b.layouts[shape_of]), b.slots(out))
    if int(target[1]) not in (-1, 0) and b.owned_or_pin([name], [out], node):
        b.width(name, 1, node.output[0])


def _shape_source(b: ChannelBuilder, name: str) -> str | None:
    """The tensor whose whole shape the source model computes into ``name`` (a ``Shape`` node without
    start/end read by one node alone), if it has a channel layout; else None."""
    source = b.producer(name)
    if source is None or source.op_type != "Shape" or source.attribute or b.uses[name] != 1:
        return None
    return source.input[0] if source.input[0] in b.layouts else None


def _flat(b: ChannelBuilder, node, x: Layout) -> Layout | None:
    """``(N, C, rest...)`` → ``(N, C·rest)``: channel ``c`` becomes a block of ``Π rest`` features
    (None, the node opaque, for any other shape)."""
    shape_in, shape_out = b.shape(node.input[0]), b.shape(node.output[0])
    if x.axis != 1 or len(shape_out) != 2 or shape_out[0] != shape_in[0]:
        b.opaque(node)
        return None
    out = b.new(node.output[0], x.n, 1, x.block * math.prod(shape_in[2:]))
    b.join(b.slots(x), b.slots(out))
    return out


@channel_rule("Squeeze", "Unsqueeze")
def spatial_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Squeeze/Unsqueeze (and Reduce*) over axes after the channel axis keep the channels (a
    reduction without axes reduces all of them: not per channel)."""
    x, axes = xs[0], b.attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = b.consts.get(node.input[1])
    rank = max(len(b.shape(node.input[0])), len(b.shape(node.output[0])))
    if axes is None or x.axis != 1 or x.block != 1 or any(int(a) % rank < 2 for a in np.ravel(axes)):
        return b.opaque(node)
    b.same(node, x)


@channel_rule("Concat", operands="any")
def concat_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Concat on the channel axis: input ``k``'s channel ``c`` is output channel ``offset_k + c``."""
    rank = len(b.shape(node.output[0]))
    axis = int(b.attrs(node)["axis"]) % rank
    if any(i not in b.layouts for i in node.input) or any(x.axis != axis or x.block != 1 for x in xs):
        return b.opaque(node)
    out = b.new(node.output[0], sum(x.n for x in xs), axis)
    offset = out.base
    for x in xs:
        b.join(b.slots(x), np.arange(offset, offset + x.n))
        offset += x.n


@channel_rule("Pad")
def pad_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Pad with constant pads, none on the channel axis: per channel (padding channels is not sliced)."""
    x, pads = xs[0], b.attrs(node).get("pads")
    if pads is None and len(node.input) > 1:
        pads = b.consts.get(node.input[1])
    rank = len(b.shape(node.input[0]))
    if pads is not None and len(node.input) <= 3 and int(pads[x.axis]) == 0 == int(pads[x.axis + rank]):
        return per_channel(b, node, xs)
    b.opaque(node)


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
graph_role("identity", "Identity")


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


@fold_size("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Cast")
def _same_size(node, args: list) -> int | None:
    """Their output holds exactly their data input's elements (an op that cannot refuses its inputs)."""
    return None if args[0] is None else int(np.asarray(args[0]).size)


#: the element types the fold rules below move, by ONNX type (strings, bfloat16, 8- and 4-bit floats: not)
_PLAIN = {helper.np_dtype_to_tensor_dtype(np.dtype(t)): np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32,
          np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float16, np.float32, np.float64)}
_PLAIN_DTYPES = frozenset(_PLAIN.values())  # native byte order only


def _axes(node, args: list, opset: int) -> tuple[bool, list[int] | None]:
    """Squeeze's and Unsqueeze's ``axes`` (an attribute before opset 13, a 1-D int64 input from 13; negative
    from 11), None when absent, and whether they have that form (else a rule declines). Read all at once, in
    any order, as the ONNX spec, its shape inference and onnxruntime do (ONNX's reference evaluator, before
    opset 13, takes them one at a time: another shape, or a refusal, for unsorted or negative axes)."""
    if opset < 13:
        axes = (given := attributes(node, opset)).get("axes")
        ok = len(args) == 1 and not set(given) - {"axes"} and (axes is None or isinstance(axes, list))
    else:
        axes = args[1] if len(args) > 1 else None
        ok = len(args) <= 2 and not node.attribute and (axes is None or (
            isinstance(axes, np.ndarray) and axes.dtype == np.int64 and axes.ndim == 1))
    axes = None if axes is None else [int(a) for a in axes]
    return ok and axes != [] and (opset >= 11 or all(a >= 0 for a in axes or ())), axes


def _unsqueezed(node, args: list, opset: int) -> list[int] | None:
    """Unsqueeze: a 1 inserted at each of ``axes``, positions in the output (rank ``r + len(axes)``)."""
    x, (ok, axes) = args[0], _axes(node, args, opset)
    if not ok or axes is None or x.ndim + len(axes) > MAX_RANK:
        return None
    rank, dims = x.ndim + len(axes), list(x.shape)
    where = sorted(a % rank for a in axes if -rank <= a < rank)
    for a in where:  # ascending: each 1 lands at its place in the output
        dims.insert(a, 1)
    return dims if len(set(where)) == len(axes) else None


def _squeezed(node, args: list, opset: int) -> list[int] | None:
    """Squeeze: the size-1 ``axes`` removed (absent: every size-1 axis)."""
    x, (ok, axes) = args[0], _axes(node, args, opset)
    drop = {i for i, d in enumerate(x.shape) if d == 1} if axes is None else {a % x.ndim for a in axes if -x.ndim <= a < x.ndim}
    if not ok or (axes is not None and len(drop) != len(axes)) or any(x.shape[a] != 1 for a in drop):
        return None
    return [d for i, d in enumerate(x.shape) if i not in drop]


def _reshaped(node, args: list, opset: int) -> list[int] | None:
    """Reshape (opset 5 on) to its int64 target: a 0 copies ``x``'s dimension at its index (is an empty axis
    with ``allowzero`` = 1, opset 14), one -1 takes ``x.size`` over the product of the others."""
    x, target, given = args[0], args[1] if len(args) == 2 else None, attributes(node, opset)
    if (opset < 5 or not isinstance(target, np.ndarray) or target.dtype != np.int64 or target.ndim != 1
            or target.size > MAX_RANK or set(given) - ({"allowzero"} if opset >= 14 else set())):
        return None
    allowzero, dims = given.get("allowzero", 0), [int(d) for d in target]
    if allowzero not in (0, 1) or (not allowzero and any(d == 0 and i >= x.ndim for i, d in enumerate(dims))):
        return None
    dims = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)]
    rest = math.prod(d for d in dims if d != -1)
    if any(d < -1 for d in dims) or dims.count(-1) > 1 or (-1 in dims and (rest == 0 or x.size % rest)):
        return None
    return [x.size // rest if d == -1 else d for d in dims]


def _flattened(node, args: list, opset: int) -> list[int] | None:
    """Flatten at ``axis`` ``a`` (negative from 11): ``(d₀ ⋯ d_{a−1}, d_a ⋯ d_{r−1})``, of a non-empty ``x``."""
    x, given = args[0], attributes(node, opset)
    axis = given.get("axis", 1)
    ok = len(args) == 1 and not set(given) - {"axis"} and isinstance(axis, int) and x.size > 0 and x.ndim > 0
    if not ok or not (0 <= axis <= x.ndim or (opset >= 11 and -x.ndim <= axis < 0)):
        return None
    return [math.prod(x.shape[:axis]), math.prod(x.shape[axis:])]


#: op type -> ``(node, args, opset) -> the output's shape, or None (the rule declines)``
_OUT_SHAPES = {"Unsqueeze": _unsqueezed, "Squeeze": _squeezed, "Reshape": _reshaped, "Flatten": _flattened,
               "Identity": lambda node, args, opset: list(args[0].shape) if len(args) == 1 and not node.attribute else None}


@folds(*_OUT_SHAPES)
def _fold_reshape_like(node, args: list, shapes: dict, opset: int) -> list[np.ndarray] | None:
    """A copy of ``x``'s elements, in row-major order, at the output shape :data:`_OUT_SHAPES` gives; declined
    (None: ONNX's reference evaluator decides) for any form or element type they do not read."""
    x = args[0]
    dims = _OUT_SHAPES[node.op_type](node, args, opset) if getattr(x, "dtype", None) in _PLAIN_DTYPES else None
    return [x.reshape(dims).copy()] if dims is not None and math.prod(dims) == x.size else None


@folds("Transpose")
def _fold_transpose(node, args: list, shapes: dict, opset: int) -> list[np.ndarray] | None:
    """``x`` with its axes permuted by ``perm`` (by default reversed), in numpy; declined for a ``perm``
    that is not a permutation of ``x``'s axes."""
    x, given = args[0], attributes(node, opset)
    perm = given.get("perm", list(range(x.ndim))[::-1])
    ok = x.dtype in _PLAIN_DTYPES and len(args) == 1 and not set(given) - {"perm"} and sorted(perm) == list(range(x.ndim))
    return [x.transpose(perm).copy()] if ok else None


@folds("Cast")
def _fold_cast(node, args: list, shapes: dict, opset: int) -> list[np.ndarray] | None:
    """``x.astype(to)`` between booleans, integers and IEEE floats (numpy's conversion, as the reference
    evaluator's); declined for strings, bfloat16 and the 8- and 4-bit floats."""
    x, to = args[0], attributes(node, opset).get("to")
    ok = x.dtype in _PLAIN_DTYPES and len(args) == 1 and to in _PLAIN  # not opset 1-5's string
    return [x.astype(_PLAIN[to])] if ok else None
