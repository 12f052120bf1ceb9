"""Channel groups of an ONNX graph: what structured pruning may remove together, and their scores.

Every channel (a conv output channel, a dense/MatMul output feature) of every activation tensor is a
*slot*. Each op type's channel rule, declared in its family module of ``ops/`` (the protocol is
:mod:`onnx_pathlift.ops.channel_api`), says which slots it joins: an op that acts per channel joins channel
``c`` of its input to channel ``c`` of its output, an elementwise sum of activations joins its operands
(a residual skip), a concatenation or split joins each piece to its offset, a grouped conv joins channel
``k`` of each of its groups. The connected components are the **groups**: a group's channels must be
removed together. A group is removable when it ends in weight layers only: its *sinks* are the input
columns of the weight layers that read it, its *sources* the filters/rows that write it. It is **pinned**
(kept, with the reason) when one of its channels is a graph input or output, or is read or written by an
op that cannot be sliced (no rule, or a rule that refuses: a parameter shared by several nodes, ...).

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
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto

from ..errors import UsageError
from ..frontend.names import LayerNames, layer_names, node_key
from ..frontend.prepare import Prepared
from ..ir.dag import Dag
from ..ops import require
from ..ops.channel_api import Entry, Layout
from ..ops.context import attributes
from ..ops.registry import CHANNEL_RULES, has_role

__all__ = ["CRITERIA", "ChannelGraph", "Entry", "Group", "Layout", "channel_graph", "group_scores"]

CRITERIA = ("path-mass", "l1-norm", "random")


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
    #: a constant that holds a tensor's width (channels × block) -> (index, tensor): a Reshape's target, Resize's sizes
    reshapes: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: node (name or first output) -> (op type, what its rule's ``edit`` hook needs) for the slim model
    edits: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def removable(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if not g.pinned]


class _Builder:
    """Walks the graph once, assigning slots, joining them and recording entries and pins: the
    :class:`~onnx_pathlift.ops.channel_api.ChannelBuilder` the op modules' channel rules call."""

    def __init__(self, model: ModelProto, prepared: Prepared, names: LayerNames):
        self.p = prepared
        self.names = names
        self.layouts: dict[str, Layout] = {}
        self.n = 0
        self.joins: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: dict[int, str] = {}
        self.entries: list[tuple[int, str, Entry]] = []  # (slot, kind, entry)
        self.consts = prepared.consts
        self.reshapes: dict[str, tuple[int, str]] = {}
        self.edits: dict[str, tuple[str, Any]] = {}
        self.uses = uses = Counter(i for node in model.graph.node for i in node.input if i)
        self.producers = {o: node for node in model.graph.node for o in node.output if o}
        consts = {t.name for t in model.graph.initializer}
        consts |= {node.output[0] for node in model.graph.node  # a Constant holding a tensor (not value_ints, ...)
                   if has_role(node, "constant") and [a.name for a in node.attribute] == ["value"]}
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

    def label(self, node: NodeProto) -> str:
        """``Conv 'block.conv1.weight'``: how a pin's reason names ``node`` (op type and layer name)."""
        named = self.names.by_key.get(node_key(node))
        return f"{node.op_type} {named.layer if named else node_key(node)!r}"

    def pin(self, layout: Layout | None, why: str) -> None:
        if layout is not None:
            for s in self.slots(layout):
                self.pins.setdefault(int(s), why)

    def entry(self, layout: Layout, kind: str, name: str, axis: int, block: int = 1, start: int = 0) -> None:
        """Slot ``c`` of ``layout`` takes indices ``start + c·block .. start + (c+1)·block − 1`` of ``name``'s ``axis``."""
        for c, s in enumerate(self.slots(layout)):
            self.entries.append((int(s), kind, (name, axis, start + c * block, start + (c + 1) * block)))

    def producer(self, name: str) -> NodeProto | None:
        """The source model's node that writes ``name`` (None for an initializer or a graph input)."""
        return self.producers.get(name)

    def owned_or_pin(self, names: list[str], layouts: list[Layout | None], node: NodeProto) -> bool:
        """True if every named constant can be sliced (owned by this node alone); else pin."""
        bad = [n for n in names if n not in self.owned]
        for layout in layouts if bad else []:
            self.pin(layout, f"{self.label(node)}: parameter {bad[0]!r} is shared or computed")
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
        why = why or f"read or written by {self.label(node)}, which is not sliced"
        for name in node.input:
            self.pin(self.layouts.get(name), why)
        for name in node.output:
            if name and len(self.p.shapes.get(name, ())) >= 2:
                self.pin(self.new(name, self.shape(name)[1], 1), why)

    def same(self, node: NodeProto, x: Layout) -> Layout:
        out = self.new(node.output[0], x.n, x.axis, x.block)
        self.join(self.slots(x), self.slots(out))
        return out

    def edit(self, node: NodeProto, data: Any) -> None:
        """Record what the op's ``edit`` hook needs to rewrite ``node`` in the slim model."""
        self.edits[node.name or node.output[0]] = (node.op_type, data)

    def width(self, const: str, index: int, tensor: str) -> None:
        """The constant ``const`` holds ``tensor``'s width (channels × block) at ``index``: rewritten."""
        self.reshapes[const] = (index, tensor)

    def node(self, node: NodeProto) -> None:
        """Join or pin the channels ``node`` touches, by the channel rule its op type declares (``ops/``)."""
        xs = [self.layouts[i] for i in node.input if i in self.layouts]
        acts = [i for i in node.input if i and not self.is_const(i)]
        rule = CHANNEL_RULES.get(node.op_type)
        if node.domain not in ("", "ai.onnx") or len(xs) != len(acts) or not xs or rule is None:
            return self.opaque(node)
        first = node.input[0] == acts[0]
        one = len(acts) == 1 and first
        fits = {"single": one and len([o for o in node.output if o]) == 1, "one": one, "first": first, "any": True}
        if not fits[rule.operands]:
            return self.opaque(node)
        rule.join(self, node, xs)


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


def channel_graph(model: ModelProto, prepared: Prepared, names: LayerNames | None = None) -> ChannelGraph:
    """The channel groups of ``model`` (``prepared`` is its :func:`prepare.prepare` form); the reasons that
    keep groups name nodes by ``names`` (:mod:`onnx_pathlift.frontend.names`; None: ``prepared``'s, computed
    without a DAG)."""
    b = _Builder(model, prepared, layer_names(prepared, None) if names is None else names)
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
    return ChannelGraph(b.layouts, groups, label, b.reshapes, b.edits)


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
