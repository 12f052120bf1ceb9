"""Layers whose output neurons copy chosen input neurons: Slice, Split, Gather, GatherND and
GatherElements (constant indices), Resize and Upsample (mode ``nearest``), Tile (constant repeats),
DepthToSpace and SpaceToDepth.

Algebra: every output neuron ``v`` copies one input neuron ``u(v)`` (an edge of weight 1, no bias).
An input neuron that no output copies (sliced away, skipped by a downsampling Resize) starts no path
downstream; one copied to several outputs (a repeated Gather index, an upsampling Resize) has one
weight-1 edge to each, so every path through it is counted once per copy. Hence the lifted layer is
the same movement on the lifted tensor (paths multiply, weights ``1**q = 1``), and its adjoint (q = 1)
is the transposed 0/1 map: each input neuron receives the sum of the backward masses of its copies.

Slice, Split, Gather, Resize, Upsample and Tile select independently along each axis: output ``v`` copies
``x[idx_0[v_0], idx_1[v_1], ...]`` for index lists ``idx_a`` fixed at import (the identity on the axes
they do not touch; Tile repeats ``0..d-1`` ``r`` times, so every input neuron has ``r`` copies). Slice and
Split are re-emitted as Slice; Gather, Resize, Upsample and Tile as one Gather per moved axis with those
lists. The Resize lists follow onnxruntime's nearest rule (its float32 coordinate transform, rounding
mode and clamping), so that the lifted form, the static bounds and the adjoint all use one index map,
and the re-emission check against the source model's own Resize (``verify``) tests that map on every
model. The adjoint along one axis is a zero Pad for a contiguous range,
else a Gather of a table listing, for each input position, the outputs that copy it (an extra zero
slot filling the short rows) summed by ReduceSum: exact sums of non-negative masses, no scatter.
DepthToSpace and SpaceToDepth permute neurons (reshape, transpose, reshape): the adjoint is the
inverse permutation. GatherND and GatherElements copy along no single axis (torch's dynamo exporter
writes an adaptive average pool with overlapping windows as a GatherND): their copy pattern is kept as
one flat position per output neuron, found by applying the op to ``arange(x.size)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import RefuseNode
from ..graph.builder import GraphBuilder
from ..ir.dag import Layer
from .channel_api import ChannelBuilder, Layout, SlimEdit
from .context import ImportContext
from .layer_op import MovesNeurons
from .registry import channel_rule, imports, label_lookup, layer_op

_F32 = np.float32
_INT64_MIN = int(np.iinfo(np.int64).min)
_FLAT_MAX = 1 << 24  # neurons a GatherND/GatherElements copy map may span (8 bytes each)


def const_ints(ctx: ImportContext, node, index: int, what: str) -> list[int]:
    """A constant integer input of ``node`` as a flat list (refused when computed at run time)."""
    return [int(v) for v in np.asarray(ctx.param(node, index, what)).reshape(-1)]


def has_input(node, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def _gather_adjoint(b: GraphBuilder, t: str, idx: list[int], axis: int, size: int, rank: int) -> str:
    """The transpose of ``Gather(·, idx, axis)`` (input axis length ``size``): input position ``i``
    receives ``Σ_{j: idx[j] = i} t[j]``; positions no output copies receive 0."""
    idx_a, n = np.asarray(idx, dtype=np.int64), len(idx)
    pads = np.zeros(2 * rank, dtype=np.int64)
    if np.array_equal(idx_a, np.arange(idx_a[0], idx_a[0] + n)):  # a contiguous range: zero-pad back
        pads[axis], pads[rank + axis] = idx_a[0], size - idx_a[0] - n
        return t if not pads.any() else b.op("Pad", [t, b.ints(pads, "pads")], "adj")
    order = np.argsort(idx_a, kind="stable")
    ranked = idx_a[order]
    width = int(np.bincount(idx_a, minlength=size).max())
    table = np.full((size, width), n, dtype=np.int64)  # n: the zero slot appended below
    table[ranked, np.arange(n) - np.searchsorted(ranked, ranked)] = order
    pads[rank + axis] = 1
    padded = b.op("Pad", [t, b.ints(pads, "pads")], "adj")
    if width == 1:
        return b.op("Gather", [padded, b.ints(table[:, 0], "table")], "adj", axis=axis)
    copies = b.op("Gather", [padded, b.ints(table, "table")], "adj", axis=axis)
    return b.op("ReduceSum", [copies, b.ints([axis + 1], "axes")], "adj", keepdims=0)


@layer_op
class Select(MovesNeurons):
    """Per-axis selection ``y = x[idx_0, idx_1, ...]`` (attrs ``index``: ``[axis, idx, idx_shape]``
    per moved axis, ``idx_shape`` the shape of a Gather's indices, ``[len(idx)]`` otherwise),
    re-emitted as Gathers."""

    op = "select"
    kind = "reshape"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        t = xs[0]
        for axis, idx, idx_shape in layer.attrs["index"]:
            t = b.op("Gather", [t, b.ints(np.reshape(idx, idx_shape), "indices")], "select", axis=axis)
        return t

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        for axis, idx, _ in layer.attrs["index"]:
            values = np.take(values, idx, axis=axis)
        return values.reshape(layer.shape)

    def keeps_batch(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return all(axis != 0 for axis, _, _ in layer.attrs["index"])

    def move_back(self, b, layer, t, in_shape):
        kept = list(in_shape)
        for axis, idx, _ in layer.attrs["index"]:
            kept[axis] = len(idx)
        if tuple(kept) != tuple(layer.shape):  # a Gather's scalar or multi-axis indices
            t = b.op("Reshape", [t, b.ints(kept, "shape")], "adj")
        for axis, idx, _ in layer.attrs["index"]:
            t = _gather_adjoint(b, t, idx, axis, in_shape[axis], len(in_shape))
        return t


@layer_op
class Slice(Select):
    """A selection of arithmetic progressions (Slice, an output of Split), re-emitted as one Slice."""

    op = "slice"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        rows = []  # (start, end, axis, step) per moved axis
        for axis, idx, _ in layer.attrs["index"]:
            step = idx[1] - idx[0] if len(idx) > 1 else 1
            end = idx[-1] + step  # a negative end would count from the back: INT64_MIN is "before index 0"
            rows.append((idx[0], end if end >= 0 else _INT64_MIN, axis, step))
        ins = [b.ints(col, name) for col, name in zip(zip(*rows), ("starts", "ends", "axes", "steps"))]
        return b.op("Slice", [xs[0], *ins], "slice")


def _slice_range(start: int, end: int, step: int, dim: int) -> list[int]:
    """The positions ONNX Slice takes along one axis: negative starts/ends count from the end, then
    are clamped to [0, dim] (step > 0) or start to [0, dim-1] and end to [-1, dim-1] (step < 0)."""
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        return list(range(min(max(start, 0), dim), min(max(end, 0), dim), step))
    return list(range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step))


def add_selection(ctx: ImportContext, node, op: str, index: list[list], out: str, suffix: str = "") -> None:
    """Add the selection layer producing tensor ``out`` (an alias when it moves nothing); refuses an
    empty one (no neuron to copy) and one whose shape ONNX shape inference sees differently."""
    shape, expected = ctx.shape(out), ctx.shape(node.input[0])
    for axis, _, idx_shape in index:
        expected = (*expected[:axis], *idx_shape, *expected[axis + 1:])
    if tuple(expected) != tuple(shape):
        raise RefuseNode(f"its output {out!r} has shape {tuple(expected)} by the op's rule, ONNX shape inference "
                         f"gives {tuple(shape)}")
    if 0 in shape:
        raise RefuseNode(f"its output {out!r} has shape {shape}: it selects no neuron")
    if not index:
        ctx.alias(out, ctx.act(node.input[0]))
        return
    ctx.alias(out, ctx.add(node, op, [ctx.act(node.input[0])], shape, attrs={"index": index}, suffix=suffix))


def _set_range(node, data: tuple[str, str, int, str, int], ctx: SlimEdit) -> None:
    """A channel Slice's ``starts``/``ends`` entry moves to the kept channels it reads: its start drops by
    the removed channels before it, its end is the start plus its kept output channels."""
    starts, ends, j, tensor, lo = data
    new_lo = lo - sum(1 for c in ctx.gone[tensor] if c < lo)
    for name, value in ((starts, new_lo), (ends, new_lo + ctx.kept[node.output[0]])):
        array = ctx.consts.get(name).copy()
        array[j] = value
        ctx.consts.set(name, array)


@channel_rule("Slice", edit=_set_range)
def slice_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Slice (opset ≥ 10, constant starts/ends, step 1): output channel ``c`` is input channel
    ``start + c``, or each channel is itself when the channel axis is not sliced."""
    x, rank = xs[0], len(b.shape(node.input[0]))
    if len(node.input) < 3:
        return b.opaque(node)
    ins = list(node.input) + [""] * (5 - len(node.input))
    starts, ends = (b.consts.get(n) for n in ins[1:3])
    axes = b.consts.get(ins[3]) if ins[3] else (None if starts is None else np.arange(starts.size))
    steps = b.consts.get(ins[4]) if ins[4] else np.ones(1)
    if starts is None or ends is None or axes is None or steps is None or np.any(steps != 1) or x.block != 1:
        return b.opaque(node)
    hit = [j for j, ax in enumerate(np.ravel(axes)) if int(ax) % rank == x.axis]
    if not hit:
        b.same(node, x)
        return
    lo, hi, _ = slice(int(starts[hit[0]]), int(ends[hit[0]])).indices(x.n)
    out = b.new(node.output[0], max(hi - lo, 0), x.axis)
    b.join(np.arange(x.base + lo, x.base + lo + out.n), b.slots(out))
    if b.owned_or_pin(ins[1:3], [x], node):
        b.edit(node, (ins[1], ins[2], hit[0], node.input[0], lo))


def _set_sizes(node, data: tuple[str, list[str]], ctx: SlimEdit) -> None:
    """A channel Split's sizes (attribute or constant) become its outputs' kept channel counts."""
    source, outs = data
    sizes = [ctx.kept[o] for o in outs]
    if source == "attr":
        next(a for a in node.attribute if a.name == "split").ints[:] = sizes
    else:
        ctx.consts.set(source, np.asarray(sizes, ctx.consts.get(source).dtype))


@channel_rule("Split", operands="one", edit=_set_sizes)
def split_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Split on the channel axis: output ``k``'s channel ``c`` is input channel ``offset_k + c``. With
    explicit sizes, they are rewritten; without (equal parts: ``num_outputs``, or one per output),
    channel ``c`` of every part is one channel, so the parts stay equal (uneven parts pin)."""
    a, outs, x = b.attrs(node), list(node.output), xs[0]
    axis = int(a.get("axis", 0)) % len(b.shape(node.input[0]))
    if axis != x.axis or x.block != 1 or not all(outs):
        return b.opaque(node)
    offset, parts = x.base, []
    for name in outs:
        parts.append(b.new(name, b.shape(name)[axis], axis))
        b.join(np.arange(offset, offset + parts[-1].n), b.slots(parts[-1]))
        offset += parts[-1].n
    sizes = "attr" if "split" in a else (node.input[1] if len(node.input) > 1 and node.input[1] else "")
    if not sizes and len({part.n for part in parts}) > 1:
        return b.pin(x, f"{b.label(node)} into uneven parts without explicit sizes")
    if not sizes:
        for part in parts[1:]:
            b.join(b.slots(parts[0]), b.slots(part))
        return None
    if sizes == "attr" or b.owned_or_pin([sizes], [x], node):
        b.edit(node, (sizes, outs))


@imports("Slice")
def import_slice(node, ctx: ImportContext) -> None:
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    if ctx.prepared.opset < 10:
        a = ctx.attrs(node)
        starts, ends = [int(v) for v in a["starts"]], [int(v) for v in a["ends"]]
        axes, steps = [int(v) for v in a.get("axes", range(len(starts)))], [1] * len(starts)
    else:
        starts, ends = const_ints(ctx, node, 1, "starts"), const_ints(ctx, node, 2, "ends")
        axes = const_ints(ctx, node, 3, "axes") if has_input(node, 3) else list(range(len(starts)))
        steps = const_ints(ctx, node, 4, "steps") if has_input(node, 4) else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise RefuseNode(f"starts, ends, axes and steps have different lengths {len(starts)}, {len(ends)}, {len(axes)}, {len(steps)}")
    if any(not -rank <= ax < rank for ax in axes) or len({ax % rank for ax in axes}) != len(axes):
        raise RefuseNode(f"invalid axes {axes} for a rank-{rank} input")
    if 0 in steps:
        raise RefuseNode("a step of 0")
    index = []
    for ax, start, end, step in sorted(zip((ax % rank for ax in axes), starts, ends, steps)):
        idx = _slice_range(start, end, step, shape[ax])
        if idx != list(range(shape[ax])):
            index.append([ax, idx, [len(idx)]])
    add_selection(ctx, node, "slice", index, node.output[0])


@imports("Split")
def import_split(node, ctx: ImportContext) -> None:
    shape, a = ctx.shape(node.input[0]), ctx.attrs(node)
    axis = int(a["axis"]) % len(shape)
    dim, n = shape[axis], len(node.output)
    if ctx.prepared.opset < 13:
        sizes = [int(s) for s in a["split"]] if "split" in a else None
    else:
        sizes = const_ints(ctx, node, 1, "split sizes") if has_input(node, 1) else None
    if sizes is None and "num_outputs" in a:  # opset 18: chunks of ceil(dim / n), the last one smaller
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    elif sizes is None:
        if dim % n:
            raise RefuseNode(f"splits an axis of {dim} into {n} equal parts")
        sizes = [dim // n] * n
    if len(sizes) != n or sum(sizes) != dim or min(sizes) < 0:
        raise RefuseNode(f"split sizes {sizes} do not cut an axis of {dim} into {n} outputs")
    start = 0
    for k, (out, size) in enumerate(zip(node.output, sizes)):
        if out and out in ctx.used:
            if ctx.shape(out)[axis] != size:
                raise RefuseNode(f"output {out!r} has {ctx.shape(out)[axis]} entries on axis {axis}, the split gives {size}")
            add_selection(ctx, node, "slice", [[axis, list(range(start, start + size)), [size]]], out, suffix=f"__split{k}")
        start += size


def _constant_indices(ctx: ImportContext, node) -> np.ndarray:
    indices = ctx.const(node.input[1])
    if indices is None:
        raise RefuseNode(f"its indices ({node.input[1]!r}) are computed at run time: which neuron is copied depends on the data")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise RefuseNode(f"its indices have type {indices.dtype}: not integers")
    return indices.astype(np.int64)


label_lookup("Gather", 0, 1)  # a constant class table indexed by a picked class: a label lookup


@imports("Gather")
def import_gather(node, ctx: ImportContext) -> None:
    shape = ctx.shape(node.input[0])
    axis = int(ctx.attrs(node)["axis"]) % len(shape)
    indices = _constant_indices(ctx, node)
    if indices.size == 0:
        raise RefuseNode("its indices are empty: it selects no neuron")
    flat = indices.reshape(-1)
    if flat.min() < -shape[axis] or flat.max() >= shape[axis]:
        raise RefuseNode(f"an index is out of range for an axis of {shape[axis]}")
    add_selection(ctx, node, "select", [[axis, [int(i) for i in flat % shape[axis]], list(indices.shape)]], node.output[0])


@imports("Tile")
def import_tile(node, ctx: ImportContext) -> None:
    """``y[i_0, i_1, ...] = x[i_0 mod d_0, i_1 mod d_1, ...]``: along axis ``a`` the positions ``0..d_a-1``
    repeated ``repeats[a]`` times (Keras' UpSampling2D is Unsqueeze → Tile → Reshape)."""
    if ctx.prepared.opset < 6:
        raise RefuseNode("Tile-1 (tiles and axis inputs) is not supported; opset 6 and later give repeats per axis")
    shape = ctx.shape(node.input[0])
    repeats = const_ints(ctx, node, 1, "repeats")
    if len(repeats) != len(shape) or min(repeats, default=1) < 0:
        raise RefuseNode(f"its repeats {repeats} do not fit an input of shape {shape}")
    index = [[ax, list(range(d)) * r, [d * r]] for ax, (d, r) in enumerate(zip(shape, repeats)) if r != 1]
    add_selection(ctx, node, "select", index, node.output[0])


def _depth_space_stage(attrs: dict, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 6-D reshape of the input and the transpose that DepthToSpace / SpaceToDepth apply (ONNX spec)."""
    n, c, h, w = shape
    k = attrs["blocksize"]
    if attrs["mode"] == "DCR":
        return (n, k, k, c // (k * k), h, w), (0, 3, 4, 1, 5, 2)
    if attrs["mode"] == "CRD":
        return (n, c // (k * k), k, k, h, w), (0, 1, 4, 2, 5, 3)
    return (n, c, h // k, k, w // k, k), (0, 3, 5, 1, 2, 4)  # SpaceToDepth


@layer_op
class DepthSpace(MovesNeurons):
    """DepthToSpace (attrs ``mode`` DCR or CRD) or SpaceToDepth (``mode`` S2D): a permutation."""

    op = "depth_space"
    kind = "reshape"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        if layer.attrs["mode"] == "S2D":
            return b.op("SpaceToDepth", xs, "space_to_depth", blocksize=layer.attrs["blocksize"])
        return b.op("DepthToSpace", xs, "depth_to_space", blocksize=layer.attrs["blocksize"], mode=layer.attrs["mode"])

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        stage, perm = _depth_space_stage(layer.attrs, values.shape)
        return values.reshape(stage).transpose(perm).reshape(layer.shape)

    def keeps_batch(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        return True

    def move_back(self, b, layer, t, in_shape):
        stage, perm = _depth_space_stage(layer.attrs, in_shape)
        t = b.op("Reshape", [t, b.ints([stage[p] for p in perm], "shape")], "adj")
        t = b.op("Transpose", [t], "adj", perm=[int(p) for p in np.argsort(perm)])
        return b.op("Reshape", [t, b.ints(in_shape, "shape")], "adj")


@imports("DepthToSpace", "SpaceToDepth")
def import_depth_space(node, ctx: ImportContext) -> None:
    a, shape = ctx.attrs(node), ctx.shape(node.input[0])
    k = int(a["blocksize"])
    mode = "S2D" if node.op_type == "SpaceToDepth" else a.get("mode", "DCR")  # opset 11
    if len(shape) != 4 or mode not in ("DCR", "CRD", "S2D") or k < 1:
        raise RefuseNode(f"input of rank {len(shape)}, mode {mode!r}, blocksize {k}: not a valid {node.op_type}")
    if (mode == "S2D" and (shape[2] % k or shape[3] % k)) or (mode != "S2D" and shape[1] % (k * k)):
        raise RefuseNode(f"blocksize {k} does not divide the input of shape {shape}")
    ctx.add(node, "depth_space", [ctx.act(node.input[0])], ctx.shape(node.output[0]), attrs={"blocksize": k, "mode": mode})



@layer_op
class FlatSelect(MovesNeurons):
    """Any fixed copy pattern: ``y.flat[j] = x.flat[flat[j]]`` (attrs ``flat``: int64 array of the
    output's shape, positions in the flattened input). GatherND and GatherElements with constant
    indices; re-emitted as Reshape to 1-D then one Gather."""

    op = "flat_select"
    kind = "reshape"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        flat = b.op("Reshape", [xs[0], b.ints([-1], "shape")], "flat")
        return b.op("Gather", [flat, b.ints(layer.attrs["flat"], "indices")], "select", axis=0)

    def move(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        return values.reshape(-1)[layer.attrs["flat"]]

    def move_back(self, b, layer, t, in_shape):
        t = b.op("Reshape", [t, b.ints([-1], "shape")], "adj")
        size = int(np.prod(in_shape))
        t = _gather_adjoint(b, t, [int(i) for i in layer.attrs["flat"].reshape(-1)], 0, size, 1)
        return b.op("Reshape", [t, b.ints(in_shape, "shape")], "adj")


@imports("GatherND", "GatherElements")
def import_gather_nd(node, ctx: ImportContext) -> None:
    """The flat positions are found by applying the op itself, in numpy, to ``arange(x.size)``."""
    shape, indices = ctx.shape(node.input[0]), _constant_indices(ctx, node)
    if max(math.prod(shape), math.prod(ctx.shape(node.output[0]))) > _FLAT_MAX:
        raise RefuseNode(f"its copy map would hold one position per neuron, over {_FLAT_MAX} of them (input {shape})")
    positions = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    try:
        if node.op_type == "GatherElements":
            axis = int(ctx.attrs(node)["axis"]) % len(shape)
            flat = np.take_along_axis(positions, np.where(indices < 0, indices + shape[axis], indices), axis=axis)
        else:
            if int(ctx.attrs(node).get("batch_dims", 0)) != 0:  # opset 12
                raise RefuseNode("batch_dims ≠ 0 is not supported yet (the exporters we know write 0)")
            k = indices.shape[-1]
            idx = np.where(indices < 0, indices + np.array(shape[:k]), indices)
            flat = positions[tuple(np.moveaxis(idx, -1, 0))]
    except IndexError as exc:
        raise RefuseNode(f"an index is out of range: {exc}") from None
    out = ctx.shape(node.output[0])
    if tuple(flat.shape) != tuple(out):
        raise RefuseNode(f"its output has shape {tuple(flat.shape)} by the op's rule, ONNX shape inference gives {tuple(out)}")
    if flat.size == 0:
        raise RefuseNode("it selects no neuron")
    ctx.add(node, "flat_select", [ctx.act(node.input[0])], out, attrs={"flat": flat})
