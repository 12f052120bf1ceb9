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
import onnxruntime as ort
from onnx import ModelProto, helper, numpy_helper

from ..backend.verify import ModelRunner, relative_error
from ..errors import VerificationError
from ..fileio.read import FLOAT_TYPES
from ..frontend.prepare import Prepared
from .channels import ChannelGraph, Entry


def _copy(model: ModelProto) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(model)
    return out


class _Constants:
    """Read and replace a named constant of a model: an initializer or a Constant node's value."""

    def __init__(self, model: ModelProto):
        self.model = model
        self.init = {t.name: t for t in model.graph.initializer}
        self.node = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}

    def get(self, name: str) -> np.ndarray:
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        return numpy_helper.to_array(next(a.t for a in self.node[name].attribute if a.name == "value"))

    def set(self, name: str, value: np.ndarray) -> None:
        tensor = numpy_helper.from_array(value, name)
        if name in self.init:
            self.init[name].CopyFrom(tensor)
            for vi in self.model.graph.input:  # IR-3 files list initializers as inputs too
                if vi.name == name:
                    vi.type.CopyFrom(helper.make_tensor_type_proto(tensor.data_type, value.shape))
            return
        for a in self.node[name].attribute:
            if a.name == "value":
                a.t.CopyFrom(tensor)


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
    out = _copy(model)
    consts = _Constants(out)
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


def _resize_nodes(out: ModelProto, consts: _Constants, cg: ChannelGraph, removed: list[int]) -> None:
    """The node-level edits: a depthwise conv's ``group``, a Split's sizes, a Slice's channel range."""
    kept, gone = kept_channels(cg, removed), removed_channels(cg, removed)
    for node in out.graph.node:
        key = node.name or node.output[0]
        if node.op_type == "Conv" and key in cg.depthwise:
            next(a for a in node.attribute if a.name == "group").i = kept[cg.depthwise[key]]
        elif node.op_type == "Split" and key in cg.splits:
            source, outs = cg.splits[key]
            sizes = [kept[o] for o in outs]
            if source == "attr":
                next(a for a in node.attribute if a.name == "split").ints[:] = sizes
            else:
                consts.set(source, np.asarray(sizes, consts.get(source).dtype))
        elif node.op_type == "Slice" and key in cg.crops:
            starts, ends, j, tensor, lo = cg.crops[key]
            new_lo = lo - sum(1 for c in gone[tensor] if c < lo)
            for name, value in ((starts, new_lo), (ends, new_lo + kept[node.output[0]])):
                array = consts.get(name).copy()
                array[j] = value
                consts.set(name, array)


def slim_model(model: ModelProto, cg: ChannelGraph, removed: list[int]) -> ModelProto:
    """``model`` with the removed channels cut out (see the module docstring)."""
    out = _copy(model)
    consts = _Constants(out)
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


def cpu_session(model: ModelProto, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = max(threads, 0)
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


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
        session = cpu_session(model, threads=1)
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
    Conv/Gemm/MatMul/BN node."""
    rows = []
    stats = statistics(prepared.nodes)
    for node in prepared.nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "BatchNormalization"):
            continue
        params = sum(int(prepared.consts[i].size) for i in node.input
                     if i in prepared.consts and prepared.consts[i].dtype.kind == "f" and i not in stats)
        out = math.prod(prepared.shapes[node.output[0]])
        if node.op_type == "Conv":
            macs = out * math.prod(prepared.consts[node.input[1]].shape[1:]) if node.input[1] in prepared.consts else 0
        elif node.op_type == "BatchNormalization":
            macs = out
        else:
            transa = any(a.name == "transA" and a.i for a in node.attribute)
            shape_a = prepared.shapes[node.input[0]]
            macs = out * shape_a[-2 if transa else -1]
        rows.append(LayerCost(node.name or node.output[0], node.op_type, params, macs))
    return rows


def statistics(nodes) -> set[str]:
    """BatchNormalization's running mean and variance (inputs 3 and 4): statistics folded into its scale
    and shift, not parameters (docs/pruning.md, "Parameters")."""
    return {i for n in nodes if n.op_type == "BatchNormalization" for i in n.input[3:5]}


def float_parameters(model: ModelProto) -> int:
    """Elements of the float initializers and Constant tensors, :func:`statistics` left out: each stored
    value once (``--target params``'s total; ``norm``'s count when every float constant is a weight, a bias
    or a BN scale or shift read by one node)."""
    stats = statistics(model.graph.node)
    tensors = [t for t in model.graph.initializer if t.name not in stats] + [
        a.t for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in stats
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
    #: the model ``graph`` describes (``model`` with shared initializers copied: :func:`untie`) and the copies
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


def untie(model: ModelProto) -> tuple[ModelProto, dict[str, str]]:
    """``model`` with every initializer read by one node input only: each further reader of a shared
    initializer, and each reader of an Identity of an initializer, gets its own copy (the Identity,
    left unread, is dropped). Returns the model and ``{copy: initializer}``; :func:`retie` undoes the
    copies that stay equal. Models of IR version < 4 (initializers listed as inputs) are returned as is."""
    out = _copy(model)
    if model.ir_version < 4:
        return out, {}
    inits = {t.name: t for t in out.graph.initializer}
    outputs = {o.name for o in out.graph.output}
    alias = {n.output[0]: n.input[0] for n in out.graph.node
             if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outputs}
    origin: dict[str, str] = {}
    seen: set[str] = set()
    taken = set(inits) | {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    for node in out.graph.node:
        if node.op_type == "Identity" and node.output and node.output[0] in alias:
            continue
        for j, name in enumerate(node.input):
            base = alias.get(name, name)
            if base not in inits or (base not in seen and name == base and base not in outputs):
                seen.add(base)
                continue
            k = 1
            while f"{base}.copy{k}" in taken:
                k += 1
            copy = f"{base}.copy{k}"
            taken.add(copy)
            out.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[base]), copy))
            node.input[j], origin[copy] = copy, base
    read = {i for n in out.graph.node for i in n.input} | outputs
    keep = [n for n in out.graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias
                                               and n.output[0] not in read)]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out, origin


def retie(model: ModelProto, origin: dict[str, str]) -> ModelProto:
    """Readers of a copy made by :func:`untie` read the original again where both still hold the same
    tensor (same type, shape and bytes); the copy is dropped. Edits ``model`` in place and returns it."""
    inits = {t.name: t for t in model.graph.initializer}
    same = {c for c, b in origin.items() if c in inits and b in inits
            and inits[c].data_type == inits[b].data_type and list(inits[c].dims) == list(inits[b].dims)
            and numpy_helper.to_array(inits[c]).tobytes() == numpy_helper.to_array(inits[b]).tobytes()}
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name in same:
                node.input[j] = origin[name]
    keep = [t for t in model.graph.initializer if t.name not in same]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model
