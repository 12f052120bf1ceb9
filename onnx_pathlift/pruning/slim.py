"""Structured pruning written back into the ONNX file: the masked model and the slim model.

* **masked**: the source with the removed groups' sink columns (their neurons' outgoing weights) set
  to 0: ``|θ'| ≤ |θ|`` with the same signs, so the path-metric certificate is exact for it.
* **slim**: the source with the removed channels cut out of every constant that carries them (sink
  columns, source filters/rows, biases, BatchNormalization entries, per-channel constants, depthwise
  filters), a depthwise conv's ``group``, a Split's sizes, a channel Slice's range, a flatten-Reshape's
  target shape and the value_info shapes updated; every other node, attribute and tensor is the source's. In the masked model no
  removed channel reaches a kept neuron (every reader of a group's channels is in the group: a
  sink, whose column is zero, or a per-channel op, cut with it), so the slim model computes the
  masked model's function; :func:`check_slim` confirms it on random inputs."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from ..backend.runtime import make_session
from ..backend.verify import ModelRunner, relative_error
from ..errors import VerificationError
from ..fileio.read import FLOAT_TYPES
from ..frontend.edit import ModelEditor, copy_model
from ..frontend.prepare import Prepared
from ..ops.channel_api import SlimEdit
from ..ops.registry import CHANNEL_RULES, has_role
from .channels import ChannelGraph, Entry


def _cuts(cg: ChannelGraph, removed: list[int], kinds: tuple[str, ...]) -> dict[str, dict[int, set[int]]]:
    """Per constant, per axis: the indices the removed groups take from it."""
    out: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for i in removed:
        g = cg.groups[i]
        entries: list[Entry] = [e for kind in kinds for e in getattr(g, kind)]
        for name, axis, lo, hi in entries:
            out[name][axis].update(range(lo, hi))
    return out


def masked_model(model: ModelProto, cg: ChannelGraph, removed: list[int]) -> ModelProto:
    """``model`` with the removed groups' sink columns set to zero (same dtype, name, layout)."""
    out = copy_model(model)
    consts = ModelEditor(out)
    for name, axes in _cuts(cg, removed, ("sinks",)).items():
        value = consts.get(name).copy()
        for axis, idx in axes.items():
            index = [slice(None)] * value.ndim
            index[axis] = sorted(idx)
            value[tuple(index)] = 0
        consts.set(name, value)
    return out


def removed_channels(cg: ChannelGraph, removed: list[int]) -> dict[str, set[int]]:
    """The channel indices ``removed`` takes from each tensor."""
    gone: dict[str, set[int]] = defaultdict(set)
    for i in removed:
        for tensor, c in cg.groups[i].channels:
            gone[tensor].add(c)
    return gone


def kept_channels(cg: ChannelGraph, removed: list[int]) -> dict[str, int]:
    """Channels left per tensor (tensors with a channel layout) after removing ``removed``."""
    gone = removed_channels(cg, removed)
    return {t: layout.n - len(gone[t]) for t, layout in cg.layouts.items()}


def _resize_nodes(out: ModelProto, consts: ModelEditor, cg: ChannelGraph, removed: list[int]) -> None:
    """The node-level edits (a depthwise conv's ``group``, a Split's sizes, ...): each node's channel
    rule's ``edit`` hook, with what the rule recorded (:attr:`ChannelGraph.edits`)."""
    ctx = SlimEdit(consts, kept_channels(cg, removed), removed_channels(cg, removed))
    for node in out.graph.node:
        op, data = cg.edits.get(node.name or node.output[0], ("", None))
        rule = CHANNEL_RULES.get(node.op_type)
        if op == node.op_type and rule is not None and rule.edit is not None:
            rule.edit(node, data, ctx)


def slim_model(model: ModelProto, cg: ChannelGraph, removed: list[int]) -> ModelProto:
    """``model`` with the removed channels cut out (see the module docstring)."""
    out = copy_model(model)
    consts = ModelEditor(out)
    for name, axes in _cuts(cg, removed, ("sinks", "sources", "slices")).items():
        value = consts.get(name)
        for axis, idx in axes.items():
            value = np.delete(value, sorted(idx), axis=axis)
        consts.set(name, value)
    kept = kept_channels(cg, removed)
    _resize_nodes(out, consts, cg, removed)
    for name, (entry, tensor) in cg.reshapes.items():
        shape = consts.get(name).copy()
        shape[entry] = kept[tensor] * cg.layouts[tensor].block
        consts.set(name, shape)
    for vi in list(out.graph.value_info) + list(out.graph.output):
        layout = cg.layouts.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if layout is not None and len(dims) > layout.axis and dims[layout.axis].HasField("dim_value"):
            dims[layout.axis].dim_value = kept[vi.name] * layout.block
    return out


