"""Read a model safely and reduce it to what the importer needs.

``load_model`` reads a path, bytes or ``ModelProto`` (external data is read only from inside the
model's own folder). ``prepare`` fixes the input shapes, folds every constant-valued subgraph
(initializers, ``Constant``, shape arithmetic on static shapes, ``ConstantOfShape`` weights, ...)
into numpy arrays and runs ONNX shape inference, so that every remaining tensor has a static shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .errors import InvalidModelError, UsageError

ModelSource = str | os.PathLike | bytes | ModelProto

#: refuse any single constant tensor larger than this many elements (before allocating it)
MAX_TENSOR_ELEMENTS = 1 << 31
#: ops never folded even when all their inputs are constant
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def load_model(source: ModelSource) -> ModelProto:
    """Read an ONNX model from a path, raw bytes or an existing ``ModelProto``.

    External data files are resolved inside the model's folder only; a location that escapes it
    (``..``, an absolute path, a symlink pointing elsewhere) is refused with :class:`InvalidModelError`.
    """
    if isinstance(source, ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return _parse(bytes(source), "<bytes>")
    path = Path(source)
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read: {exc.strerror}") from exc
    model = _parse(data, str(path))
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
    return model


def _external_tensors(model: ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            yield tensor
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == TensorProto.EXTERNAL:
                yield attr.t


def _load_external_data(model: ModelProto, base: Path) -> None:
    """Load external tensors after checking that every location stays inside ``base``."""
    for tensor in _external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        try:
            target = (base / location).resolve()
        except (ValueError, OSError) as exc:
            raise InvalidModelError(f"tensor {tensor.name!r}: bad external data location {location!r}: {exc}") from exc
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise InvalidModelError(
                f"tensor {tensor.name!r}: external data location {location!r} escapes the model folder {base}"
            )
        if not target.is_file():
            raise InvalidModelError(f"tensor {tensor.name!r}: external data file {location!r} not found")
        offset, length = int(info.get("offset", 0)), info.get("length")
        n = int(np.prod(tensor.dims)) if tensor.dims else 1
        if n > MAX_TENSOR_ELEMENTS:
            raise InvalidModelError(f"tensor {tensor.name!r}: {n} elements exceed the limit {MAX_TENSOR_ELEMENTS}")
        size = target.stat().st_size
        need = offset + (int(length) if length is not None else 0)
        if size < need:
            raise InvalidModelError(
                f"tensor {tensor.name!r}: external file {location!r} is {size} bytes, needs {need}"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise InvalidModelError(f"cannot read external data: {exc}") from exc


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
            raise UsageError(f"input {vi.name!r} has non-float type {TensorProto.DataType.Name(ttype.elem_type)}")
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
            if any(d is None for d in dims[1:]) or not dims:
                raise UsageError(
                    f"input {vi.name!r} has symbolic dimensions {tuple(d or '?' for d in dims)}; pass --input-shape"
                )
            shape = tuple(1 if d is None else d for d in dims)
        shapes[vi.name] = tuple(int(d) for d in shape)
    return shapes


def _eval_node(node: NodeProto, args: list[np.ndarray | None], opset: int, domains) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if a is not None else "" for k, a in enumerate(args)]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in zip(names, args) if a is not None]
    n2 = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
    n2.attribute.extend(node.attribute)
    graph = helper.make_graph([n2], "fold", [], [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in n2.output], inits)
    model = helper.make_model(graph, opset_imports=list(domains))
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, {})]


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


def _declared_size(node: NodeProto, args: list[np.ndarray | None]) -> int | None:
    """Elements a shape-producing op would allocate, checked before it runs."""
    if node.op_type == "ConstantOfShape" and args and args[0] is not None:
        return int(np.prod(args[0].astype(np.int64))) if args[0].size else 1
    if node.op_type == "Expand" and len(args) > 1 and args[1] is not None:
        return int(np.prod(np.maximum(args[1].astype(np.int64), 1)))
    return None


def _fold(opset: int, domains, nodes: list[NodeProto], consts: dict[str, np.ndarray],
          shapes: dict[str, tuple[int, ...]]) -> tuple[list[NodeProto], int]:
    """One topological pass: every node whose inputs are all known constants becomes a constant."""
    kept: list[NodeProto] = []
    folded = 0
    for node in nodes:
        if node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            consts[node.output[0]] = _constant_value(node, attr)
            folded += 1
            continue
        if node.op_type == "Shape" and node.input[0] in shapes and node.input[0] not in consts:
            full = np.array(shapes[node.input[0]], dtype=np.int64)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            consts[node.output[0]] = full[attrs.get("start", 0): attrs.get("end", len(full))]
            folded += 1
            continue
        if node.op_type == "Size" and node.input[0] in shapes:
            consts[node.output[0]] = np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)
            folded += 1
            continue
        known = all((not name) or name in consts for name in node.input)
        if known and node.input and node.domain in ("", "ai.onnx") and node.op_type not in _NONDETERMINISTIC and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        ):
            args = [consts[n] if n else None for n in node.input]
            size = _declared_size(node, args)
            if size is not None and size > MAX_TENSOR_ELEMENTS:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) would allocate {size} elements")
            try:
                numpy_rule = _NUMPY_FOLDS.get(node.op_type)
                outs = numpy_rule(node, args) if numpy_rule else _eval_node(node, args, opset, domains)
            except Exception as exc:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}): cannot evaluate its constant inputs: {exc}") from exc
            for name, value in zip(node.output, outs):
                if name:
                    consts[name] = value
            folded += 1
            continue
        kept.append(node)
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
    raise InvalidModelError(f"Constant node {node.name!r} has an unsupported value attribute {sorted(attr)}")


#: constants up to this many elements are given to shape inference with their values (shape
#: arithmetic needs them); larger ones (weights) only with their type and shape
_INFER_VALUES_UP_TO = 4096


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
    graph = helper.make_graph(nodes, g.name or "g", in_vis + weights, list(g.output), inits)
    m2 = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 7))
    try:
        inferred = onnx.shape_inference.infer_shapes(m2, strict_mode=False, data_prop=True)
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


def prepare(model: ModelProto, input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None) -> Prepared:
    """Fix input shapes, fold constant subgraphs and infer every tensor's static shape."""
    opset = main_opset(model)
    inputs = _resolve_input_shapes(model, input_shape)
    consts: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        n = int(np.prod(tensor.dims)) if tensor.dims else 1
        if n > MAX_TENSOR_ELEMENTS:
            raise InvalidModelError(f"initializer {tensor.name!r} declares {n} elements (limit {MAX_TENSOR_ELEMENTS})")
        try:
            consts[tensor.name] = numpy_helper.to_array(tensor)
        except Exception as exc:
            raise InvalidModelError(f"initializer {tensor.name!r} cannot be read: {exc}") from exc
    shapes: dict[str, tuple[int, ...]] = dict(inputs)
    nodes = list(model.graph.node)
    folded_total = 0
    types: dict[str, int] = {}
    for _ in range(8):  # fold, infer shapes, fold again while shape arithmetic keeps resolving
        nodes, folded = _fold(opset, model.opset_import, nodes, consts, shapes)
        folded_total += folded
        if types and not folded:
            break
        shapes, types = _infer(model, consts, nodes, inputs)
    outputs = [o.name for o in model.graph.output]
    return Prepared(model, opset, inputs, outputs, nodes, consts, shapes, types, folded_total)
