"""Read a model safely and reduce it to what the importer needs.

``load_model`` reads a path, bytes or ``ModelProto`` (external data is read only from inside the
model's own folder). ``prepare`` fixes the input shapes, folds every constant-valued subgraph
(initializers, ``Constant``, shape arithmetic on static shapes, ``ConstantOfShape`` weights, ...)
into numpy arrays and runs ONNX shape inference, so that every remaining tensor has a static shape.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .contrib import standard_nodes
from .errors import InvalidModelError, PathliftError, Refusal, UnsupportedModelError, UsageError

ModelSource = str | os.PathLike | bytes | ModelProto


@dataclass(frozen=True)
class Limits:
    """Resource limits, checked on declared sizes before anything is allocated.

    ``max_tensor_elements`` bounds any one stored or folded constant (initializer, ``Constant``
    value, external tensor, result of a constant subgraph), ``max_total_bytes`` all of them
    together, ``max_activation_elements`` any one activation (what onnxruntime allocates when it
    runs the lifted network: 2**28 float32 elements are 1 GiB), ``max_nodes`` the nodes of the graph,
    its subgraphs and its functions, ``max_node_inputs`` the inputs of any one node (a ``Sum`` or
    ``Concat`` of that many operands), ``max_graph_io`` the main graph's inputs (initializers listed as
    inputs aside) plus its outputs.
    The last three bound time: onnxruntime builds its sessions in time that grows with them
    (docs/fuzzing.md, "Scaling").
    """

    max_tensor_elements: int = 1 << 31
    max_total_bytes: int = 1 << 33
    max_activation_elements: int = 1 << 28
    max_nodes: int = 1 << 15
    max_node_inputs: int = 1 << 12
    max_graph_io: int = 1 << 12


DEFAULT_LIMITS = Limits()
#: ops never folded even when all their inputs are constant
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
#: constants up to this many elements are given to shape inference with their values (shape
#: arithmetic needs them); larger ones (weights) only with their type and shape
_INFER_VALUES_UP_TO = 4096
#: the highest tensor rank accepted (numpy stops at 64; no real network comes near)
MAX_RANK = 32
#: element types ONNX packs below a byte (numpy dtype name -> bits)
_SUB_BYTE_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2, "float6_e2m3fn": 6, "float6_e3m2fn": 6}


def load_model(source: ModelSource, limits: Limits = DEFAULT_LIMITS) -> ModelProto:
    """Read an ONNX model from a path, raw bytes or an existing ``ModelProto``.

    External data files are resolved inside the model's folder only; a location that escapes it
    (``..``, an absolute path, a symlink pointing elsewhere) is refused with :class:`InvalidModelError`,
    and so is external data in a model given as bytes or ``ModelProto`` (it has no folder).
    """
    if isinstance(source, ModelProto):
        _refuse_external(source)
        return source
    if isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "<bytes>")
        _refuse_external(model)
        return model
    path = Path(source)
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read: {exc.strerror}") from exc
    model = _parse(data, str(path))
    _check_sizes(model, limits)
    _load_external_data(model, path.resolve().parent)
    return model


def _parse(data: bytes, where: str) -> ModelProto:
    if not data:
        raise InvalidModelError(f"{where}: empty file")
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeWarning-like errors
        raise InvalidModelError(f"{where}: not an ONNX model (protobuf decode failed: {exc})") from exc
    if not model.HasField("graph"):
        raise InvalidModelError(f"{where}: not an ONNX model (no graph)")
    bad = _bad_string(model)
    if bad is not None:
        raise InvalidModelError(f"{where}: not an ONNX model (a string field holds invalid UTF-8: {bad!r})")
    return model


def _bad_string(message) -> bytes | None:
    """The first string field of ``message`` (recursively) that is not valid UTF-8, or None.

    protobuf decodes strings lazily and hands back invalid ones as ``bytes`` (or raises later);
    checking them once here keeps every name a ``str``. Bytes fields (tensor data) are skipped."""
    for name, is_message, repeated in _text_fields(message.DESCRIPTOR):
        if not repeated and not message.HasField(name):
            continue
        try:
            values = getattr(message, name) if repeated else [getattr(message, name)]
            for value in values:
                bad = _bad_string(value) if is_message else (value if isinstance(value, bytes) else None)
                if bad is not None:
                    return bad
        except UnicodeDecodeError as exc:
            return exc.object
    return None


@functools.cache
def _text_fields(descriptor) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is a message, is repeated) of the string and message fields of a message type."""
    fields = []
    for f in descriptor.fields:
        if f.type in (f.TYPE_STRING, f.TYPE_MESSAGE):
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED  # protobuf < 5.28
            fields.append((f.name, f.type == f.TYPE_MESSAGE, repeated))
    return tuple(fields)


