"""Quantized and half-precision versions of a shipped model import and give the path-norms of their
dequantized weights.

Oracle: a float32 twin of each model built here without the importer: DequantizeLinear nodes on
constants evaluated by onnx's reference evaluator, activation QuantizeLinear→DequantizeLinear pairs
removed, fp16 initializers widened to float32 (exactly); its path-norm is the plain float path,
checked against brute force elsewhere (tests/test_pathnorm.py, tests/test_models.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import inits
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx_pathlift as pl
from onnx_pathlift.backend.verify import verify

QS = (1.0, 2.0, 4.0)
INT8 = MODELS / "digits_cnn_torch_bn_int8.onnx"  # onnxruntime's static QDQ quantizer (it drops the Relus)
FLOAT = MODELS / "digits_cnn_torch_bn.onnx"


def _dequantized_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights: DequantizeLinear of constants evaluated; activations: Q→DQ pairs bypassed."""
    arrays = inits(model)
    rename: dict[str, str] = {}
    nodes, new_inits = [], {}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in arrays:
            single = helper.make_graph([node], "dq", [], [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
                                       [numpy_helper.from_array(arrays[n], n) for n in node.input if n])
            # opset 21: the reference evaluator's DequantizeLinear (the same int8 semantics as opset 13)
            value = ReferenceEvaluator(helper.make_model(single, opset_imports=[helper.make_opsetid("", 21)])).run(None, {})[0]
            new_inits[node.output[0]] = value.astype(np.float32)
        elif node.op_type == "DequantizeLinear" and producers[node.input[0]].op_type == "QuantizeLinear":
            rename[node.output[0]] = producers[node.input[0]].input[0]
        elif node.op_type != "QuantizeLinear":
            nodes.append(node)
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    outputs = list(model.graph.output)
    nodes += [helper.make_node("Identity", [rename[o.name]], [o.name]) for o in outputs if o.name in rename]
    graph = helper.make_graph(nodes, "twin", list(model.graph.input), outputs,
                              [numpy_helper.from_array(v, k) for k, v in new_inits.items()]
                              + [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT])
    return helper.make_model(graph, opset_imports=model.opset_import)


def _fp16(model: onnx.ModelProto, whole_graph: bool) -> onnx.ModelProto:
    """fp16 initializers, either behind Cast nodes (weights only) or with the whole graph in fp16
    between a Cast of the input and a Cast of the output (the two forms fp16 converters write)."""
    casts, inits = [], []
    for t in model.graph.initializer:
        half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name + ("" if whole_graph else "_fp16"))
        inits.append(half)
        if not whole_graph:
            casts.append(helper.make_node("Cast", [half.name], [t.name], to=TensorProto.FLOAT))
    nodes = [onnx.NodeProto() for _ in model.graph.node]
    for n, src in zip(nodes, model.graph.node):
        n.CopyFrom(src)
    x, y = model.graph.input[0], model.graph.output[0]
    if whole_graph:
        for n in nodes:
            n.input[:] = [x.name + "_fp16" if i == x.name else i for i in n.input]
            n.output[:] = [y.name + "_fp16" if o == y.name else o for o in n.output]
        casts = [helper.make_node("Cast", [x.name], [x.name + "_fp16"], to=TensorProto.FLOAT16)]
        nodes.append(helper.make_node("Cast", [y.name + "_fp16"], [y.name], to=TensorProto.FLOAT))
    graph = helper.make_graph(casts + nodes, "fp16", [x], [y], inits)
    out = helper.make_model(graph, opset_imports=model.opset_import)
    onnx.checker.check_model(out, full_check=True)
    return out


def _rounded_through_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    return out


def test_qdq_int8_model_gives_the_path_norms_of_its_dequantized_weights() -> None:
    model = onnx.load(INT8)
    dag = pl.import_model(model)
    assert dag.activation_qdq > 0 and any("quantiz" in note.lower() for note in dag.notes)
    twin = _dequantized_twin(model)
    for q in QS:
        assert pl.path_norm(dag, q).log10 == pytest.approx(pl.path_norm(twin, q).log10, abs=1e-7)


@pytest.mark.parametrize("whole_graph", [False, True], ids=["weights_fp16", "graph_fp16"])
def test_fp16_model_gives_the_path_norms_of_its_half_precision_weights(whole_graph: bool) -> None:
    source = onnx.load(FLOAT)
    model = _fp16(source, whole_graph)
    dag = pl.import_model(model)
    twin = _rounded_through_fp16(source)
    for q in QS:
        assert pl.path_norm(dag, q).log10 == pytest.approx(pl.path_norm(twin, q).log10, abs=1e-7)
    # the fp16 graph computes in half precision: the float32 re-emission agrees to fp16 accuracy
    assert verify(model, dag, rtol=1e-4 if not whole_graph else 2e-2).passed
