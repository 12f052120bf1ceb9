"""Models written by onnxruntime's quantizer (issue 14): the head cut walks back through the
QuantizeLinear→DequantizeLinear pair after the final Softmax (and Cast / Identity), and ``--verify``
and ``--output`` work on any float tensor of a QDQ model. Oracle: the brute-force path-norm of the
float twin, rebuilt here from the quantized file (weights dequantized in numpy, activation Q/DQ pairs
bypassed, the head dropped)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import inits, make_model
from conftest import run_main
from onnx import TensorProto, helper, numpy_helper
from oracle import brute_force_path_norm

import onnx_pathlift as pl

quantization = pytest.importorskip("onnxruntime.quantization")


def _float_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """x[1,4] → Gemm → Relu → Gemm → Relu → Gemm = logits[1,3] → Softmax → probs."""
    shapes = {"W1": (4, 6), "B1": (6,), "W2": (6, 5), "B2": (5,), "W3": (5, 3), "B3": (3,)}
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), k) for k, s in shapes.items()]
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "W2", "B2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "W3", "B3"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    return make_model(nodes, [("x", [1, 4])], [("probs", [1, 3])], inits, name="mlp")


class _Calibration(quantization.CalibrationDataReader):
    def __init__(self, rng: np.random.Generator):
        self._feeds = iter([{"x": rng.uniform(-1, 1, (1, 4)).astype(np.float32)} for _ in range(16)])

    def get_next(self):
        return next(self._feeds, None)


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def qdq(request, tmp_path_factory) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("qdq")
    onnx.save(_float_mlp(rng), folder / "f.onnx")
    quantization.quantize_static(str(folder / "f.onnx"), str(folder / "q.onnx"), _Calibration(rng),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=request.param)
    model = onnx.load(folder / "q.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops[-3:] == ["Softmax", "QuantizeLinear", "DequantizeLinear"], ops  # the idiom under test
    return model


def _dequantized(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    """``(q − zp)·scale`` along the node's axis (default 1), in float64."""
    q = inits[node.input[0]].astype(np.float64)
    scale = inits[node.input[1]].astype(np.float64)
    zp = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
    if scale.ndim == 1 and q.ndim > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def float_twin(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The float network a QDQ model computes up to ``output``, without activation quantization."""
    arrays = inits(model)
    weights, rename, kept = {}, {}, []
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in arrays:
            weights[node.output[0]] = _dequantized(node, arrays)
        elif node.op_type == "DequantizeLinear":
            rename[node.output[0]] = producer[node.input[0]].input[0]
        elif node.op_type != "QuantizeLinear":
            kept.append(node)
    nodes, need = [], {rename.get(output, output)}
    for node in reversed(kept):
        if node.output[0] in need:
            node = helper.make_node(node.op_type, [rename.get(i, i) for i in node.input], list(node.output),
                                    **{a.name: helper.get_attribute_value(a) for a in node.attribute})
            nodes.insert(0, node)
            need.update(node.input)
    x_vi = next(i for i in model.graph.input if i.name == "x")
    return make_model(nodes, [x_vi], [(rename.get(output, output), None)],
                      {k: v.astype(np.float32) for k, v in weights.items() if k in need}, name="twin")


def _oracle(model: onnx.ModelProto, output: str, q: float) -> float:
    return brute_force_path_norm(float_twin(model, output), q) ** (1 / q)


def test_head_cut_walks_through_qdq_after_softmax(qdq) -> None:
    dag = pl.import_model(qdq)
    (analysed,) = dag.outputs
    assert analysed == "logits_DequantizeLinear_Output"
    assert any("cut Softmax" in n and "QuantizeLinear" in n and "DequantizeLinear" in n for n in dag.notes), dag.notes
    for q in (1.0, 2.0, 4.0):
        assert pl.path_norm(dag, q=q).value == pytest.approx(_oracle(qdq, "logits_DequantizeLinear_Output", q), rel=1e-6)


def test_head_cut_walks_through_cast_and_identity_after_qdq(qdq) -> None:
    """… → Softmax → Q → DQ → Cast(float) → Identity → output: the whole tail is cut."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    last = m.graph.output[0].name
    m.graph.node.extend([helper.make_node("Cast", [last], ["cast"], to=TensorProto.FLOAT),
                         helper.make_node("Identity", ["cast"], ["final"])])
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("final", TensorProto.FLOAT, [1, 3]))
    dag = pl.import_model(m)
    assert list(dag.outputs) == ["logits_DequantizeLinear_Output"]
    assert pl.path_norm(dag, q=2).value == pytest.approx(_oracle(qdq, "logits_DequantizeLinear_Output", 2), rel=1e-6)


def test_verify_and_output_on_every_activation_dequantize_output(qdq, tmp_path, capsys) -> None:
    """``--output`` naming each DequantizeLinear of an activation (the input's, the hidden layers', the
    logits'), with ``--verify``: the re-emission check reads that tensor from the source model."""
    path = tmp_path / "q.onnx"
    onnx.save(qdq, path)
    inits = {t.name for t in qdq.graph.initializer}
    names = [n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    names = [n for n in names if n not in ("x_DequantizeLinear_Output", qdq.graph.output[0].name)]
    assert len(names) >= 2, names
    for name in names:
        rc, out, err = run_main(capsys, "norm", path, "--verify", "--output", name, "-q", "1", "-q", "2", "--json")
        assert rc == 0, (name, err)
        report = json.loads(out)
        assert report["verify"]["passed"] is True
        for entry in report["norms"]:
            assert entry["value"] == pytest.approx(_oracle(qdq, name, entry["q"]), rel=1e-6), name


def test_output_naming_an_integer_code_is_a_usage_error(qdq, tmp_path, capsys) -> None:
    q_out = next(n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    path = tmp_path / "q.onnx"
    onnx.save(qdq, path)
    rc, _, err = run_main(capsys, "norm", path, "--output", q_out)
    assert rc == 2 and "not float" in err and "DequantizeLinear" in err
    weight = next(n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("W"))
    rc, _, err = run_main(capsys, "norm", path, "--output", weight)
    assert rc == 2 and "constants" in err and weight in err


def test_weights_only_qdq_is_verified_as_written(tmp_path, capsys) -> None:
    """DequantizeLinear weights, float activations (a weights-only QDQ model): onnxruntime's extended
    optimisations would run DQ → MatMul as an integer kernel that quantizes x on the fly (1e-2 off);
    the re-emission check runs the source model as written, and the path-norm is the float twin's."""
    rng = np.random.default_rng(0)
    inits = {"Wq": rng.integers(-127, 128, (6, 8)).astype(np.int8), "s": np.array(0.01, np.float32), "z": np.array(0, np.int8),
             "W2q": rng.integers(-127, 128, (8, 3)).astype(np.int8), "s2": rng.uniform(0.005, 0.02, 3).astype(np.float32),
             "z2": np.zeros(3, np.int8)}
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"]), helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("DequantizeLinear", ["W2q", "s2", "z2"], ["W2"], axis=1),
             helper.make_node("MatMul", ["r", "W2"], ["logits"])]
    model = make_model(nodes, [("x", [1, 6])], [("logits", [1, 3])], inits, name="wq")
    path = tmp_path / "wq.onnx"
    onnx.save(model, path)
    rc, out, err = run_main(capsys, "norm", path, "--verify", "-q", "1", "-q", "4", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["verify"]["passed"] is True and max(report["verify"]["max_rel_error"].values()) < 1e-6
    for entry in report["norms"]:
        assert entry["value"] == pytest.approx(_oracle(model, "logits", entry["q"]), rel=1e-6)
