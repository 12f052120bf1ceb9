"""The graph's plumbing: Constant, Shape, Size and ConstantOfShape, folded to constants before import, and
the random ops that never are.

``Constant`` holds its value in an attribute; ``Shape`` and ``Size`` of a statically shaped tensor are read
from the shape alone (whatever the tensor's values); ``ConstantOfShape`` is computed in numpy (model zoos
build whole weight tensors with it). :mod:`onnx_pathlift.frontend.fold` asks these declarations.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ..errors import InvalidModelError, Refusal, UnsupportedModelError
from .registry import fold_size, folds, graph_role, never_folds

graph_role("constant", "Constant")
never_folds("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")


def _attributes(node: NodeProto) -> dict:
    return {a.name: a for a in node.attribute}


@folds("Constant", early=True)
def constant_value(node: NodeProto, args: list | None = None, shapes: dict | None = None,
                   opset: int = 0) -> list[np.ndarray]:
    """The value a ``Constant`` node holds; sparse values are refused."""
    attr = _attributes(node)
    if "value" in attr:
        return [numpy_helper.to_array(attr["value"].t)]
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64), ("value_floats", np.float32),
                       ("value_ints", np.int64)):
        if key in attr:
            return [np.array(helper.get_attribute_value(attr[key]), dtype=dtype)]
    if "sparse_value" in attr:
        raise UnsupportedModelError([Refusal(node.name or node.output[0], "Constant", "sparse tensors are not supported")])
    raise InvalidModelError(f"Constant node {node.name!r} has an unsupported value attribute {sorted(attr)}")


@folds("Shape", early=True)
def _shape(node: NodeProto, args: list, shapes: dict, opset: int) -> list[np.ndarray] | None:
    """``Shape(x)[start:end]`` of a statically shaped, non-constant ``x`` (a constant one is evaluated)."""
    if node.input[0] not in shapes or args[0] is not None:
        return None
    full = np.array(shapes[node.input[0]], dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return [full[attrs.get("start", 0): attrs.get("end", len(full))]]


@folds("Size", early=True)
def _size(node: NodeProto, args: list, shapes: dict, opset: int) -> list[np.ndarray] | None:
    """``Size(x)``, the product of ``x``'s static shape."""
    return [np.array(math.prod(shapes[node.input[0]]), dtype=np.int64)] if node.input[0] in shapes else None


@folds("ConstantOfShape")
def _constant_of_shape(node: NodeProto, args: list, shapes: dict, opset: int) -> list[np.ndarray]:
    """ConstantOfShape directly in numpy."""
    attr = _attributes(node)
    value = attr["value"].t.SerializeToString() if "value" in attr else None
    fill = np.zeros(1, np.float32) if value is None else (_fill if len(value) <= 256 else _fill.__wrapped__)(value)
    return [np.full(tuple(int(d) for d in args[0]), fill[0], dtype=fill.dtype)]


@functools.lru_cache(maxsize=64)
def _fill(value: bytes) -> np.ndarray:
    """The first element of a ``ConstantOfShape``'s ``value`` tensor, given serialised: read once per distinct
    tensor (a zoo's model builds hundreds of weights from one fill value; a tensor over 256 bytes, which the
    spec's one element never is, is read each time, not kept)."""
    tensor = TensorProto()
    tensor.ParseFromString(value)
    fill = numpy_helper.to_array(tensor).reshape(-1)[:1]
    fill.flags.writeable = False
    return fill


@fold_size("ConstantOfShape")
def _constant_of_shape_size(node: NodeProto, args: list) -> int | None:
    """The product of its shape input (a 1-D integer tensor of non-negative entries; else None)."""
    shape = np.asarray(args[0])
    if shape.ndim != 1 or shape.dtype.kind not in "iu" or bool((shape < 0).any()):
        return None
    return math.prod(int(d) for d in shape)