def _subgraphs(nodes):
    """Every graph nested in the nodes' attributes (If/Loop/Scan bodies), recursively."""
    for node in nodes:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield sub
                yield from _subgraphs(sub.node)


def _graphs(model: ModelProto):
    """The main graph and every subgraph, including those inside the model's local functions."""
    yield model.graph
    yield from _subgraphs(model.graph.node)
    for function in model.functions:
        yield from _subgraphs(function.node)


def _all_nodes(model: ModelProto):
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: ModelProto):
    """Every tensor stored in the model: initializers (a sparse one as its values and indices) and
    tensor attributes, in the graph, its subgraphs and the model's functions."""
    sparse = []
    for graph in _graphs(model):
        yield from graph.initializer
        sparse += graph.sparse_initializer
    for node in _all_nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse += [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            sparse += attr.sparse_tensors
    for tensor in sparse:
        yield from (t for t in (tensor.values, tensor.indices) if t.ByteSize())


def _elements(tensor: TensorProto, limits: Limits) -> int:
    """The declared element count of a tensor, refused when negative, over the limit, or of a rank
    over :data:`MAX_RANK`."""
    if len(tensor.dims) > MAX_RANK:
        raise InvalidModelError(f"tensor {tensor.name!r} has rank {len(tensor.dims)} (limit {MAX_RANK})")
    if any(d < 0 for d in tensor.dims):
        raise InvalidModelError(f"tensor {tensor.name!r} declares a negative dimension {tuple(tensor.dims)}")
    n = math.prod(tensor.dims)
    if n > limits.max_tensor_elements:
        raise InvalidModelError(
            f"tensor {tensor.name!r} declares {n} elements {tuple(tensor.dims)} (limit {limits.max_tensor_elements})")
    return n


def _nbytes(tensor: TensorProto, n: int) -> int:
    """Bytes that ``n`` elements of the tensor's type take (packed for sub-byte types)."""
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except KeyError:
        raise InvalidModelError(f"tensor {tensor.name!r} has an unknown data type {tensor.data_type}") from None
    return -(-n * _SUB_BYTE_BITS.get(dtype.name, 8 * dtype.itemsize) // 8)


def _check_sizes(model: ModelProto, limits: Limits) -> None:
    """Declared sizes of every stored tensor, the node count and the graph's width, against the limits."""
    g = model.graph
    if len(g.input) + len(g.output) > limits.max_graph_io:  # IR < 4 lists initializers as inputs: not those
        stored = {t.name for t in g.initializer}
        inputs = sum(1 for vi in g.input if vi.name not in stored)
        if inputs + len(g.output) > limits.max_graph_io:
            raise InvalidModelError(f"the graph has {inputs} inputs and {len(g.output)} outputs "
                                    f"(limit {limits.max_graph_io} in all)")
    nodes = sum(1 for _ in _all_nodes(model))
    if nodes > limits.max_nodes:
        raise InvalidModelError(f"the model has {nodes} nodes (limit {limits.max_nodes})")
    wide = next((n for n in _all_nodes(model) if len(n.input) > limits.max_node_inputs), None)
    if wide is not None:
        raise InvalidModelError(f"node {wide.name!r} ({wide.op_type}) has {len(wide.input)} inputs "
                                f"(limit {limits.max_node_inputs})")
    total = 0
    for tensor in _all_tensors(model):
        total += _nbytes(tensor, _elements(tensor, limits))
        if total > limits.max_total_bytes:
            raise InvalidModelError(f"the model's tensors declare more than {limits.max_total_bytes} bytes "
                                    f"(limit reached at tensor {tensor.name!r})")


def _refuse_external(model: ModelProto) -> None:
    """External tensors left unloaded: only :func:`load_model` with a path reads them (from its folder)."""
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            raise InvalidModelError(f"tensor {tensor.name!r} keeps its data in the external file {location!r}, which is "
                                    "read only when the model is loaded from its path (bytes and ModelProto sources "
                                    "have no folder)")


def _load_external_data(model: ModelProto, base: Path) -> None:
    """Load external tensors after checking that every location stays inside ``base``."""
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        try:
            target = (base / location).resolve()
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except (ValueError, OSError) as exc:
            raise InvalidModelError(f"tensor {tensor.name!r}: bad external data entry {info}: {exc}") from exc
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise InvalidModelError(
                f"tensor {tensor.name!r}: external data location {location!r} escapes the model folder {base}"
            )
        if not target.exists():
            raise InvalidModelError(f"tensor {tensor.name!r}: external data file {location!r} not found")
        if not target.is_file():
            raise InvalidModelError(f"tensor {tensor.name!r}: external data file {location!r} is not a regular file")
        expected = _nbytes(tensor, math.prod(tensor.dims))
        if offset < 0 or (length is not None and length != expected):
            raise InvalidModelError(f"tensor {tensor.name!r}: external data offset {offset}, length {length} do not fit "
                                    f"its {expected} bytes (dims {tuple(tensor.dims)})")
        _read_external(tensor, target, location, offset, expected, exact_end=length is None)


def _read_external(tensor: TensorProto, target: Path, location: str, offset: int, expected: int, exact_end: bool) -> None:
    """Read exactly ``expected`` bytes at ``offset`` into ``tensor.raw_data``, after checking the file's
    size: it must hold them, and without a ``length`` entry (ONNX then means "to the end of the file")
    it must end right after them. Never reads more than ``expected`` bytes, whatever the file's size."""
    try:
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset + expected or (exact_end and size != offset + expected):
                raise InvalidModelError(
                    f"tensor {tensor.name!r}: external file {location!r} is {size} bytes, "
                    f"{'needs' if size < offset + expected else 'and without a length entry must be'} "
                    f"{offset + expected} (offset {offset} + {expected} bytes for dims {tuple(tensor.dims)})")
            f.seek(offset)
            data = f.read(expected)
    except OSError as exc:
        raise InvalidModelError(f"tensor {tensor.name!r}: cannot read external data {location!r}: {exc.strerror}") from exc
    if len(data) != expected:  # the file shrank after the size check
        raise InvalidModelError(f"tensor {tensor.name!r}: external file {location!r} ended after {len(data)} of "
                                f"{expected} bytes")
    tensor.raw_data = data
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]


@dataclass
class Prepared:
    """A model with static input shapes, constants folded and every tensor's shape known."""

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


def main_opset(model: ModelProto) -> int:
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
            raise UsageError(f"--input-shape names unknown inputs {sorted(unknown)}")
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
        if ttype.elem_type not in _FLOAT_TYPES:
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
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else f"<unknown {elem_type}>"


def _check_schema(node: NodeProto, opset: int) -> None:
    """A default-domain node against its ONNX schema where shape inference does not check it (and import
    rules rely on it): attribute names, types and required ones; no empty name for a required input."""
    if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type, opset, node.domain):
        return
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    spec = schema.attributes
    where = f"node {node.name!r} ({node.op_type})"
    for i, name in enumerate(node.input):
        formal = schema.inputs[min(i, len(schema.inputs) - 1)] if schema.inputs else None
        if not name and formal is not None and formal.option != onnx.defs.OpSchema.FormalParameterOption.Optional:
            raise InvalidModelError(f"{where}: input {i} ({formal.name}) is required but its name is empty")
    for attr in node.attribute:
        if attr.name not in spec:
            raise InvalidModelError(f"{where}: {attr.name!r} is not an attribute of {node.op_type} in opset {opset}")
        if attr.type != int(spec[attr.name].type):
            raise InvalidModelError(f"{where}: attribute {attr.name!r} is {_attr_type_name(attr.type)}, ONNX "
                                    f"{node.op_type} expects {_attr_type_name(int(spec[attr.name].type))}")
    missing = sorted(n for n, a in spec.items() if a.required and n not in {attr.name for attr in node.attribute})
    if missing:
        raise InvalidModelError(f"{where}: required attribute(s) {missing} missing")


