"""Channel groups of an ONNX graph: what structured pruning may remove together, and their scores.

Every channel (a conv output channel, a dense/MatMul output feature) of every activation tensor is a
*slot*. Ops that act per channel (bias/BatchNormalization, ReLU/Clip/LeakyRelu, pools, Pad, a
depthwise conv, Flatten/Reshape into a dense layer, Squeeze/Unsqueeze and reductions over spatial axes) join the slot
of channel ``c`` of their input to that of their output; an elementwise Add/Sub/Mul/Div/Sum of
activations joins the slots of all its operands (a residual skip); a Concat on the channel axis
joins each input slot to its offset in the output, a channel Split or Slice each output slot to its
input slot; a grouped (not depthwise) conv joins channel k
of each of its groups, input side and output side, so that its groups keep equal sizes. The
connected components are the **groups**: a group's channels must be removed together. A group is
removable when it ends in weight layers only: its *sinks* are the input columns of the Conv / Gemm /
MatMul layers that read it, its *sources* the filters/rows that write it. It is **pinned** (kept,
with the reason) when one of its channels is a graph input or output, or is read or written by an
op that cannot be sliced (Transpose, Gather, a head, a parameter shared by several nodes, ...).

Removing a group zeroes its sinks' columns (the outgoing weights of its neurons ``v``): every path
through a ``v`` uses exactly one outgoing weight of ``v``, so the paths removed have mass
``Σ_v f(v)·b(v) = Σ_{sink weights i} |θ_i|·∂‖Φ‖_1/∂|θ_i|`` (forward mass times backward mass at
q = 1): the sum of the path-magnitude scores of the sink weights (``scores.path_magnitude``, one
forward + one adjoint pass). For one channel (more generally, when no path crosses the group
twice) it is exactly ``‖Φ(θ)‖_1 − ‖Φ(θ with the group removed)‖_1``; a path that crosses a group
twice (a residual stream read again after a block that writes it) is counted once per crossing.
It is rescaling-invariant; ``l1-norm`` (Σ |incoming weights| of the sources and depthwise filters
in the group) is the usual baseline, and is not."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto, NodeProto

from ..errors import UsageError
from ..frontend.prepare import Prepared
from ..ir.dag import Dag
from ..ops import require
from ..ops.context import attributes
from ..ops.registry import CHANNEL_RULES

#: one removable piece of a constant: (tensor name, axis, first index, end index)
Entry = tuple[str, int, int, int]
CRITERIA = ("path-mass", "l1-norm", "random")


@dataclass
class Layout:
    """The channels of one tensor: slots ``base .. base+n-1`` along ``axis``, each ``block`` wide."""

    base: int
    n: int
    axis: int
    block: int = 1


@dataclass
class Group:
    """Channels removed together; ``sinks`` are zeroed in the masked model, ``sinks + sources +
    slices`` are cut from the slim model (``sources``: the incoming weights the l1 criterion sums)."""

    channels: list[tuple[str, int]]
    sinks: list[Entry] = field(default_factory=list)
    sources: list[Entry] = field(default_factory=list)
    slices: list[Entry] = field(default_factory=list)
    pinned: str = ""

    @property
    def layer(self) -> str:
        """The group's layer: the first tensor it spans (groups spanning the same tensors share it)."""
        return self.channels[0][0]


@dataclass
class ChannelGraph:
    """Groups of a model, with the node edits a slim model needs."""

    layouts: dict[str, Layout]
    groups: list[Group]
    group_of: np.ndarray  # slot -> group index
    depthwise: dict[str, str] = field(default_factory=dict)  # node name -> tensor whose channels set `group`
    reshapes: dict[str, tuple[int, str]] = field(default_factory=dict)  # shape const -> (entry, tensor)
    splits: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # Split node -> (sizes: "attr" or const, outputs)
    #: Slice node -> (starts const, ends const, entry, input tensor, first input channel it reads)
    crops: dict[str, tuple[str, str, int, str, int]] = field(default_factory=dict)

    def removable(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if not g.pinned]


