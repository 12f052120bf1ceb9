"""Reduce a read model to what the importer needs: a :class:`Prepared` model.

:func:`prepare` checks the graph's structure against the ONNX schema and the limits, fixes the
input shapes, folds every constant-valued subgraph (:mod:`onnx_pathlift.frontend.fold`: initializers,
``Constant``, shape arithmetic on static shapes, ``ConstantOfShape`` weights, ...) into numpy
arrays, runs ONNX shape inference so that every remaining tensor has a static shape, and checks the
rules of the ONNX spec that shape inference leaves out (each op's ``@spec_rule`` in ``ops/``).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ..errors import InvalidModelError, Refusal, UnsupportedModelError, UsageError
from ..fileio.read import DEFAULT_LIMITS, FLOAT_TYPES, MAX_RANK, Limits, check_sizes, refuse_external
from ..ops.registry import SPEC_RULES
from ..sanitise import terminal
from .fold import INFER_VALUES_UP_TO, fold, reads_shapes
from .unfuse import standard_nodes


@dataclass
class Prepared:
    """A model with static input shapes, constants folded and every tensor's shape known (``consts``
    holds every initializer: those read apart from ``model`` have no data there)."""

    model: ModelProto
    opset: int
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    nodes: list[NodeProto]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    elem_types: dict[str, int]
    folded: int = 0
    notes: list[str] = field(default_factory=list)
    #: op types of the constant-valued nodes folded into constants (``folded`` is their total)
    folded_ops: Counter = field(default_factory=Counter)
    #: op types of the folded nodes ONNX's reference evaluator computed (the others: numpy fold rules)
    evaluated_ops: Counter = field(default_factory=Counter)


def main_opset(model: ModelProto) -> int:
    """The version of the default ONNX domain the model imports; refused when it imports none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InvalidModelError("model imports no version of the default ONNX domain")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` (or with commas) → ``(1, 3, 224, 224)``."""
    try:
        dims = tuple(int(d) for d in text.replace(",", "x").split("x") if d.strip())
    except ValueError:
        raise UsageError(f"bad input shape {text!r}: expected integers like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"bad input shape {text!r}: dimensions must be positive")
    return dims


def _activation_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    init = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in init]


def _resolve_input_shapes(
    model: ModelProto, input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None
) -> dict[str, tuple[int, ...]]:
    """Static shape per activation input: the model's own, a given one, or batch 1 for a symbolic batch."""
    inputs = _activation_inputs(model)
    if not inputs:
        raise InvalidModelError("the graph has no (non-initializer) input")
    given: dict[str, tuple[int, ...]] = {}
    if isinstance(input_shape, dict):
        unknown = set(input_shape) - {vi.name for vi in inputs}
        if unknown:
            raise UsageError(f"--input-shape names unknown inputs {sorted(unknown)}: the model's inputs are "
                             f"{[vi.name for vi in inputs]}")
        given = {k: tuple(v) for k, v in input_shape.items()}
    elif input_shape is not None:
        if len(inputs) != 1:
            raise UsageError(f"the model has {len(inputs)} inputs; give a shape per input name")
        given = {inputs[0].name: tuple(input_shape)}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in inputs:
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UsageError(f"input {vi.name!r} is not a tensor")
        if ttype.elem_type not in FLOAT_TYPES:
            raise UnsupportedModelError([Refusal(vi.name, "input", f"it has the non-float type {_type_name(ttype.elem_type)}: "
                                                 "an integer-typed network is outside the supported set")])
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if vi.name in given:
            shape = given[vi.name]
            if ttype.HasField("shape") and len(dims) != len(shape):
                raise UsageError(f"input {vi.name!r} has rank {len(dims)}, the given shape {shape} has rank {len(shape)}")
            for want, have in zip(dims, shape):
                if want is not None and want != have:
                    raise UsageError(f"input {vi.name!r}: given shape {shape} contradicts the model's {tuple(dims)}")
        elif not ttype.HasField("shape"):
            raise UsageError(f"input {vi.name!r} has no declared shape; pass --input-shape")
        else:
            if any(d is not None and d <= 0 for d in dims):
                raise InvalidModelError(f"input {vi.name!r} declares the shape {tuple(dims)}: every dimension must be "
                                        "positive (a zero-size input has no neurons)")
            if any(d is None for d in dims[1:]) or not dims:
                raise UsageError(
                    f"input {vi.name!r} has symbolic dimensions {tuple(d or '?' for d in dims)}; pass --input-shape"
                )
            shape = tuple(1 if d is None else d for d in dims)
        shapes[vi.name] = tuple(int(d) for d in shape)
    return shapes


def _type_name(elem_type: int) -> str:
    """``FLOAT``, ``INT64``, ... or ``<unknown N>`` for an element type ONNX does not define."""
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else f"<unknown {elem_type}>"


def _check_schema(node: NodeProto, opset: int) -> None:
    """A default-domain node against its ONNX schema where shape inference does not check it (and import
    rules rely on it): attribute names, types and required ones; no empty name for a required input."""
    rules = _schema_rules(node.op_type, opset, node.domain) if node.domain in ("", "ai.onnx") else None
    if rules is None:
        return
    formals, spec = rules

    def where() -> str:
        return f"node {node.name!r} ({terminal(node.op_type)})"

    for i, name in enumerate(node.input):
        if not name and formals and not formals[min(i, len(formals) - 1)][1]:
            raise InvalidModelError(f"{where()}: input {i} ({formals[min(i, len(formals) - 1)][0]}) is required but "
                                    "its name is empty")
    for attr in node.attribute:
        if attr.name not in spec:
            raise InvalidModelError(f"{where()}: {attr.name!r} is not an attribute of {terminal(node.op_type)} in opset {opset}")
        if attr.type != spec[attr.name][0]:
            raise InvalidModelError(f"{where()}: attribute {attr.name!r} is {_attr_type_name(attr.type)}, ONNX "
                                    f"{terminal(node.op_type)} expects {_attr_type_name(spec[attr.name][0])}")
    missing = sorted(n for n, (_, required) in spec.items() if required and n not in {attr.name for attr in node.attribute})
    if missing:
        raise InvalidModelError(f"{where()}: required attribute(s) {missing} missing")


@functools.lru_cache(maxsize=1024)
def _schema_rules(op_type: str, opset: int, domain: str) -> tuple[list[tuple[str, bool]], dict[str, tuple[int, bool]]] | None:
    """What :func:`_check_schema` reads of an op's ONNX schema at ``opset`` (None without one), asked once
    per op type: the formal inputs as ``(name, optional)`` and the attributes as ``{name: (type, required)}``."""
    if not onnx.defs.has(op_type, opset, domain):
        return None
    schema = onnx.defs.get_schema(op_type, opset, domain)
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    return ([(f.name, f.option == optional) for f in schema.inputs],
            {name: (int(a.type), bool(a.required)) for name, a in schema.attributes.items()})


def _attr_type_name(attr_type: int) -> str:
    """``FLOAT``, ``INTS``, ... or ``<unknown N>`` for an attribute type ONNX does not define."""
    names = onnx.AttributeProto.AttributeType
    return names.Name(attr_type) if attr_type in names.values() else f"<unknown {attr_type}>"


def _infer(model: ModelProto, consts: dict[str, np.ndarray], nodes: list[NodeProto], inputs: dict[str, tuple[int, ...]]):
    """ONNX shape inference on the folded graph; returns (shapes, elem_types) of every tensor."""
    g = model.graph
    used = {n for node in nodes for n in node.input} | {o.name for o in g.output}
    small = {k: v for k, v in consts.items() if k in used and v.size <= INFER_VALUES_UP_TO}
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in small.items()]
    in_vis = [helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, inputs[vi.name])
              for vi in _activation_inputs(model)]
    weights = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
               for k, v in consts.items() if k in used and k not in small]
    outputs = [o for o in g.output if o.name not in inputs]  # an input listed as output silences strict inference
    graph = helper.make_graph(nodes, g.name or "g", in_vis + weights, outputs, inits)
    m2 = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 7))
    try:
        inferred = onnx.shape_inference.infer_shapes(m2, check_type=True, strict_mode=True)
    except Exception as exc:
        raise InvalidModelError(f"shape inference failed: {exc}") from exc
    shapes: dict[str, tuple[int, ...]] = dict(inputs)
    types: dict[str, int] = {vi.name: vi.type.tensor_type.elem_type for vi in in_vis}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.elem_type:
            types.setdefault(vi.name, t.elem_type)
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes.setdefault(vi.name, tuple(int(d.dim_value) for d in t.shape.dim))
    for k, v in consts.items():
        shapes[k] = tuple(v.shape)
    return shapes, types


def _check_graph(model: ModelProto, opset: int, limits: Limits, read: bool = False) -> None:
    """Structure checks before anything is evaluated: opset, sizes, names, attributes, sparse tensors,
    external data (sizes and external data not again where the model was ``read`` from its file)."""
    if opset < 1:
        raise InvalidModelError(f"model imports the default ONNX domain at version {opset}")
    if opset > onnx.defs.onnx_opset_version():
        raise UnsupportedModelError([Refusal("<model>", "opset_import", f"default-domain opset {opset} is newer than "
                                             f"this onnx release knows ({onnx.defs.onnx_opset_version()})")])
    if not read and check_sizes(model, limits):  # external tensors: refused (the first one named)
        refuse_external(model)
    g = model.graph
    if not g.node:
        raise InvalidModelError("the graph has no nodes")
    for node in g.node:
        if not node.op_type:
            raise InvalidModelError(f"node {node.name!r} (outputs {list(node.output)}) has no op_type")
        _check_schema(node, opset)
    for what, names in (("initializer", [t.name for t in g.initializer]), ("graph input", [vi.name for vi in g.input])):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InvalidModelError(f"{what} {name!r} is declared twice")
            seen.add(name)
    if g.sparse_initializer:  # the first few named: a file may hold a million of them
        more = f"; {len(g.sparse_initializer) - 8} more not listed" if len(g.sparse_initializer) > 8 else ""
        raise UnsupportedModelError([Refusal(t.values.name or "<sparse>", "sparse_initializer", "sparse tensors are not "
                                             f"supported (store the initializer densely){more}")
                                     for t in g.sparse_initializer[:8]])


def _check_activations(shapes: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray], limits: Limits) -> None:
    """Every inferred activation (non-constant tensor) has a positive size within the limit, and a
    rank up to :data:`MAX_RANK`."""
    for name, shape in shapes.items():
        if name in consts:
            continue
        if len(shape) > MAX_RANK:
            raise InvalidModelError(f"tensor {name!r} has rank {len(shape)} (limit {MAX_RANK})")
        if any(d <= 0 for d in shape):
            raise InvalidModelError(f"tensor {name!r} has the shape {shape}: every dimension of a layer must be positive")
        n = math.prod(shape)
        if n > limits.max_activation_elements:
            raise InvalidModelError(f"tensor {name!r} has {n} elements {shape} (limit {limits.max_activation_elements})")


def _check_spec_rules(nodes: list[NodeProto], consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                      opset: int) -> None:
    """Each default-domain node against its op's spec rule (registered with ``@spec_rule`` in ``ops/``)."""
    for node in nodes:
        rule = SPEC_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        problem = rule(node, consts, shapes, opset) if rule else None
        if problem:
            raise InvalidModelError(f"node {node.name!r} ({terminal(node.op_type)}): {problem}")


def topological_nodes(nodes: list[NodeProto], known: set[str]) -> list[NodeProto]:
    """The nodes in a topological order, stable where the file's order already is one (keras2onnx writes
    them reversed); ``known`` are the tensors no node produces (inputs, initializers). Refuses cycles,
    duplicate producers and dangling inputs."""
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out in producer or (out and out in known):
                raise InvalidModelError(f"tensor {out!r} is produced twice (node {node.name!r})")
            if out:
                producer[out] = i
    edges = []
    for i, node in enumerate(nodes):
        for name in node.input:
            if not name or name in known:
                continue
            if name not in producer:
                raise InvalidModelError(f"node {node.name!r} ({terminal(node.op_type)}) reads {name!r}, which nothing produces")
            edges.append((producer[name], i))
    if all(j < i for j, i in edges):  # the file's order is one: the sort below would return it unchanged
        return list(nodes)
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    g.add_edges_from(edges)
    try:
        return [nodes[i] for i in nx.lexicographical_topological_sort(g)]
    except nx.NetworkXUnfeasible:
        cycle = [nodes[v].name or nodes[v].op_type for v, _ in nx.find_cycle(g)]
        raise InvalidModelError(f"the graph has a cycle through nodes {cycle}") from None


def prepare(model: ModelProto, input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None,
            limits: Limits = DEFAULT_LIMITS, stored: dict[int, np.ndarray] | None = None, read: bool = False) -> Prepared:
    """Fix input shapes, fold constant subgraphs and infer every tensor's static shape.

    ``input_shape``: one shape for a single-input model, or a shape per input name; by default the
    model's own (batch 1 for a symbolic batch). Raises :class:`InvalidModelError` for a model that
    breaks the ONNX spec or ``limits``, :class:`UnsupportedModelError` for a valid one outside the
    supported set (a newer opset, integer inputs, sparse tensors), :class:`UsageError` for a shape
    that contradicts the model or a symbolic shape left unresolved. ``stored``: initializers read
    apart from the model, by index (:func:`onnx_pathlift.fileio.load.load_split`). ``read``: the model was
    just read from its file by :func:`~onnx_pathlift.fileio.load.load_model` or ``load_split`` with these
    ``limits``, which checked its declared sizes and loaded its external data: those walks are not repeated."""
    opset = main_opset(model)
    _check_graph(model, opset, limits, read)
    inputs = _resolve_input_shapes(model, input_shape)
    _check_activations(inputs, {}, limits)  # before shape inference sees them
    consts: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(model.graph.initializer):
        try:
            consts[tensor.name] = stored[index] if stored and index in stored else numpy_helper.to_array(tensor)
        except Exception as exc:
            raise InvalidModelError(f"initializer {tensor.name!r} cannot be read: {exc}") from exc
    shapes: dict[str, tuple[int, ...]] = dict(inputs)
    nodes = topological_nodes(standard_nodes(list(model.graph.node), opset), set(consts) | set(inputs))
    folded_total = 0
    folded_ops: Counter = Counter()
    evaluated_ops: Counter = Counter()
    types: dict[str, int] = {}
    for _ in range(8):  # fold, infer shapes, fold again while shape arithmetic keeps resolving
        nodes, folded = fold(model.opset_import, opset, nodes, consts, shapes, limits, folded_ops, evaluated_ops)
        folded_total += folded
        if types and not folded:
            break
        shapes, types = _infer(model, consts, nodes, inputs)
        if not reads_shapes(nodes):  # another pass would fold nothing
            break
    _check_activations(shapes, consts, limits)
    _check_spec_rules(nodes, consts, shapes, opset)
    outputs = [o.name for o in model.graph.output]
    return Prepared(model, opset, inputs, outputs, nodes, consts, shapes, types, folded_total, folded_ops=folded_ops,
                    evaluated_ops=evaluated_ops)
