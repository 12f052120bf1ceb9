"""Constant folding: every node whose inputs are all constants becomes a constant.

:func:`fold` makes one topological pass; ``Constant``, ``Shape`` and ``Size`` of a statically shaped
tensor are read directly, ``ConstantOfShape`` and ``DequantizeLinear`` computed in numpy, every other
deterministic default-domain op by ONNX's reference evaluator on that node alone. Each fold's output
size is checked (by ONNX shape inference) against :class:`~onnx_pathlift.fileio.read.Limits` before it
runs, and the folded constants' total size after.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ..errors import InvalidModelError, PathliftError, Refusal, UnsupportedModelError
from ..fileio.read import Limits

#: ops never folded even when all their inputs are constant
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
#: constants up to this many elements are given to shape inference with their values (shape
#: arithmetic needs them); larger ones (weights) only with their type and shape
INFER_VALUES_UP_TO = 4096


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
    inferred = onnx.shape_inference.infer_shapes(_node_model(node, args, domains, INFER_VALUES_UP_TO))
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


def fold(domains, nodes: list[NodeProto], consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
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
    """The value a ``Constant`` node holds (``attr``: its attributes by name); sparse values are refused."""
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