class _Builder:
    """Walks the graph once, assigning slots, joining them and recording entries and pins."""

    def __init__(self, model: ModelProto, prepared: Prepared):
        self.p = prepared
        self.layouts: dict[str, Layout] = {}
        self.n = 0
        self.joins: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: dict[int, str] = {}
        self.entries: list[tuple[int, str, Entry]] = []  # (slot, kind, entry)
        self.depthwise: dict[str, str] = {}
        self.reshapes: dict[str, tuple[int, str]] = {}
        self.splits: dict[str, tuple[str, list[str]]] = {}
        self.crops: dict[str, tuple[str, str, int, str, int]] = {}
        uses = Counter(i for node in model.graph.node for i in node.input if i)
        consts = {t.name for t in model.graph.initializer}
        consts |= {node.output[0] for node in model.graph.node  # a Constant holding a tensor (not value_ints, ...)
                   if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]}
        outputs = {o.name for o in model.graph.output}
        self.owned = {n for n in consts if uses[n] == 1 and n not in outputs}

    # --- slots -------------------------------------------------------------------------------
    def new(self, tensor: str, n: int, axis: int, block: int = 1) -> Layout:
        layout = Layout(self.n, n, axis, block)
        self.n += n
        self.layouts[tensor] = layout
        return layout

    def slots(self, layout: Layout) -> np.ndarray:
        return np.arange(layout.base, layout.base + layout.n)

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        self.joins.append((np.asarray(a), np.asarray(b)))

    def pin(self, layout: Layout | None, why: str) -> None:
        if layout is not None:
            for s in self.slots(layout):
                self.pins.setdefault(int(s), why)

    def entry(self, layout: Layout, kind: str, name: str, axis: int, block: int = 1) -> None:
        for c, s in enumerate(self.slots(layout)):
            self.entries.append((int(s), kind, (name, axis, c * block, (c + 1) * block)))

    def owned_or_pin(self, names: list[str], layouts: list[Layout | None], node: NodeProto) -> bool:
        """True if every named constant can be sliced (owned by this node alone); else pin."""
        bad = [n for n in names if n not in self.owned]
        for layout in layouts if bad else []:
            self.pin(layout, f"{node.op_type} node {node.name!r}: parameter {bad[0]!r} is shared or computed")
        return not bad

    def attrs(self, node: NodeProto) -> dict:
        """The node's attributes, normalised as the import rules read them."""
        return attributes(node, self.p.opset)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.p.shapes[name])

    def is_const(self, name: str) -> bool:
        return name in self.p.consts

    # --- ops ---------------------------------------------------------------------------------
    def opaque(self, node: NodeProto, why: str = "") -> None:
        why = why or f"read or written by {node.op_type} node {node.name!r}, which is not sliced"
        for name in node.input:
            self.pin(self.layouts.get(name), why)
        for name in node.output:
            if name and len(self.p.shapes.get(name, ())) >= 2:
                self.pin(self.new(name, self.shape(name)[1], 1), why)

    def same(self, node: NodeProto, x: Layout) -> Layout:
        out = self.new(node.output[0], x.n, x.axis, x.block)
        self.join(self.slots(x), self.slots(out))
        return out

    def conv(self, node: NodeProto, x: Layout) -> None:
        w, bias = node.input[1], (node.input[2] if len(node.input) > 2 and node.input[2] else None)
        weight, group = self.p.consts[w], int(self.attrs(node).get("group", 1))
        out = self.new(node.output[0], weight.shape[0], 1)
        params = [w] + ([bias] if bias else [])
        if x.axis != 1 or x.block != 1:
            return self.opaque(node)
        if group == 1:
            if self.owned_or_pin(params, [x, out], node):
                self.entry(x, "sink", w, 1)
                self.entry(out, "source", w, 0)
                if bias:
                    self.entry(out, "slice", bias, 0)
        elif group == x.n == out.n:  # depthwise, multiplier 1: channel c in -> channel c out
            self.join(self.slots(x), self.slots(out))
            if self.owned_or_pin(params, [out], node):
                self.entry(out, "dw", w, 0)
                if bias:
                    self.entry(out, "slice", bias, 0)
                self.depthwise[node.name or node.output[0]] = node.output[0]
        elif x.n % group == 0 and out.n % group == 0:
            self.grouped(node, x, out, group, params)
        else:
            self.opaque(node)

    def grouped(self, node: NodeProto, x: Layout, out: Layout, group: int, params: list[str]) -> None:
        """A grouped conv keeps equal groups: input channel k of every group is one group (its sink is
        the weight column k), and so is output channel k of every group (filters k, k + C/G, ...)."""
        w = node.input[1]
        cin, cout = x.n // group, out.n // group
        for layout, per in ((x, cin), (out, cout)):
            first = np.arange(layout.base, layout.base + per)
            for g in range(1, group):
                self.join(first, first + g * per)
        if self.owned_or_pin(params, [x, out], node):
            for k in range(cin):
                self.entries.append((x.base + k, "sink", (w, 1, k, k + 1)))
            self.entry(out, "source", w, 0)
            if len(params) > 1:
                self.entry(out, "slice", params[1], 0)

    def dense(self, node: NodeProto, x: Layout) -> None:
        """Gemm (transA 0) or MatMul with a constant right operand: sinks are weight rows/columns."""
        a = self.attrs(node)
        w = node.input[1]
        weight = self.p.consts[w]
        trans = int(a.get("transB", 0)) if node.op_type == "Gemm" else 0
        rank = len(self.shape(node.input[0]))
        if weight.ndim != 2 or int(a.get("transA", 0)) or x.axis != rank - 1:
            return self.opaque(node)
        out = self.new(node.output[0], weight.shape[0 if trans else 1], rank - 1)
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        bias_sliced = bias is not None and self.p.consts[bias].ndim >= 1 and self.p.consts[bias].shape[-1] == out.n > 1
        if self.owned_or_pin([w] + ([bias] if bias_sliced else []), [x, out], node):
            self.entry(x, "sink", w, 1 if trans else 0, x.block)
            self.entry(out, "source", w, 0 if trans else 1)
            if bias_sliced:
                self.entry(out, "slice", bias, self.p.consts[bias].ndim - 1)

    def elementwise(self, node: NodeProto, xs: list[Layout]) -> None:
        """Add/Sub/Mul/Div/Sum/PRelu: activations of one shape joined; constants sliced where per-channel."""
        acts = [i for i in node.input if not self.is_const(i)]
        out_shape = self.shape(node.output[0])
        x = xs[0]
        if any(self.shape(i) != out_shape or self.layouts[i].axis != x.axis or self.layouts[i].block != x.block
               for i in acts):
            return self.opaque(node, f"{node.op_type} node {node.name!r} broadcasts activations")
        out = self.same(node, x)
        for layout in xs[1:]:
            self.join(self.slots(x), self.slots(layout))
        for name in (i for i in node.input if i and self.is_const(i)):
            value = self.p.consts[name]
            axis = x.axis - (len(out_shape) - value.ndim)
            if axis < 0 or value.shape[axis] == 1:
                continue
            if value.shape[axis] != x.n * x.block:
                return self.pin(out, f"{node.op_type} node {node.name!r}: constant {name!r} does not broadcast per channel")
            if self.owned_or_pin([name], [out], node):
                self.entry(out, "slice", name, axis, x.block)

    def batchnorm(self, node: NodeProto, x: Layout) -> None:
        out = self.same(node, x)
        if x.axis != 1 or x.block != 1:
            return self.pin(out, f"BatchNormalization {node.name!r} on a flattened tensor")
        if self.owned_or_pin(list(node.input[1:5]), [out], node):
            for name in node.input[1:5]:
                self.entry(out, "slice", name, 0)

    def flatten(self, node: NodeProto, x: Layout) -> None:
        """Flatten (axis 1) / Reshape to (N, C·rest): channel c becomes a block of ``rest`` features."""
        shape_in, shape_out = self.shape(node.input[0]), self.shape(node.output[0])
        rest = math.prod(shape_in[2:])
        if node.op_type == "Flatten" and int(self.attrs(node).get("axis", 1)) != 1 or x.axis != 1 \
                or len(shape_out) != 2 or shape_out[0] != shape_in[0]:
            return self.opaque(node)
        out = self.new(node.output[0], x.n, 1, x.block * rest)
        self.join(self.slots(x), self.slots(out))
        if node.op_type == "Reshape":
            name, target = node.input[1], self.p.consts.get(node.input[1])
            if target is None or target.shape != (2,):
                return self.pin(out, f"Reshape {node.name!r}: its shape is not a constant")
            if int(target[1]) != -1 and not (int(target[1]) == 0 and out.block == 1):
                if self.owned_or_pin([name], [out], node):
                    self.reshapes[name] = (1, node.output[0])

    def spatial(self, node: NodeProto, x: Layout) -> None:
        """Squeeze/Unsqueeze/Reduce* over axes after the channel axis keep the channels (a reduction
        without axes reduces all of them: not per channel)."""
        axes = self.attrs(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.p.consts.get(node.input[1])
        rank = max(len(self.shape(node.input[0])), len(self.shape(node.output[0])))
        if axes is None or x.axis != 1 or x.block != 1 or any(int(a) % rank < 2 for a in np.ravel(axes)):
            return self.opaque(node)
        self.same(node, x)

    def concat(self, node: NodeProto, xs: list[Layout]) -> None:
        rank = len(self.shape(node.output[0]))
        axis = int(self.attrs(node)["axis"]) % rank
        if any(i not in self.layouts for i in node.input) or any(x.axis != axis or x.block != 1 for x in xs):
            return self.opaque(node)
        out = self.new(node.output[0], sum(x.n for x in xs), axis)
        offset = out.base
        for x in xs:
            self.join(self.slots(x), np.arange(offset, offset + x.n))
            offset += x.n

    def split(self, node: NodeProto, x: Layout) -> None:
        """Split on the channel axis with explicit sizes: output k takes the next sizes[k] channels."""
        a, outs = self.attrs(node), list(node.output)
        axis = int(a.get("axis", 0)) % len(self.shape(node.input[0]))
        if axis != x.axis or x.block != 1 or not all(outs):
            return self.opaque(node)
        offset = x.base
        layouts = []
        for name in outs:
            layouts.append(self.new(name, self.shape(name)[axis], axis))
            self.join(np.arange(offset, offset + layouts[-1].n), self.slots(layouts[-1]))
            offset += layouts[-1].n
        sizes = "attr" if "split" in a else (node.input[1] if len(node.input) > 1 and node.input[1] else "")
        if not sizes:
            return self.pin(x, f"Split {node.name!r} without explicit sizes")
        if sizes == "attr" or self.owned_or_pin([sizes], [x], node):
            self.splits[node.name or outs[0]] = (sizes, outs)

    def crop(self, node: NodeProto, x: Layout) -> None:
        """Slice (opset ≥ 10, constant starts/ends, step 1): channels start..end-1 of the input, or
        all of them when the channel axis is not sliced."""
        rank = len(self.shape(node.input[0]))
        ins = list(node.input) + [""] * (5 - len(node.input))
        starts, ends = (self.p.consts.get(n) for n in ins[1:3])
        axes = self.p.consts.get(ins[3]) if ins[3] else (None if starts is None else np.arange(starts.size))
        steps = self.p.consts.get(ins[4]) if ins[4] else np.ones(1)
        if starts is None or ends is None or axes is None or steps is None or np.any(steps != 1) or x.block != 1:
            return self.opaque(node)
        hit = [j for j, ax in enumerate(np.ravel(axes)) if int(ax) % rank == x.axis]
        if not hit:
            self.same(node, x)
            return
        lo, hi, _ = slice(int(starts[hit[0]]), int(ends[hit[0]])).indices(x.n)
        out = self.new(node.output[0], max(hi - lo, 0), x.axis)
        self.join(np.arange(x.base + lo, x.base + lo + out.n), self.slots(out))
        if self.owned_or_pin(ins[1:3], [x], node):
            self.crops[node.name or node.output[0]] = (ins[1], ins[2], hit[0], node.input[0], lo)

    def node(self, node: NodeProto) -> None:
        """Join or pin the channels ``node`` touches, by the channel rule its op type declares (``ops/``)."""
        xs = [self.layouts[i] for i in node.input if i in self.layouts]
        acts = [i for i in node.input if i and not self.is_const(i)]
        if node.domain not in ("", "ai.onnx") or len(xs) != len(acts) or not xs:
            return self.opaque(node)
        x, rule = xs[0], CHANNEL_RULES.get(node.op_type)
        first = node.input[0] == acts[0]
        single = len(acts) == 1 and first and len([o for o in node.output if o]) == 1
        if rule == "conv" and single:
            self.conv(node, x)
        elif rule == "dense" and single and self.is_const(node.input[1]):
            self.dense(node, x)
        elif rule == "elementwise" or (rule == "elementwise_on_first" and first):
            self.elementwise(node, xs)
        elif rule == "batchnorm" and single:
            self.batchnorm(node, x)
        elif rule == "flatten" and single:
            self.flatten(node, x)
        elif rule == "spatial" and single:
            self.spatial(node, x)
        elif rule == "concat":
            self.concat(node, xs)
        elif rule == "split" and len(acts) == 1 and first:
            self.split(node, x)
        elif rule == "crop" and single and len(node.input) >= 3:
            self.crop(node, x)
        elif single and (rule == "same" or (rule == "pad" and self._pad_keeps_channels(node, x))):
            self.same(node, x)
        else:
            self.opaque(node)

    def _pad_keeps_channels(self, node: NodeProto, x: Layout) -> bool:
        pads = self.attrs(node).get("pads")
        if pads is None and len(node.input) > 1:
            pads = self.p.consts.get(node.input[1])
        rank = len(self.shape(node.input[0]))
        return pads is not None and len(node.input) <= 3 and int(pads[x.axis]) == 0 == int(pads[x.axis + rank])


def _components(n: int, joins: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected-component label (0, 1, ... in order of first slot) of each of ``n`` slots."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in joins:
        for i, j in zip(a.tolist(), b.tolist()):
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    _, label = np.unique(roots, return_inverse=True)
    return label.astype(np.int64)


def channel_graph(model: ModelProto, prepared: Prepared) -> ChannelGraph:
    """The channel groups of ``model`` (``prepared`` is its :func:`prepare.prepare` form)."""
    b = _Builder(model, prepared)
    for name, shape in prepared.inputs.items():
        if len(shape) >= 2:
            b.pin(b.new(name, shape[1], 1), f"channel of the graph input {name!r}")
    for node in prepared.nodes:
        b.node(node)
    for name in prepared.outputs:
        b.pin(b.layouts.get(name), f"channel of the graph output {name!r}")
    label = _components(b.n, b.joins)
    slot_tensor = {}
    for tensor, layout in b.layouts.items():
        for k in range(layout.n):
            slot_tensor[layout.base + k] = (tensor, k)
    groups = [Group([]) for _ in range(int(label.max()) + 1 if b.n else 0)]
    for s in range(b.n):
        groups[label[s]].channels.append(slot_tensor[s])
    for s, why in sorted(b.pins.items()):
        groups[label[s]].pinned = groups[label[s]].pinned or why
    for s, kind, entry in b.entries:
        g = groups[label[s]]
        {"sink": g.sinks, "source": g.sources, "dw": g.sources, "slice": g.slices}[kind].append(entry)
    for g in groups:
        if not g.pinned and not g.sinks:
            g.pinned = "read by no weight layer"
    return ChannelGraph(b.layouts, groups, label, b.depthwise, b.reshapes, b.splits, b.crops)


def _take(value: np.ndarray, entry: Entry) -> np.ndarray:
    _, axis, lo, hi = entry
    return np.take(value, np.arange(lo, hi), axis=axis)


def group_scores(cg: ChannelGraph, prepared: Prepared, criterion: str, dag: Dag | None = None,
                 seed: int = 0, providers=None) -> np.ndarray:
    """Score per group (NaN for pinned ones): ``path-mass`` as a fraction of ‖Φ‖_1 (the sum of the
    path-magnitude scores of its sink weights = Σ_v f(v)·b(v)), ``l1-norm`` (Σ |incoming weights|)
    or ``random`` (uniform, for baselines). A group whose sink weight has no path-magnitude score
    (a shared weight) is pinned."""
    if criterion not in CRITERIA:
        raise UsageError(f"criterion must be one of {', '.join(CRITERIA)} (got {criterion!r})")
    out = np.full(len(cg.groups), np.nan)
    live = cg.removable()
    if criterion == "random":
        out[live] = np.random.default_rng(seed).random(len(live))
        return out
    if criterion == "l1-norm":
        for i in live:
            out[i] = sum(float(np.abs(_take(prepared.consts[e[0]], e)).sum()) for e in cg.groups[i].sources)
        return out
    from ..analyses.scores import path_magnitude

    require(dag, "channel-prune")
    fraction = path_magnitude(dag, providers=providers).fraction
    for i in live:
        g = cg.groups[i]
        missing = [e[0] for e in g.sinks if e[0] not in fraction]
        if missing:
            g.pinned = f"consumer weight {missing[0]!r} has no path-magnitude score (shared or computed)"
            continue
        out[i] = math.fsum(float(_take(fraction[e[0]], e).sum()) for e in g.sinks)
    return out
