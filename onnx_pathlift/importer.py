"""ONNX graph → :class:`~onnx_pathlift.dag.Dag`.

Steps: load and prepare the model (static shapes, constants folded), choose the analysed outputs
(non-float outputs are dropped, a trailing Softmax/LogSoftmax/Sigmoid is cut off: the logits are
analysed), keep the nodes those outputs depend on, and hand each node to the import rule registered
for its op type. Every refusal is collected, so one error lists all offending nodes.
"""

from __future__ import annotations

import math

import networkx as nx
from onnx import AttributeProto, NodeProto, TensorProto

from .dag import Dag, Layer
from .errors import InvalidModelError, RefuseNode, Refusal, UnsupportedModelError, UsageError
from .load import DEFAULT_LIMITS, Limits, ModelSource, Prepared, load_model, prepare
from .ops import IMPORTERS, ImportContext, reason_for

#: ops cut off when they end the network: monotone heads that do not change which class wins
HEADS = {"Softmax", "LogSoftmax", "Sigmoid", "ZipMap"}
_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def import_model(
    source: ModelSource,
    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None,
    outputs: list[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Dag:
    """Import an ONNX model (path, bytes or ModelProto) as a DAG of layers, within ``limits``."""
    return import_prepared(prepare(load_model(source, limits), input_shape, limits), outputs)


def _order(nodes: list[NodeProto], known: set[str]) -> list[NodeProto]:
    """Topological order of the nodes; refuses cycles, duplicate producers and dangling inputs."""
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out in producer or (out and out in known):
                raise InvalidModelError(f"tensor {out!r} is produced twice (node {node.name!r})")
            if out:
                producer[out] = i
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    for i, node in enumerate(nodes):
        for name in node.input:
            if not name or name in known:
                continue
            if name not in producer:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) reads {name!r}, which nothing produces")
            g.add_edge(producer[name], i)
    try:
        return [nodes[i] for i in nx.lexicographical_topological_sort(g)]
    except nx.NetworkXUnfeasible:
        cycle = [nodes[v].name or nodes[v].op_type for v, _ in nx.find_cycle(g)]
        raise InvalidModelError(f"the graph has a cycle through nodes {cycle}") from None


def _analysed_outputs(p: Prepared, nodes: list[NodeProto], wanted: list[str] | None, notes: list[str]) -> list[str]:
    """The tensors to analyse: chosen ones, else the float graph outputs with their heads cut off."""
    producer = {out: node for node in nodes for out in node.output}
    if wanted:
        unknown = [w for w in wanted if w not in producer and w not in p.inputs]
        if unknown:
            raise UsageError(f"--output names unknown tensors: {unknown}")
        inputs = [w for w in wanted if w in p.inputs]
        if inputs:
            raise UsageError(f"--output names graph inputs {inputs}: choose tensors the network computes")
        return list(dict.fromkeys(wanted))
    chosen: list[str] = []
    for name in p.outputs:
        if name not in producer and name not in p.inputs and name not in p.consts:
            raise InvalidModelError(f"graph output {name!r} is not produced by any node")
        if name in p.inputs:
            notes.append(f"output {name!r} dropped: it is a graph input")
            continue
        while name in producer and producer[name].op_type in HEADS | {"Identity"}:
            node = producer[name]
            if node.op_type != "Identity":
                notes.append(f"cut {node.op_type} {node.name or node.output[0]!r} at output {name!r}: analysing its input {node.input[0]!r}")
            name = node.input[0]
        if p.elem_types.get(name, TensorProto.UNDEFINED) not in _FLOATS:
            kind = TensorProto.DataType.Name(p.elem_types.get(name, TensorProto.UNDEFINED))
            notes.append(f"output {name!r} ({kind}) dropped: not a float tensor (e.g. a class label)")
            continue
        if name in p.consts:
            notes.append(f"output {name!r} dropped: it is a constant")
            continue
        chosen.append(name)
    if not chosen:
        raise UnsupportedModelError([Refusal("<graph>", "-", "no float output tensor left to analyse")])
    return list(dict.fromkeys(chosen))


def _check_finite_attributes(node: NodeProto) -> None:
    """Refuse NaN/Inf float attributes (alpha, beta, epsilon, ...): they turn parameters into NaN/Inf."""
    for attr in node.attribute:
        values = [attr.f] if attr.type == AttributeProto.FLOAT else attr.floats if attr.type == AttributeProto.FLOATS else []
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise RefuseNode(f"its attribute {attr.name!r} is {bad[0]} (not finite)")


def _live(nodes: list[NodeProto], outputs: list[str]) -> list[NodeProto]:
    """The nodes the analysed outputs depend on, in order."""
    need = set(outputs)
    live = []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            live.append(node)
            need.update(n for n in node.input if n)
    return live[::-1]


def import_prepared(p: Prepared, outputs: list[str] | None = None) -> Dag:
    """Import a prepared model; raises :class:`UnsupportedModelError` listing every refusal."""
    dag = Dag(opset=p.opset, notes=list(p.notes))
    if p.folded:
        dag.notes.append(f"folded {p.folded} constant-valued node(s)")
    nodes = _order(p.nodes, set(p.consts) | set(p.inputs))
    analysed = _analysed_outputs(p, nodes, outputs, dag.notes)
    nodes = _live(nodes, analysed)
    ctx = ImportContext(p, dag)
    ctx.used = {n for node in nodes for n in node.input} | set(analysed)
    for name, shape in p.inputs.items():
        if name in ctx.used:
            dag.add(Layer(name, "input", [], shape, source=name), "input")
            dag.inputs.append(name)
            ctx.producer[name] = name
    refusals: list[Refusal] = []
    blocked: set[str] = set()
    for node in nodes:
        rule = IMPORTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is not None and any(n in blocked for n in node.input):
            blocked.update(node.output)  # downstream of a refused node: it has no input to import from
            continue
        try:
            if rule is None:
                raise RefuseNode(reason_for(node))
            _check_finite_attributes(node)
            rule(node, ctx)
        except RefuseNode as refusal:
            refusals.append(Refusal(node.name or node.output[0], node.op_type, refusal.reason))
            blocked.update(node.output)
    if refusals:
        raise UnsupportedModelError(refusals)
    missing = [o for o in analysed if o not in ctx.producer]
    if missing:
        raise UnsupportedModelError([Refusal("<graph>", "-", f"output {o!r} does not depend on any input") for o in missing])
    dag.outputs = {o: ctx.producer[o] for o in analysed}
    for name, shape in dag.input_shapes().items():
        if len(shape) > 1 and shape[0] > 1:
            dag.notes.append(f"input {name!r} has batch dimension {shape[0]}: the network is analysed as {shape[0]} "
                             "independent copies (‖Φ‖_q^q is that many times the one-sample value); use --input-shape "
                             "with batch 1 for the per-sample path-norm")
    return dag