def _attr_type_name(attr_type: int) -> str:
    names = onnx.AttributeProto.AttributeType
    return names.Name(attr_type) if attr_type in names.values() else f"<unknown {attr_type}>"


def _node_model(node: NodeProto, args: list[np.ndarray | None], domains, values_up_to: float) -> ModelProto:
    """``node`` alone on its constant inputs: those of up to ``values_up_to`` elements as initializers,
    larger ones as graph inputs with their type and shape only."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(args)]
    given = [(n, np.asarray(a)) for n, a in zip(names, args) if a is not None]
    inits = [numpy_helper.from_array(a, n) for n, a in given if a.size <= values_up_to]
    typed = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in given if a.size > values_up_to]
    n2 = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
    n2.attribute.extend(node.attribute)
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in n2.output]
    return helper.make_model(helper.make_graph([n2], "fold", typed, outs, inits), opset_imports=list(domains))


def _check_output_sizes(node: NodeProto, args: list[np.ndarray | None], domains, limits: Limits) -> None:
    """Refuse a fold whose outputs, sized by ONNX shape inference, exceed the limit (before it runs)."""
    inferred = onnx.shape_inference.infer_shapes(_node_model(node, args, domains, _INFER_VALUES_UP_TO))
    for vi in inferred.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            n = math.prod(d.dim_value for d in dims)
            if n > limits.max_tensor_elements:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) would allocate {n} elements "
                                        f"(limit {limits.max_tensor_elements})")


def _eval_node(node: NodeProto, args: list[np.ndarray | None], domains) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(r) for r in ReferenceEvaluator(_node_model(node, args, domains, math.inf)).run(None, {})]


def _constant_of_shape(node: NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray]:
    """ConstantOfShape directly in numpy (model zoos build whole weight tensors with it)."""
    attr = {a.name: a for a in node.attribute}
    fill = numpy_helper.to_array(attr["value"].t).reshape(-1)[:1] if "value" in attr else np.zeros(1, np.float32)
    return [np.full(tuple(int(d) for d in args[0]), fill[0], dtype=fill.dtype)]


def _dequantize(node: NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray]:
    """DequantizeLinear ``(x − zero_point) · scale``, per tensor or along ``axis`` (quantized weights)."""
    x, scale = args[0].astype(np.float64), args[1].astype(np.float64)
    zero = args[2].astype(np.float64) if len(args) > 2 and args[2] is not None else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        axis = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return [((x - zero) * scale).astype(args[1].dtype)]


#: ops folded directly in numpy (fast, and independent of the reference evaluator's op versions)
_NUMPY_FOLDS = {"ConstantOfShape": _constant_of_shape, "DequantizeLinear": _dequantize}


def _fold_node(node: NodeProto, domains, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
               limits: Limits) -> list[np.ndarray] | None:
    """The node's output values if they are constant (computed here), else None."""
    if node.op_type == "Constant":
        return [_constant_value(node, {a.name: a for a in node.attribute})]
    if node.op_type == "Shape" and node.input[0] in shapes and node.input[0] not in consts:
        full = np.array(shapes[node.input[0]], dtype=np.int64)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return [full[attrs.get("start", 0): attrs.get("end", len(full))]]
    if node.op_type == "Size" and node.input[0] in shapes:
        return [np.array(math.prod(shapes[node.input[0]]), dtype=np.int64)]
    known = all((not name) or name in consts for name in node.input)
    if not (known and any(node.input) and node.domain in ("", "ai.onnx") and node.op_type not in _NONDETERMINISTIC) or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    args = [consts[n] if n else None for n in node.input]
    _check_output_sizes(node, args, domains, limits)
    numpy_rule = _NUMPY_FOLDS.get(node.op_type)
    with np.errstate(all="ignore"):  # NaN/Inf results are refused with their position where they are used
        return numpy_rule(node, args) if numpy_rule else _eval_node(node, args, domains)


