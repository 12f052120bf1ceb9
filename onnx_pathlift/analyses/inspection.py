"""What the importer sees in a model: ``onnx-pathlift inspect``.

:func:`inspect_model` loads and prepares a model and imports it with an
:class:`~onnx_pathlift.frontend.importer.ImportTrace`, then reports, without running anything in onnxruntime:

* the file: opset imports, producer, IR version, node counts by op type, declared inputs/outputs;
* the import: input shapes and batch, analysed outputs, layer counts by DAG kind and by layer op,
  parameter count;
* what changed on the way: constant-valued nodes **folded** (by op type; quantized weights behind
  DequantizeLinear and fp16 weights behind Cast end up here), heads **cut** (Softmax, ArgMax →
  ArrayFeatureExtractor, ...), outputs **dropped**, and how each remaining op type was **imported**
  (one layer, several layers — e.g. Clip/LeakyRelu/PRelu as DAG-ReLU chains —, or none: identity);
* every **refusal** (node name, op type, reason), the nodes left out because they sit behind a
  refused one, and the nearest tensors that do import (``--output`` them to analyse the rest). A refused
  model still gets its report (``status == "refused"``);
* what it can be used for: ``analysable`` (path-norms, scores, compare's certificate: the import
  succeeded) and ``channel_pruning`` (the ``readiness`` hook, :func:`~onnx_pathlift.pruning.readiness.channel_readiness`
  for ``inspect``: removable
  channel groups, the criterion ``prune --structure channel`` would rank by, whether it is certified),
  which needs the prepared graph only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from onnx import ModelProto

from ..errors import Refusal, UnsupportedModelError
from ..fileio.load import ModelSource, load_model
from ..fileio.read import DEFAULT_LIMITS, FLOAT_TYPES, Limits
from ..frontend.importer import ImportTrace, import_prepared
from ..frontend.pipeline import model_name
from ..frontend.prepare import Prepared, prepare
from ..ops.registry import IMPORT_NOTES, has_role, kind_counts

#: why an op type folded into constants is worth a word
_FOLDED = {
    "DequantizeLinear": "quantized weights dequantized to float parameters",
    "Cast": "weights cast to float (e.g. fp16 storage)",
    "Constant": "Constant nodes read as constants",
    "ConstantOfShape": "weights built by ConstantOfShape",
    "Shape": "shape arithmetic on static shapes",
}


def _op_key(domain: str, op_type: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}:{op_type}"


#: ``(model, prepared, refusal or None) -> dict``: what channel pruning would do with a model (``pruning/``
#: supplies it: :func:`onnx_pathlift.pruning.readiness.channel_readiness`; analyses do not import pruning)
Readiness = Callable[[ModelProto, Prepared, UnsupportedModelError | None], dict[str, Any]]

@dataclass
class Imported:
    """How the live nodes of one ONNX op type became DAG layers."""

    op_type: str
    nodes: int
    layers: dict[str, int]  # layer ops joined by '+' (one node's layers; '(identity)': none) -> how many nodes
    how: str  # "layer", "decomposed", "identity", "kept", "activation-qdq"
    note: str = ""


@dataclass
class Inspection:
    """The report of :func:`inspect_model` (``to_dict`` is its JSON form)."""

    model: str
    status: str  # "ok" or "refused"
    opset: dict[str, int]
    producer: str
    ir_version: int
    nodes: int
    node_counts: dict[str, int]
    graph_inputs: dict[str, list]  # declared shapes (symbolic dimensions as strings)
    graph_outputs: list[str]
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # the static shapes analysed
    batch: dict[str, dict] = field(default_factory=dict)  # input -> {size, declared}
    analysed_outputs: list[str] = field(default_factory=list)
    layers: int = 0
    layer_kinds: dict[str, int] = field(default_factory=dict)
    layer_ops: dict[str, int] = field(default_factory=dict)
    parameters: int | None = None  # of the analysed DAG; None when refused
    stored_float_elements: int = 0  # elements of the float initializers in the file
    folded: dict[str, Any] = field(default_factory=dict)  # {"nodes": n, "ops": {op: n}, "notes": [...]}
    cut: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    imported: list[Imported] = field(default_factory=list)
    activation_qdq: int = 0
    unreached: dict[str, int] = field(default_factory=dict)  # nodes no analysed output depends on
    refusals: list[Refusal] = field(default_factory=list)
    analysable_outputs: list[str] = field(default_factory=list)  # refused: the nearest tensors that import (--output)
    blocked: dict[str, int] = field(default_factory=dict)  # live nodes behind a refused node
    notes: list[str] = field(default_factory=list)
    analysable: bool = False  # path-norms, scores, certificates: the import succeeded
    #: what ``prune --structure channel`` would do (:func:`~onnx_pathlift.pruning.readiness.channel_readiness`);
    #: refused while preparing: ``{"prunable": False, "reason": ...}``
    channel_pruning: dict[str, Any] = field(default_factory=dict)

    @property
    def decomposed(self) -> list[Imported]:
        return [i for i in self.imported if i.how == "decomposed"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["refusals"] = [r.__dict__ for r in self.refusals]
        return d

    def error(self) -> UnsupportedModelError | None:
        """The error a refused model raises elsewhere (exit code 3), or None."""
        return UnsupportedModelError(self.refusals, self.analysable_outputs) if self.refusals else None


def _declared(model: ModelProto) -> dict[str, list]:
    init = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        t = vi.type.tensor_type
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] \
            if t.HasField("shape") else None
    return out


def _stored_float_elements(model: ModelProto) -> int:
    n = 0
    for t in model.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            size = 1
            for d in t.dims:
                size *= d
            n += size
    return n


def _base(model: ModelProto, name: str) -> Inspection:
    """The facts read from the file itself (available even when preparing it is refused)."""
    g = model.graph
    return Inspection(
        model=name, status="ok",
        opset={imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import},
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        ir_version=int(model.ir_version), nodes=len(g.node),
        node_counts=dict(Counter(_op_key(n.domain, n.op_type) for n in g.node).most_common()),
        graph_inputs=_declared(model), graph_outputs=[o.name for o in g.output],
        stored_float_elements=_stored_float_elements(model),
    )


def _imported(trace: ImportTrace) -> list[Imported]:
    """Group the live, imported nodes by op type with the layer ops each became."""
    dag = trace.dag
    by_source: dict[str, list[str]] = {}
    if dag is not None:
        for _, data in dag.graph.nodes(data=True):
            layer = data["layer"]
            if layer.inputs:  # graph inputs are layers without inputs, not imported nodes
                by_source.setdefault(layer.source, []).append(layer.op)
    refused, blocked = {r.node for r in trace.refusals}, {id(n) for n in trace.blocked}
    groups: dict[str, Counter] = {}
    for node in trace.live:
        key = node.name or node.output[0]
        if key in refused or id(node) in blocked:
            continue
        ops = by_source.get(key, [])
        groups.setdefault(_op_key(node.domain, node.op_type), Counter())["+".join(ops)] += 1
    out = []
    for op_type, sigs in groups.items():
        n = sum(sigs.values())
        layer_sets = [s.split("+") if s else [] for s in sigs]
        if has_role(op_type, "quantize") or has_role(op_type, "dequantize"):
            how = "activation-qdq"
            note = "activation quantization imported as identity (or ReLU where its range starts at 0); compare bounds it"
        elif all(not ls for ls in layer_sets):
            how, note = "identity", "imported as identity (no layer)"
        elif not has_role(op_type, "relu") and any("relu" in ls for ls in layer_sets):
            how, note = "decomposed", "exact DAG-ReLU form (ReLU, affine and sum layers)"
        elif op_type in IMPORT_NOTES:
            how, note = "kept", IMPORT_NOTES[op_type]
        else:
            how, note = "layer", ""
        out.append(Imported(op_type, n, {s or "(identity)": c for s, c in sigs.most_common()}, how, note))
    return sorted(out, key=lambda i: (-i.nodes, i.op_type))


def inspect_model(source: ModelSource, input_shape=None, outputs: list[str] | None = None,
                  limits: Limits = DEFAULT_LIMITS, name: str | None = None, readiness: Readiness | None = None) -> Inspection:
    """Report what the importer sees in a model; never runs it.

    ``source``: a path, bytes or ``ModelProto``; ``input_shape``: one static shape, or one per input
    name (None: as declared, a symbolic batch becoming 1); ``outputs``: the tensors to analyse (None:
    the graph outputs, heads cut); ``limits``: the resource limits of loading; ``name``: how the report
    names the model (default: the path, or ``<model>``); ``readiness``: fills ``channel_pruning`` (``inspect``
    passes :func:`~onnx_pathlift.pruning.readiness.channel_readiness`; None leaves it empty). Returns the :class:`Inspection` (``to_dict()``
    is ``inspect --json``'s object). Raises what loading raises for unreadable or invalid models
    (:class:`InvalidModelError`) and for usage errors (:class:`UsageError`); a model with unsupported
    operators gets a report with ``status == "refused"`` and every refusal listed
    (``Inspection.error()`` is the error).
    """
    model = load_model(source, limits)
    report = _base(model, name if name is not None else model_name(source))
    try:
        prepared = prepare(model, input_shape, limits)
    except UnsupportedModelError as err:  # refused while preparing (opset, sparse tensors, ...)
        report.status, report.refusals = "refused", list(err.refusals)
        report.channel_pruning = {"prunable": False, "reason": f"refused while preparing: {err.refusals[0]}"}
        return report
    declared = report.graph_inputs
    report.input_shapes = {k: list(v) for k, v in prepared.inputs.items()}
    for k, v in prepared.inputs.items():
        if len(v) > 1:
            dim = (declared.get(k) or [None])[0]
            report.batch[k] = {"size": v[0], "declared": dim if isinstance(dim, int) else f"symbolic {dim!r}"}
    report.folded = {"nodes": prepared.folded, "ops": dict(prepared.folded_ops.most_common()),
                     "notes": [f"{n} {op}: {_FOLDED[op]}" for op, n in prepared.folded_ops.most_common() if op in _FOLDED]}
    trace, refusal = ImportTrace(), None
    try:
        dag = import_prepared(prepared, outputs, trace)
    except UnsupportedModelError as err:
        report.status, dag, refusal = "refused", trace.dag, err
        report.refusals, report.analysable_outputs = list(err.refusals), list(err.analysable)
    report.analysable = refusal is None
    if readiness is not None:
        report.channel_pruning = readiness(model, prepared, refusal)
    report.analysed_outputs = list(trace.analysed)
    report.cut, report.dropped = trace.cuts, trace.dropped
    report.imported = _imported(trace)
    report.blocked = dict(Counter(_op_key(n.domain, n.op_type) for n in trace.blocked).most_common())
    reached = {id(n) for n in trace.live} | {id(n) for n in trace.cut_nodes}
    report.unreached = dict(Counter(_op_key(n.domain, n.op_type) for n in prepared.nodes
                                    if id(n) not in reached).most_common())
    if dag is not None:
        report.notes = list(dag.notes)
        report.activation_qdq = dag.activation_qdq
        layers = [data["layer"] for _, data in dag.graph.nodes(data=True) if data["layer"].inputs]  # not graph inputs
        report.layer_kinds = dict(Counter(kind_counts(dag, graph_inputs=False)).most_common())
        ops = Counter(layer.op for layer in layers)
        report.layer_ops = dict(ops.most_common())
        report.layers = sum(ops.values())
        if report.status == "ok":
            report.parameters = dag.n_params
    return report
