"""ONNX graph → :class:`~onnx_pathlift.ir.dag.Dag`.

Steps: load and prepare the model (static shapes, constants folded), choose the analysed outputs
(a trailing head is cut off so that the logits are analysed: Softmax/LogSoftmax/Sigmoid/ZipMap, and
class-picking heads such as ArgMax → ArrayFeatureExtractor → Cast; other non-float outputs are
dropped), keep the nodes those outputs depend on, and hand each node to the import rule registered
for its op type. Every refusal is collected, so one error lists all offending nodes. An
:class:`ImportTrace` passed to :func:`import_prepared` records what was cut, imported and refused
(``onnx-pathlift inspect`` reports it, for refused models too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from onnx import AttributeProto, ModelProto, NodeProto, TensorProto

from ..errors import InvalidModelError, PathliftError, Refusal, RefuseNode, UnsupportedModelError, UsageError
from ..fileio.load import ModelSource, load_split
from ..fileio.read import DEFAULT_LIMITS, FLOAT_TYPES, Limits
from ..ir.dag import Dag, Layer
from ..ops import IMPORTERS, ImportContext, reason_for
from ..ops.registry import HEAD_ROLES, LOOKUPS, has_role
from .prepare import Prepared, prepare

_HEAD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
#: an unknown type comes from behind an op that shape inference does not know: analysed, so that the import
#: refuses that op by name
_FLOATS_OR_UNKNOWN = FLOAT_TYPES | {TensorProto.UNDEFINED}


@dataclass
class ImportTrace:
    """What :func:`import_prepared` did, filled as it goes (so complete up to a refusal).

    ``cuts``: one record per graph output whose head was cut (``output``, ``analysed``, ``nodes``:
    the cut nodes as ``(op_type, name)`` from the logits to the output, Identity left out);
    ``cut_nodes``: every node cut off (Identity included); ``dropped``: outputs not
    analysed, with why; ``live``: the ONNX nodes the analysed outputs depend on; ``blocked``: live
    nodes not imported because one of their inputs comes from a refused node; ``dag``: the DAG built
    (partial when the model is refused)."""

    analysed: list[str] = field(default_factory=list)
    cuts: list[dict] = field(default_factory=list)
    cut_nodes: list[NodeProto] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    live: list[NodeProto] = field(default_factory=list)
    blocked: list[NodeProto] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    dag: Dag | None = None


def import_model(
    source: ModelSource,
    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None,
    outputs: list[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Dag:
    """Import an ONNX model (path, bytes or ModelProto) as a DAG of layers, within ``limits`` (a file's
    large weights read straight into arrays: :func:`~onnx_pathlift.fileio.load.load_split`)."""
    model, stored = load_split(source, limits)
    read = not isinstance(source, (ModelProto, bytes, bytearray))  # a path: sizes checked as it was read
    return import_prepared(prepare(model, input_shape, limits, stored, read), outputs)


def _head_input(node: NodeProto, consts: dict) -> str | None:
    """The tensor a head node carries forward (its data input), or None if the node is no head."""
    if node.domain not in _HEAD_DOMAINS or not node.input:
        return None
    op = node.op_type
    if op in HEAD_ROLES:
        return node.input[0]
    if op in LOOKUPS:
        table, index = LOOKUPS[op]
        if index >= len(node.input) or (table is not None and node.input[table] not in consts):
            return None  # selecting from activations (feature selection), not a label lookup
        return node.input[index] if node.input[index] not in consts else None
    return None


def _cut_head(name: str, producer: dict[str, NodeProto], consts: dict) -> tuple[str, list[NodeProto]]:
    """Walk back from a graph output through its head: (the tensor to analyse, the cut nodes from the
    output backwards). Carriers (Cast, Reshape, ...) and lookups are cut only when a head or a picker
    lies behind them; Identity alone is always skipped."""
    cut: list[NodeProto] = []
    pending: list[NodeProto] = []
    cut_at = name
    while name in producer:
        node = producer[name]
        nxt = _head_input(node, consts)
        if nxt is None:
            break
        pending.append(node)
        name = nxt
        if HEAD_ROLES.get(node.op_type) in ("head", "picker") or all(has_role(n, "identity") for n in pending):
            cut += pending
            pending = []
            cut_at = name
    return cut_at, cut


def _analysed_outputs(p: Prepared, nodes: list[NodeProto], wanted: list[str] | None, notes: list[str],
                      trace: ImportTrace | None = None) -> list[str]:
    """The tensors to analyse: chosen ones, else the float graph outputs with their heads cut off."""
    trace = trace if trace is not None else ImportTrace()
    producer = {out: node for node in nodes for out in node.output}
    if wanted:
        return _wanted_outputs(p, producer, wanted, notes, trace)
    chosen: list[str] = []
    for output in p.outputs:
        if output not in producer and output not in p.inputs and output not in p.consts:
            raise InvalidModelError(f"graph output {output!r} is not produced by any node")
        name, cut = _cut_head(output, producer, p.consts)
        trace.cut_nodes += cut
        shown = [n for n in reversed(cut) if not has_role(n, "identity")]
        if shown:
            chain = " → ".join(f"{n.op_type} {n.name or n.output[0]!r}" for n in shown)
            notes.append(f"cut {chain} at output {output!r}: analysing its input {name!r}")
            trace.cuts.append({"output": output, "analysed": name,
                               "nodes": [(n.op_type, n.name or n.output[0]) for n in shown]})

        if name in p.inputs:
            why, note = "it is a graph input", f"output {name!r} dropped: it is a graph input"
        elif p.elem_types.get(name, TensorProto.UNDEFINED) not in _FLOATS_OR_UNKNOWN:
            kind = TensorProto.DataType.Name(p.elem_types.get(name, TensorProto.UNDEFINED))
            why, note = f"not a float tensor ({kind})", f"output {name!r} ({kind}) dropped: not a float tensor (e.g. a class label)"
        elif name in p.consts:
            why, note = "it is a constant", f"output {name!r} dropped: it is a constant"
        else:
            chosen.append(name)
            continue
        notes.append(note)
        trace.dropped.append({"output": output, "tensor": name, "reason": why})
    if not chosen:
        sources = [t for d in trace.dropped for t in _float_sources(p, producer, d["tensor"])]
        raise UnsupportedModelError([Refusal("<graph>", "-", "no float output tensor left to analyse")],
                                    _importable(p, list(dict.fromkeys(sources))))
    return list(dict.fromkeys(chosen))


def _wanted_outputs(p: Prepared, producer: dict[str, NodeProto], wanted: list[str], notes: list[str],
                    trace: ImportTrace) -> list[str]:
    """``--output`` names checked (each wrong one named, with the valid ones), a head behind one cut off (the
    model's own Softmax output analyses the logits before it, with a note)."""
    constants = [w for w in wanted if w in p.consts]
    if constants:
        raise UsageError(f"--output names constants {constants} (folded weights or shape arithmetic): choose "
                         "tensors the network computes")
    unknown = [w for w in wanted if w not in producer and w not in p.inputs]
    if unknown:
        import difflib  # the error path only: norm's start-up does without it

        near = [m for w in unknown for m in difflib.get_close_matches(w, list(producer), n=3)]
        raise UsageError(f"--output names unknown tensors {unknown}: the graph outputs are {p.outputs}"
                         + (f"; near names: {list(dict.fromkeys(near))}" if near else "")
                         + " (any tensor a node computes can be named; `onnx-pathlift inspect MODEL` shows the analysed ones)")
    inputs = [w for w in wanted if w in p.inputs]
    if inputs:
        raise UsageError(f"--output names graph inputs {inputs}: choose tensors the network computes")
    chosen = []
    for w in wanted:
        name, cut = _cut_head(w, producer, p.consts)
        shown = [n for n in reversed(cut) if not has_role(n, "identity")]
        if not shown:  # the tensor asked for, even behind an Identity
            name = w
        else:
            chain = " → ".join(f"{n.op_type} {n.name or n.output[0]!r}" for n in shown)
            notes.append(f"--output {w!r} is the output of {chain}, a head outside ReLU networks: analysing its "
                         f"input {name!r} (the logits)")
            trace.cuts.append({"output": w, "analysed": name, "nodes": [(n.op_type, n.name or n.output[0]) for n in shown]})
            trace.cut_nodes += cut
        chosen.append(name)
    integers = [w for w in chosen if p.elem_types.get(w, TensorProto.UNDEFINED) not in _FLOATS_OR_UNKNOWN]
    if integers:
        near = [t for w in integers for t in _float_sources(p, producer, w)]
        raise UsageError(f"--output names tensors that are not float {integers} (a QuantizeLinear's output is "
                         "an integer code: choose the DequantizeLinear after it)"
                         + (f"; the nearest float tensors before them: {list(dict.fromkeys(near))}" if near else ""))
    return list(dict.fromkeys(chosen))


def _float_sources(p: Prepared, producer: dict[str, NodeProto], name: str) -> list[str]:
    """The nearest float tensors that nodes compute, walking back from ``name`` through non-float ones
    (a UNet's float mask behind its Greater → Cast)."""
    found: list[str] = []
    seen, todo = {name}, [name]
    while todo:
        node = producer.get(todo.pop(0))
        for t in node.input if node is not None else []:
            if not t or t in seen or t in p.consts or t in p.inputs:
                continue
            seen.add(t)
            (found if p.elem_types.get(t, TensorProto.UNDEFINED) in FLOAT_TYPES else todo).append(t)
    return found


def _importable(p: Prepared, candidates: list[str], most: int = 8) -> list[str]:
    """Of the first ``most`` candidate output tensors: all of them if they import together, else those that
    import alone (each checked by importing it: a suggestion is never a guess)."""
    candidates = candidates[:most]

    def imports(outputs: list[str]) -> bool:
        try:
            import_prepared(p, outputs, suggest=False)
        except PathliftError:
            return False
        return True

    if not candidates or imports(candidates):
        return candidates
    return [c for c in candidates if imports([c])] if len(candidates) > 1 else []


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


def import_prepared(p: Prepared, outputs: list[str] | None = None, trace: ImportTrace | None = None,
                    suggest: bool = True) -> Dag:
    """Import a prepared model; raises :class:`UnsupportedModelError` listing every refusal and (with
    ``suggest``) the nearest tensors that do import: the analysed outputs untouched by the refusals and the
    refused nodes' computed inputs, checked by importing them.

    With ``trace``, records what was cut or dropped, the live nodes, the DAG (each layer's ``source``
    names its ONNX node), the nodes left behind a refused one and every refusal (all filled before
    the error is raised)."""
    dag = Dag(opset=p.opset, notes=list(p.notes))
    if trace is not None:
        trace.dag = dag
    if p.folded:
        dag.notes.append(f"folded {p.folded} constant-valued node(s)")
    nodes = p.nodes  # in topological order (prepare.topological_nodes)
    analysed = _analysed_outputs(p, nodes, outputs, dag.notes, trace)
    nodes = _live(nodes, analysed)
    if trace is not None:
        trace.analysed, trace.live = list(analysed), list(nodes)
    ctx = ImportContext(p, dag)
    ctx.used = {n for node in nodes for n in node.input} | set(analysed)
    for name, shape in p.inputs.items():
        if name in ctx.used:
            dag.add(Layer(name, "input", [], shape, source=name))
            dag.inputs.append(name)
            ctx.producer[name] = name
    refusals: list[Refusal] = trace.refusals if trace is not None else []
    refused: list[NodeProto] = []
    blocked: set[str] = set()
    for node in nodes:
        rule = IMPORTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is not None and any(n in blocked for n in node.input):
            blocked.update(node.output)  # downstream of a refused node: it has no input to import from
            if trace is not None:
                trace.blocked.append(node)
            continue
        try:
            if rule is None:
                raise RefuseNode(reason_for(node))
            _check_finite_attributes(node)
            rule(node, ctx)
        except RefuseNode as refusal:
            refusals.append(Refusal(node.name or node.output[0], node.op_type, refusal.reason))
            refused.append(node)
            blocked.update(node.output)
    if refusals:
        before = [t for t in analysed if t in ctx.producer] + [t for n in refused for t in n.input
                                                               if t in ctx.producer and t not in p.inputs]
        raise UnsupportedModelError(refusals, _importable(p, list(dict.fromkeys(before))) if suggest else [])
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
