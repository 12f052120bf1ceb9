"""Batch-stacked networks: analyse one sample and multiply by the batch size.

A model exported with a fixed batch ``N > 1`` (say an input of shape ``(789444, 16)``) is, as a
DAG of neurons, ``N`` copies of the one-sample network when no layer combines neurons of different
samples. Fed with all-ones inputs, every copy of the lifted network carries the same values, so

    ‖Φ‖_q^q = N · ‖Φ_1‖_q^q        (Φ_1: the path-lifting of one sample's network)

and one sample is enough: ``N`` times less work, for the same number.

When is the DAG ``N`` copies? Every layer keeps the batch axis first with size ``N`` (a layer of
another leading size either reduced, split or concatenated samples), and the same layers with batch
1 are a consistent network: ONNX shape inference (strict) of the one-sample DAG, re-emitted with its
signed weights, gives every layer the shape ``(1, *rest)``. A layer that mixes samples while keeping
size ``N`` leading (a Transpose moving the batch axis, a MatMul contracting it, a parameter with a
batch axis) changes shape or fails to infer with batch 1, and then the whole batch is analysed.
Layers that permute, drop or repeat samples along the batch axis (a batch-axis Gather or Slice that
keeps ``N``) only move identical copies and leave the sum unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import onnx

from ..graph.builder import GraphBuilder
from ..ir.dag import Dag
from .emit import emit_layers, emit_opset


def one_sample(dag: Dag) -> tuple[Dag, int]:
    """``(Φ_1's DAG, N)`` when ``dag`` provably stacks ``N > 1`` independent samples, else ``(dag, 1)``."""
    layers = list(dag.layers())
    sizes = {layer.shape[0] if layer.shape else None for layer in layers}
    if len(sizes) != 1 or None in sizes or sizes == {1}:
        return dag, 1
    (n,) = sizes
    twin = Dag(opset=dag.opset, inputs=list(dag.inputs), outputs=dict(dag.outputs), notes=list(dag.notes),
               activation_qdq=dag.activation_qdq)
    for layer in layers:
        twin.add(replace(layer, shape=(1, *layer.shape[1:])))
    return (twin, n) if _consistent(twin) else (dag, 1)


def _consistent(twin: Dag) -> bool:
    """Whether the re-emitted one-sample DAG infers, strictly, to the shape of every layer."""
    b = GraphBuilder(emit_opset(twin), taken=set(twin.inputs))
    try:
        value = emit_layers(twin, b)
        shapes = {value[layer.name]: layer.shape for layer in twin.layers()}  # tensor -> expected shape
        outputs = [(t, shape) for t, shape in shapes.items() if t not in twin.inputs]
        model = b.model([(n, shapes[n]) for n in twin.inputs], outputs, "one_sample")
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception:  # noqa: BLE001 - any failure means "not provably per-sample": analyse the whole batch
        return False
    found = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        found[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return all(found.get(t) == shape for t, shape in outputs)
