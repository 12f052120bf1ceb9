"""The exact fallback's driver: ``log2 ‖Φ‖_q^q`` (``log2 ‖Φ‖_∞`` at q = ∞) by a float64 log-domain pass over
the DAG, for the norms float32 could not certify. The numerics and their error analysis are
:mod:`onnx_pathlift.ops.exact_api`; each layer op declares its own form (:meth:`LayerOp.exact
<onnx_pathlift.ops.layer_op.LayerOp.exact>`) and its cost (:meth:`~onnx_pathlift.ops.layer_op.LayerOp.exact_work`).
"""

from __future__ import annotations

import numpy as np

from ..ir.dag import Dag
from ..ops import LAYER_OPS
from ..ops.exact_api import WORK_LIMIT, FallbackRefused, LogPass, Logs
from ..ops.layer_op import LayerOp

__all__ = ["WORK_LIMIT", "FallbackRefused", "exact_log2", "exact_logs"]


def exact_log2(dag: Dag, q: float, feeds_log2: dict[str, np.ndarray] | None = None,
               outputs: list[str] | None = None, limit: int | None = None) -> tuple[float, float]:
    """``(L, ε)``: ``log2`` of ``‖Φ‖_q^q`` summed over the analysed ``outputs`` (default all; ONNX names),
    ``log2 ‖Φ‖_∞`` at q = ∞, with ``|L − exact| ≤ ε`` (:mod:`onnx_pathlift.ops.exact_api`). ``feeds_log2``:
    log2 of the lifted inputs (default all ones, or 0 for an input the DAG marks as such). ``limit``: the
    most terms (default :data:`WORK_LIMIT`). Raises :class:`FallbackRefused` with the reason when it does
    not apply."""
    run, logs = exact_logs(dag, q, feeds_log2, outputs, limit)
    flat = np.concatenate([values.reshape(-1) for values, _ in logs.values()])
    total, local = run.reduce(flat, 0)
    return float(total), max(err for _, err in logs.values()) + local


def exact_logs(dag: Dag, q: float, feeds_log2: dict[str, np.ndarray] | None = None,
               outputs: list[str] | None = None, limit: int | None = None) -> tuple[LogPass, dict[str, Logs]]:
    """The float64 log-domain pass of :func:`exact_log2`, neuron by neuron: per analysed output (ONNX name),
    ``log2 ‖Φ_k‖_q^q`` of each of its neurons ``k`` (``log2 ‖Φ_k‖_∞`` at q = ∞) and the bound on their error;
    with the pass (its :meth:`~onnx_pathlift.ops.exact_api.LogPass.reduce` sums them)."""
    run, values = LogPass(q, WORK_LIMIT if limit is None else limit), {}
    unknown = [x for x in dag.layers() if not _has_exact(x.op)]
    if unknown:
        raise FallbackRefused(f"the exact float64 fallback does not evaluate {unknown[0].op!r} layers (layer {unknown[0].name!r})")
    shapes = {layer.name: [dag.layer(i).shape for i in layer.inputs] for layer in dag.layers()}
    run.spend(sum(LAYER_OPS[layer.op].exact_work(layer, shapes[layer.name], run.inf) for layer in dag.layers()))
    names = outputs if outputs is not None else list(dag.outputs)
    outs = [dag.outputs[o] for o in names]
    readers = {name: dag.graph.out_degree(name) + (name in outs) for name in dag.graph.nodes}
    for layer in dag.layers():
        xs: list[Logs] = [values[i] for i in layer.inputs]
        values[layer.name] = LAYER_OPS[layer.op].exact(run, layer, xs, shapes[layer.name], feeds_log2 or {})
        for i in set(layer.inputs):  # a tensor no later layer reads is dropped
            readers[i] -= dag.graph.number_of_edges(i, layer.name)
            if readers[i] <= 0:
                del values[i]
    return run, {o: values[dag.outputs[o]] for o in names}


def _has_exact(op: str) -> bool:
    """Whether the layer op declares its exact form."""
    return op in LAYER_OPS and type(LAYER_OPS[op]).exact is not LayerOp.exact