def random_feeds(prepared: Prepared, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1, 1, s).astype(np.float32) for n, s in prepared.inputs.items()}


def check_slim(masked: ModelProto, slim: ModelProto, prepared: Prepared, names: list[str], trials: int = 3,
               tolerance: float = 1e-4) -> float:
    """Max relative difference of the tensors ``names`` (the analysed outputs) between the slim and
    the masked model on random inputs in [-1, 1] (relative to the larger magnitude of each tensor);
    raises above ``tolerance``. Runs in onnxruntime, or ONNX's reference evaluator for op versions
    onnxruntime lacks (:class:`verify.ModelRunner`)."""
    a, b = (ModelRunner(m, names, prepared.elem_types) for m in (masked, slim))
    worst = 0.0
    for t in range(trials):
        feeds = random_feeds(prepared, t)
        for x, y in zip(a(feeds), b(feeds)):
            worst = max(worst, relative_error(x, y, symmetric=True))
    if not worst <= tolerance:
        raise VerificationError(f"the slim model does not reproduce the masked model (max relative error {worst:.3g})")
    return worst


def latency(model: ModelProto, prepared: Prepared, repeats: int = 20) -> float | None:
    """Median wall time (seconds) of one onnxruntime run on one thread, after two warm-up runs;
    None when onnxruntime cannot run the model (an op version it lacks)."""
    try:
        session = make_session(model, threads=1)
    except Exception:  # onnxruntime's own errors (NOT_IMPLEMENTED, ...) have no common base class
        return None
    feeds = random_feeds(prepared)
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@dataclass
class LayerCost:
    node: str
    op: str
    params: int
    macs: int


def layer_costs(prepared: Prepared) -> list[LayerCost]:
    """Parameters (float constants read, :func:`statistics` left out) and multiply-accumulates of each
    node whose op declares its MACs (:func:`~onnx_pathlift.ops.registry.costed_op_types`: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization)."""
    rows = []
    stats = statistics(prepared.nodes)
    for node in prepared.nodes:
        rule = CHANNEL_RULES.get(node.op_type)
        if rule is None or rule.macs is None:
            continue
        params = sum(int(prepared.consts[i].size) for i in node.input
                     if i in prepared.consts and prepared.consts[i].dtype.kind == "f" and i not in stats)
        macs = rule.macs(node, prepared.consts, prepared.shapes)
        rows.append(LayerCost(node.name or node.output[0], node.op_type, params, macs))
    return rows


def statistics(nodes) -> set[str]:
    """The inputs that hold running statistics (BatchNormalization's mean and variance, as its channel rule
    declares): folded into its scale and shift, not parameters (docs/pruning.md, "Parameters")."""
    rules = ((n, CHANNEL_RULES.get(n.op_type)) for n in nodes)
    return {n.input[i] for n, rule in rules if rule is not None for i in rule.statistics if i < len(n.input)}


def float_parameters(model: ModelProto) -> int:
    """Elements of the float initializers and Constant tensors, :func:`statistics` left out: each stored
    value once (``--target params``'s total; ``norm``'s count when every float constant is a weight, a bias
    or a BN scale or shift read by one node)."""
    stats = statistics(model.graph.node)
    tensors = [t for t in model.graph.initializer if t.name not in stats] + [
        a.t for n in model.graph.node if has_role(n, "constant") and n.output[0] not in stats
        for a in n.attribute if a.name == "value"]
    return sum(math.prod(t.dims) for t in tensors if t.data_type in FLOAT_TYPES)


@dataclass
class ChannelPrune:
    """What ``prune --structure channel`` did: the groups, their scores, the removed ones and both models."""

    graph: ChannelGraph
    scores: np.ndarray
    removed: list[int]
    masked: ModelProto
    slim: ModelProto
    slim_error: float  # max relative difference slim vs masked on random inputs
    #: the fraction of the target removed: of the candidate groups, or of the cost's total
    achieved: float = 0.0
    #: the model ``graph`` describes (``model`` with shared initializers copied: :func:`~onnx_pathlift.frontend.edit.untie`) and the copies
    source: ModelProto | None = None
    origin: dict[str, str] = field(default_factory=dict)

    def pinned(self) -> list[dict]:
        """Kept groups by reason: how many groups and channels each reason keeps."""
        rows: dict[str, list[int]] = {}
        for g in self.graph.groups:
            if g.pinned:
                row = rows.setdefault(g.pinned, [0, 0])
                row[0] += 1
                row[1] += len(g.channels)
        return [{"reason": r, "groups": n, "channels": k} for r, (n, k) in sorted(rows.items(), key=lambda x: -x[1][0])]