def _fold(domains, nodes: list[NodeProto], consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
          limits: Limits, counter: Counter | None = None) -> tuple[list[NodeProto], int]:
    """One topological pass: every node whose inputs are all known constants becomes a constant
    (their op types are counted in ``counter``)."""
    kept: list[NodeProto] = []
    folded = 0
    total = sum(v.nbytes for v in consts.values())
    for node in nodes:
        try:
            outs = _fold_node(node, domains, consts, shapes, limits)
        except PathliftError:
            raise
        except Exception as exc:  # the reference evaluator or numpy refusing the node's inputs or attributes
            raise InvalidModelError(f"node {node.name!r} ({node.op_type}): cannot evaluate its constant inputs: "
                                    f"{type(exc).__name__}: {exc}") from exc
        if outs is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, outs):
            if not name:
                continue
            if value.dtype == object and not all(isinstance(v, (str, bytes)) for v in value.flat):
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}): its output {name!r} is not a tensor")
            total += value.nbytes
            if value.size > limits.max_tensor_elements:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) computed {value.size} elements "
                                        f"(limit {limits.max_tensor_elements})")
            if total > limits.max_total_bytes:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}): the constants exceed "
                                        f"{limits.max_total_bytes} bytes in all")
            consts[name] = value
        folded += 1
        if counter is not None:
            counter[node.op_type] += 1
    return kept, folded


