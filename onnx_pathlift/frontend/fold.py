"""Constant folding: every node whose inputs are all constants becomes a constant.

:func:`fold` makes one topological pass; an op with a declared fold rule (``ops/plumbing.py``: ``Constant``,
``Shape`` and ``Size`` of a statically shaped tensor read directly, ``ConstantOfShape`` in numpy;
``ops/quantize.py``: ``DequantizeLinear``; ``ops/shape.py``: the layout ops ``Reshape``, ``Flatten``,
``Squeeze``, ``Unsqueeze``, ``Identity``, ``Transpose`` and ``Cast``) is folded by it, every other
deterministic default-domain op, and any node a rule declines (returns None for), by ONNX's reference
evaluator on that node alone. Each fold's output
size is checked (by ONNX shape inference) against :class:`~onnx_pathlift.fileio.read.Limits` before it
runs, and the folded constants' total size after.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ..errors import InvalidModelError, PathliftError
from ..fileio.read import Limits
from ..ops.registry import FOLD_SIZES, FOLDS, NEVER_FOLDED

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
    """Refuse a fold whose outputs exceed the limit (before it runs), sized by the op's declaration
    (:data:`~onnx_pathlift.ops.registry.FOLD_SIZES`) where it knows, else by ONNX shape inference."""
    sizer = FOLD_SIZES.get(node.op_type)
    known = sizer(node, args) if sizer is not None else None
    if known is not None:
        sizes = [known]
    else:
        inferred = onnx.shape_inference.infer_shapes(_node_model(node, args, domains, INFER_VALUES_UP_TO))
        sizes = [math.prod(d.dim_value for d in dims) for dims in (vi.type.tensor_type.shape.dim for vi in inferred.graph.output)
                 if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims)]
    for n in sizes:
        if n > limits.max_tensor_elements:
            raise InvalidModelError(f"node {node.name!r} ({node.op_type}) would allocate {n} elements "
                                    f"(limit {limits.max_tensor_elements})")


def _eval_node(node: NodeProto, args: list[np.ndarray | None], domains) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(r) for r in ReferenceEvaluator(_node_model(node, args, domains, math.inf)).run(None, {})]


def _fold_node(node: NodeProto, opset: int, domains, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
               limits: Limits, evaluated: Counter | None = None) -> list[np.ndarray] | None:
    """The node's output values if they are constant (computed here), else None: the op's declared fold
    rule (:data:`~onnx_pathlift.ops.registry.FOLDS`) or, on constant inputs where it has none or it
    declines, ONNX's reference evaluator (whose op types are counted in ``evaluated``)."""
    rule, early = FOLDS.get(node.op_type, (None, False))
    if rule is not None and early:
        outs = rule(node, [consts.get(n) if n else None for n in node.input], shapes, opset)
        if outs is not None:
            return outs
    known = all((not name) or name in consts for name in node.input)
    if not (known and any(node.input) and node.domain in ("", "ai.onnx") and node.op_type not in NEVER_FOLDED) or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    args = [consts[n] if n else None for n in node.input]
    _check_output_sizes(node, args, domains, limits)
    outs = rule(node, args, shapes, opset) if rule is not None and not early else None
    if outs is None:
        outs = _eval_node(node, args, domains)
        if evaluated is not None:
            evaluated[node.op_type] += 1
    return outs


def reads_shapes(nodes: list[NodeProto]) -> bool:
    """Whether a fold pass after shape inference may fold any of ``nodes``, those the pass before left: only
    an early rule (``Shape``, ``Size``) reads the shapes inference adds; any other node folds on constant
    inputs alone, and a pass in topological order folds every node whose inputs it makes constant."""
    return any(FOLDS.get(node.op_type, (None, False))[1] for node in nodes)


def fold(domains, opset: int, nodes: list[NodeProto], consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
         limits: Limits, counter: Counter | None = None, evaluated: Counter | None = None) -> tuple[list[NodeProto], int]:
    """One topological pass: every node whose inputs are all known constants becomes a constant
    (their op types are counted in ``counter``, those ONNX's reference evaluator computed in ``evaluated``;
    ``opset``: the default domain's version among the opset imports ``domains``, as the fold rules read it)."""
    kept: list[NodeProto] = []
    folded = 0
    total = sum(v.nbytes for v in consts.values())
    with np.errstate(all="ignore"):  # NaN/Inf results are refused with their position where they are used
        for node in nodes:
            try:
                outs = _fold_node(node, opset, domains, consts, shapes, limits, evaluated)
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