def _constant_value(node: NodeProto, attr: dict) -> np.ndarray:
    if "value" in attr:
        return numpy_helper.to_array(attr["value"].t)
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attr:
            return np.array(helper.get_attribute_value(attr[key]), dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attr:
            return np.array(helper.get_attribute_value(attr[key]), dtype=dtype)
    if "sparse_value" in attr:
        raise UnsupportedModelError([Refusal(node.name or node.output[0], "Constant", "sparse tensors are not supported")])
    raise InvalidModelError(f"Constant node {node.name!r} has an unsupported value attribute {sorted(attr)}")


def _infer(model: ModelProto, consts: dict[str, np.ndarray], nodes: list[NodeProto], inputs: dict[str, tuple[int, ...]]):
    """ONNX shape inference on the folded graph; returns (shapes, elem_types) of every tensor."""
    g = model.graph
    used = {n for node in nodes for n in node.input} | {o.name for o in g.output}
    small = {k: v for k, v in consts.items() if k in used and v.size <= _INFER_VALUES_UP_TO}
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


def _check_graph(model: ModelProto, opset: int, limits: Limits) -> None:
    """Structure checks before anything is evaluated: opset, sizes, names, attributes, sparse tensors,
    external data."""
    if opset < 1:
        raise InvalidModelError(f"model imports the default ONNX domain at version {opset}")
    if opset > onnx.defs.onnx_opset_version():
        raise UnsupportedModelError([Refusal("<model>", "opset_import", f"default-domain opset {opset} is newer than "
                                             f"this onnx release knows ({onnx.defs.onnx_opset_version()})")])
    _check_sizes(model, limits)
    _refuse_external(model)
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
    if g.sparse_initializer:
        raise UnsupportedModelError([Refusal(t.values.name or "<sparse>", "sparse_initializer", "sparse tensors are not "
                                             "supported (store the initializer densely)") for t in g.sparse_initializer])


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


def _operand(node: NodeProto, i: int, table: dict):
    """``table``'s entry (a shape or a constant) for the node's input ``i``, None if absent or unknown."""
    return table.get(node.input[i]) if i < len(node.input) and node.input[i] else None


def _conv_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    x, w, b = _operand(node, 0, shapes), _operand(node, 1, consts), _operand(node, 2, consts)
    if x is None or w is None:
        return None
    a = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    group = a.get("group", 1)
    if w.ndim != len(x) or w.ndim < 3:
        return f"its kernel {w.shape} and its input {x} differ in rank"
    if group < 1 or w.shape[0] % group:
        return f"group {group} does not divide the kernel's {w.shape[0]} output channels"
    if x[1] != w.shape[1] * group:
        return f"its input has {x[1]} channels, its kernel {w.shape} with group {group} takes {w.shape[1] * group}"
    if b is not None and b.shape != w.shape[:1]:
        return f"its bias has shape {b.shape}, its kernel {w.shape} needs ({w.shape[0]},)"
    if list(a.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
        return f"its kernel_shape {a['kernel_shape']} differs from its kernel {w.shape}"
    return _pads_problem(a)


def _pads_problem(a: dict) -> str | None:
    auto_pad = a.get("auto_pad", b"NOTSET")
    if "pads" in a and auto_pad not in (b"", b"NOTSET"):
        return f"it sets both pads {a['pads']} and auto_pad {auto_pad.decode(errors='replace')!r}"
    return None


def _gemm_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    a, b = _operand(node, 0, shapes), _operand(node, 1, shapes)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None  # shape inference refuses other ranks
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    (m, k), (k2, n) = a[::-1] if attrs.get("transA") else a, b[::-1] if attrs.get("transB") else b
    if k != k2:
        return f"its operands {a} and {b} (transA={attrs.get('transA', 0)}, transB={attrs.get('transB', 0)}) do not chain"
    c = _operand(node, 2, shapes)
    if c is not None and not _broadcasts_to(c, (m, n)):
        return f"its bias of shape {c} does not broadcast to the output ({m}, {n})"
    return None


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` one way (ONNX unidirectional broadcasting)."""
    return len(shape) <= len(target) and all(d in (1, t) for d, t in zip(shape[::-1], target[::-1]))


def _prelu_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    x, slope = _operand(node, 0, shapes), _operand(node, 1, shapes)
    if x is not None and slope is not None and not _broadcasts_to(slope, x):
        return f"its slope of shape {slope} does not broadcast to its input {x}"
    return None


def _clip_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    for i, what in ((1, "min"), (2, "max")):
        if _operand(node, i, shapes) not in (None, ()):
            return f"its {what} {node.input[i]!r} has shape {shapes[node.input[i]]}, not a scalar"
    return None


def _pool_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    x = _operand(node, 0, shapes)
    if x is not None and len(x) < 3:
        return f"its input {x} has no spatial dimension"
    a = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    kernel, pads = list(a.get("kernel_shape", [])), list(a.get("pads", []))
    if kernel and len(pads) == 2 * len(kernel) and any(p >= k for p, k in zip(pads, kernel + kernel)):
        return f"its pads {pads} are not all smaller than its kernel {kernel} (the spec's bound)"
    return _pads_problem(a)


def _transpose_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    x = _operand(node, 0, shapes)
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    if x is not None and perm is not None and sorted(perm) != list(range(len(x))):
        return f"its perm {perm} is not a permutation of the axes of its input {x}"
    return None


def _batchnorm_problem(node: NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> str | None:
    x = _operand(node, 0, shapes)
    for i, what in enumerate(("scale", "bias", "mean", "var"), start=1):
        v = _operand(node, i, consts)
        if x is not None and len(x) > 1 and v is not None and v.shape != x[1:2]:
            return f"its {what} {node.input[i]!r} has shape {v.shape}, its input {x} needs ({x[1]},)"
    return None


def _legacy_broadcast(node: NodeProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Add/Sub/Mul/Div before opset 7: equal shapes, or ``broadcast=1`` with B laid along ``axis`` of A.
    Only the trailing alignment (numpy's, which the importer uses) is accepted."""
    a, b = _operand(node, 0, shapes), _operand(node, 1, shapes)
    if a is None or b is None or a == b:
        return
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    where = f"node {node.name!r} ({node.op_type})"
    if not attrs.get("broadcast"):
        raise InvalidModelError(f"{where}: operands of shapes {a} and {b} differ and broadcast is not set (opset < 7)")
    if attrs.get("axis", len(a) - len(b)) % max(len(a), 1) != len(a) - len(b):
        raise UnsupportedModelError([Refusal(node.name or node.output[0], node.op_type, f"opset < 7 broadcast of {b} "
                                             f"along axis {attrs['axis']} of {a} (only trailing alignment is supported)")])


#: rules of the ONNX spec that ONNX shape inference does not check (onnxruntime refuses such models)
_SHAPE_RULES = {"Conv": _conv_problem, "Gemm": _gemm_problem, "BatchNormalization": _batchnorm_problem,
                "PRelu": _prelu_problem, "Clip": _clip_problem, "Transpose": _transpose_problem,
                **dict.fromkeys(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"], _pool_problem)}


def _check_spec_rules(nodes: list[NodeProto], consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                      opset: int) -> None:
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        rule = _SHAPE_RULES.get(node.op_type)
        problem = rule(node, consts, shapes) if rule else None
        if problem:
            raise InvalidModelError(f"node {node.name!r} ({node.op_type}): {problem}")
        if opset < 7 and node.op_type in ("Add", "Sub", "Mul", "Div"):
            _legacy_broadcast(node, shapes)


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


def prepare(model: ModelProto, input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None,
            limits: Limits = DEFAULT_LIMITS) -> Prepared:
    """Fix input shapes, fold constant subgraphs and infer every tensor's static shape."""
    opset = main_opset(model)
    _check_graph(model, opset, limits)
    inputs = _resolve_input_shapes(model, input_shape)
    _check_activations(inputs, {}, limits)  # before shape inference sees them
    consts: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        try:
            consts[tensor.name] = numpy_helper.to_array(tensor)
        except Exception as exc:
            raise InvalidModelError(f"initializer {tensor.name!r} cannot be read: {exc}") from exc
    shapes: dict[str, tuple[int, ...]] = dict(inputs)
    nodes = topological_nodes(standard_nodes(list(model.graph.node), opset), set(consts) | set(inputs))
    folded_total = 0
    folded_ops: Counter = Counter()
    types: dict[str, int] = {}
    for _ in range(8):  # fold, infer shapes, fold again while shape arithmetic keeps resolving
        nodes, folded = _fold(model.opset_import, nodes, consts, shapes, limits, folded_ops)
        folded_total += folded
        if types and not folded:
            break
        shapes, types = _infer(model, consts, nodes, inputs)
    _check_activations(shapes, consts, limits)
    _check_spec_rules(nodes, consts, shapes, opset)
    outputs = [o.name for o in model.graph.output]
    return Prepared(model, opset, inputs, outputs, nodes, consts, shapes, types, folded_total, folded_ops=folded_ops)
