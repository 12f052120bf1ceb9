"""``onnx-pathlift inspect``, class-picking heads, and ``tools/coverage.py``.

inspect reports what the importer saw (op and layer counts, parameters, input shapes, opset and
producer, what was folded, decomposed, cut or refused) without running the model; for a refused
model it still prints the report, lists every refusal and exits 3. Heads that only pick the winning
class (ArgMax, ArgMin, TopK, Hardmax, a constant class table indexed by them, with Cast/Reshape
around) are cut so that the logits are analysed, also when they are the model's only outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import HAND, hand_nodes, make_model, save
from conftest import LIGHT, MODELS, ROOT, run_main
from onnx import TensorProto, helper, numpy_helper

import onnx_pathlift as pl
from onnx_pathlift.analyses.inspection import inspect_model
from onnx_pathlift.errors import UnsupportedModelError
from onnx_pathlift.ops import kind_counts

SHIPPED = sorted(MODELS.glob("*.onnx"))

BODY = hand_nodes("logits")


def build(nodes, outputs, inits=None, x_shape=(1, 4), ml: bool = False) -> onnx.ModelProto:
    """The hand network's weights and ``inits`` on input ``x``; ``outputs`` are ``(name, elem_type)``."""
    model = make_model(nodes, [("x", x_shape)], [(n, None, t) for n, t in outputs], {**HAND, **(inits or {})},
                       producer="test_inspect", extra_opsets={"ai.onnx.ml": 1} if ml else None)
    model.producer_version = "0"
    return model


def inspect_json(capsys, path, *extra) -> tuple[int, dict, str]:
    rc, out, err = run_main(capsys, "inspect", path, "--json", *extra)
    return rc, json.loads(out), err  # one JSON document: json.loads fails on anything else


PLAIN_L1 = None


def plain_l1() -> float:
    global PLAIN_L1
    if PLAIN_L1 is None:
        PLAIN_L1 = pl.path_norm(build(BODY, [("logits", TensorProto.FLOAT)]), q=1).value
    return PLAIN_L1


# --------------------------------------------------------------------------------------------
# inspect on the shipped models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_inspect_shipped_models(capsys, path):
    rc, report, err = inspect_json(capsys, path)
    assert rc == 0, err
    dag = pl.import_model(path)
    assert report["status"] == "ok" and report["refusals"] == []
    assert report["parameters"] == dag.n_params
    assert report["layer_kinds"] == {k: v for k, v in kind_counts(dag).items() if k != "input"}
    assert report["layers"] == sum(report["layer_kinds"].values()) == sum(report["layer_ops"].values())
    assert report["input_shapes"] == {k: list(v) for k, v in dag.input_shapes().items()}
    assert report["analysed_outputs"] == list(dag.outputs)
    assert sum(report["node_counts"].values()) == report["nodes"] == len(onnx.load(path).graph.node)
    assert report["opset"]["ai.onnx"] >= 7 and report["producer"]
    assert report["notes"] == dag.notes
    for batch in report["batch"].values():
        assert batch["size"] == 1
    # every live node is accounted for: imported (as layers or identity) or folded
    assert sum(i["nodes"] for i in report["imported"]) + report["folded"]["nodes"] + sum(
        len(c["nodes"]) for c in report["cut"]) <= report["nodes"]


def test_inspect_text_output(capsys):
    rc, out, err = run_main(capsys, "inspect", MODELS / "digits_cnn_torch_bn.onnx")
    assert rc == 0, err
    assert err == ""
    assert out.startswith(f"{MODELS / 'digits_cnn_torch_bn.onnx'}: ok; opset ai.onnx ")
    assert "2618 parameters" in out and "BatchNormalization ×" in out and "[kept:" in out
    assert "analysed input shapes: {'input': [1, 1, 8, 8]}; batch: input 1 (declared symbolic" in out


def test_inspect_quantized_model_reports_folding_and_activation_qdq(capsys):
    rc, report, err = inspect_json(capsys, MODELS / "digits_cnn_torch_bn_int8.onnx")
    assert rc == 0, err
    assert report["folded"]["ops"].get("DequantizeLinear", 0) > 0  # quantized weights → float parameters
    assert any("dequantized" in n for n in report["folded"]["notes"])
    hows = {i["op_type"]: i["how"] for i in report["imported"]}
    assert hows["QuantizeLinear"] == hows["DequantizeLinear"] == "activation-qdq"
    assert report["activation_qdq"] > 0
    assert report["parameters"] == pl.import_model(MODELS / "digits_cnn_torch_bn.onnx").n_params


def test_inspect_sklearn_mlp_cuts_the_label_head(capsys):
    rc, report, err = inspect_json(capsys, MODELS / "digits_mlp_sklearn.onnx")
    assert rc == 0, err
    cuts = {c["output"]: [op for op, _ in c["nodes"]] for c in report["cut"]}
    assert cuts["label"][:3] == ["Softmax", "ArgMax", "ArrayFeatureExtractor"]
    assert cuts["probabilities"] == ["Softmax"]
    assert report["dropped"] == []
    assert report["analysed_outputs"] == ["add_result2"]
    assert report["graph_inputs"] == {"input": ["?", 64]}


# --------------------------------------------------------------------------------------------
# decompositions and folding on small built models
# --------------------------------------------------------------------------------------------


def test_inspect_reports_decompositions(capsys, tmp_path):
    c = 3
    nodes = [
        helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["r6"], name="relu6"),
        helper.make_node("LeakyRelu", ["r6"], ["lk"], name="leaky", alpha=0.1),
        helper.make_node("PRelu", ["lk", "slope"], ["pr"], name="prelu"),
        helper.make_node("Identity", ["pr"], ["id"], name="ident"),
        helper.make_node("Dropout", ["id"], ["dr"], name="drop"),
        helper.make_node("Shape", ["dr"], ["shp"], name="shape"),
        helper.make_node("Constant", [], ["zero"], name="k0", value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Gather", ["shp", "zero"], ["n"], name="batch_dim"),
        helper.make_node("Concat", ["n", "minus1"], ["newshape"], name="cat_shape", axis=0),
        helper.make_node("Reshape", ["dr", "newshape"], ["flat"], name="flatten"),
    ]
    rng = np.random.default_rng(0)
    inits = {"Wc": rng.normal(size=(c, 1, 3, 3)).astype(np.float32), "g": np.ones(c, np.float32),
             "b": np.zeros(c, np.float32), "m": np.zeros(c, np.float32), "v": np.ones(c, np.float32),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "slope": np.full((c, 1, 1), 0.2, np.float32), "minus1": np.array([-1], np.int64)}
    path = save(build(nodes, [("flat", TensorProto.FLOAT)], inits, x_shape=(1, 1, 4, 4)), tmp_path / "dec.onnx")
    rc, report, err = inspect_json(capsys, path)
    assert rc == 0, err
    imported = {i["op_type"]: i for i in report["imported"]}
    for op in ("Clip", "LeakyRelu", "PRelu"):
        assert imported[op]["how"] == "decomposed", imported[op]
        assert "relu" in next(iter(imported[op]["layers"])).split("+")
    assert imported["BatchNormalization"]["how"] == "kept"
    assert imported["BatchNormalization"]["layers"] == {"affine": 1}
    assert imported["Identity"]["how"] == imported["Dropout"]["how"] == "identity"
    assert {"Shape", "Constant", "Gather", "Concat"} <= set(report["folded"]["ops"])
    assert report["folded"]["nodes"] == sum(report["folded"]["ops"].values()) == 4
    assert imported["Reshape"]["layers"] == {"reshape": 1}
    assert {d.op_type for d in inspect_model(path).decomposed} == {"Clip", "LeakyRelu", "PRelu"}


def test_inspect_output_and_input_shape_options(capsys, tmp_path):
    path = save(build(BODY, [("logits", TensorProto.FLOAT)], x_shape=("N", 4)), tmp_path / "sym.onnx")
    rc, report, _ = inspect_json(capsys, path, "--output", "h", "--input-shape", "3x4")
    assert rc == 0
    assert report["analysed_outputs"] == ["h"]
    assert report["input_shapes"] == {"x": [3, 4]} and report["batch"]["x"] == {"size": 3, "declared": "symbolic 'N'"}
    assert report["layer_ops"] == {"dense": 1, "affine": 1}
    assert report["unreached"] == {"Relu": 1, "Gemm": 1}  # past the chosen output
    rc, report, _ = inspect_json(capsys, path, "--output", "nope")
    assert rc == 2 and report["exit_code"] == 2


def test_inspect_invalid_model_exits_4(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    rc, out, err = run_main(capsys, "inspect", bad)
    assert rc == 4 and out == "" and err.startswith("onnx-pathlift: error: ")
    rc, report, _ = inspect_json(capsys, bad)
    assert rc == 4 and report["error"] == "InvalidModelError"


# --------------------------------------------------------------------------------------------
# a refused model: the report still comes, every refusal is listed, exit 3
# --------------------------------------------------------------------------------------------


def refused_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Tanh", ["h"], ["t"], name="tanh1"),
        helper.make_node("Gemm", ["t", "W2", "b2"], ["y"], name="fc2", transB=1),
        helper.make_node("Erf", ["y"], ["e"], name="erf1"),
        helper.make_node("Abs", ["e"], ["a"], name="abs1"),
        helper.make_node("MyOp", ["a"], ["z"], name="custom1", domain="com.example"),
        helper.make_node("Relu", ["z"], ["out"], name="relu_last"),
    ]
    model = build(nodes, [("out", TensorProto.FLOAT)])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_inspect_refused_model_lists_every_refusal(capsys, tmp_path):
    path = save(refused_model(), tmp_path / "refused.onnx")
    with pytest.raises(UnsupportedModelError) as norm_err:
        pl.import_model(path)
    rc, report, err = inspect_json(capsys, path)
    assert rc == 3
    assert report["status"] == "refused" and report["parameters"] is None
    got = [(r["node"], r["op_type"]) for r in report["refusals"]]
    assert got == [("tanh1", "Tanh"), ("erf1", "Erf"), ("abs1", "Abs"), ("custom1", "MyOp")]
    assert got == [(r.node, r.op_type) for r in norm_err.value.refusals]  # the same list norm gives
    assert all(r["reason"] for r in report["refusals"])
    assert "com.example" in report["refusals"][3]["reason"]
    assert report["error"]["exit_code"] == 3 and len(report["error"]["refusals"]) == 4
    assert report["blocked"] == {"Gemm": 1, "Relu": 1}  # imported nothing behind a refused node
    assert report["node_counts"]["com.example:MyOp"] == 1
    assert report["imported"] == [{"op_type": "Gemm", "nodes": 1, "layers": {"dense+affine": 1}, "how": "layer",
                                   "note": ""}]
    rc, out, err = run_main(capsys, "inspect", path)
    assert rc == 3
    assert "refused" in out.splitlines()[0] and "4 refused node(s):" in out
    for name, op in got:
        assert f"- {name} ({op}): " in out
    assert err.strip().splitlines() == [
        "onnx-pathlift: error: 4 node(s) cannot be represented as a ReLU network (listed above)",
        f"  try: onnx-pathlift norm {path} --output h"]  # the tensor before the refused nodes


def test_inspect_refused_while_preparing(capsys, tmp_path):
    """A refusal raised before import (here: a sparse initializer) still gets the file's facts."""
    model = build(BODY, [("logits", TensorProto.FLOAT)])
    values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, numpy_helper.from_array(
        np.array([0], np.int64), "sp_idx"), [2]))
    rc, report, _ = inspect_json(capsys, save(model, tmp_path / "sparse.onnx"))
    assert rc == 3 and report["status"] == "refused"
    assert report["refusals"][0]["op_type"] == "sparse_initializer"
    assert report["node_counts"] == {"Gemm": 2, "Relu": 1}


# --------------------------------------------------------------------------------------------
# class-picking heads
# --------------------------------------------------------------------------------------------


def _heads():
    i64, f32, s = TensorProto.INT64, TensorProto.FLOAT, TensorProto.STRING
    k = {"k": np.array([1], np.int64)}
    return {
        "argmax_only": ([helper.make_node("ArgMax", ["logits"], ["cls"], name="am", axis=1)], [("cls", i64)], {}, False),
        "argmin_only": ([helper.make_node("ArgMin", ["logits"], ["cls"], name="amin", axis=1)], [("cls", i64)], {},
                        False),
        "topk_both": ([helper.make_node("TopK", ["logits", "k"], ["vals", "idx"], name="topk", axis=1)],
                      [("vals", f32), ("idx", i64)], k, False),
        "topk_indices": ([helper.make_node("TopK", ["logits", "k"], ["vals", "idx"], name="topk", axis=1)],
                         [("idx", i64)], k, False),
        "hardmax": ([helper.make_node("Hardmax", ["logits"], ["onehot"], name="hm")], [("onehot", f32)], {}, False),
        "softmax_argmax_gather_cast": (
            [helper.make_node("Softmax", ["logits"], ["p"], name="sm", axis=1),
             helper.make_node("ArgMax", ["p"], ["am"], name="am", axis=1, keepdims=0),
             helper.make_node("Gather", ["classes", "am"], ["lab"], name="lookup"),
             helper.make_node("Cast", ["lab"], ["label"], name="to_float", to=TensorProto.FLOAT)],
            [("label", f32)], {"classes": np.array([3, 7], np.int64)}, False),
        "skl2onnx_like": (
            [helper.make_node("Softmax", ["logits"], ["p"], name="sm", axis=1),
             helper.make_node("ArgMax", ["p"], ["am"], name="am", axis=1),
             helper.make_node("ArrayFeatureExtractor", ["classes", "am"], ["lab"], name="afe", domain="ai.onnx.ml"),
             helper.make_node("Reshape", ["lab", "shape"], ["label"], name="reshape")],
            [("label", s)], {"classes": np.array(["cat", "dog"], dtype=object), "shape": np.array([-1], np.int64)},
            True),
    }


HEADS = _heads()


@pytest.mark.parametrize("case", sorted(HEADS))
def test_class_picking_heads_are_cut(capsys, tmp_path, case):
    head, outputs, inits, ml = HEADS[case]
    path = save(build(BODY + head, outputs, inits, ml=ml), tmp_path / f"{case}.onnx")
    rc, out, err = run_main(capsys, "norm", path, "-q", 1, "--verify", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["outputs"] == ["logits"]  # the logits are analysed, whatever the head
    assert res["norms"][0]["value"] == pytest.approx(plain_l1(), rel=1e-12)
    assert res["verify"]["passed"]
    head_ops = [n.op_type for n in head if n.op_type not in ("Cast", "Reshape")]
    cut_notes = [n for n in res["notes"] if n.startswith("cut ")]
    assert cut_notes and all("analysing its input 'logits'" in n for n in cut_notes)
    for op in head_ops:  # the note says what was cut
        assert any(op in n for n in cut_notes), (op, cut_notes)
    rc, report, _ = inspect_json(capsys, path)
    assert rc == 0
    assert {c["output"] for c in report["cut"]} == {name for name, _ in outputs}
    assert report["dropped"] == [] and report["unreached"] == {}


def test_carriers_without_a_head_are_not_cut(capsys, tmp_path):
    """A Reshape or Cast at the end of the network is part of it: analysed, not cut."""
    tail = [helper.make_node("Reshape", ["logits", "shape"], ["flat"], name="reshape")]
    path = save(build(BODY + tail, [("flat", TensorProto.FLOAT)], {"shape": np.array([-1], np.int64)}),
                tmp_path / "reshape.onnx")
    res = inspect_model(path)
    assert res.analysed_outputs == ["flat"] and res.cut == []


def test_lookup_from_activations_is_not_a_head(tmp_path):
    """ArrayFeatureExtractor that picks columns of an activation (not a class table) is not cut."""
    tail = [helper.make_node("ArrayFeatureExtractor", ["logits", "cols"], ["picked"], name="pick",
                             domain="ai.onnx.ml")]
    path = save(build(BODY + tail, [("picked", TensorProto.FLOAT)], {"cols": np.array([1], np.int64)}, ml=True),
                tmp_path / "afe.onnx")
    res = inspect_model(path)
    assert res.status == "refused" and [r.op_type for r in res.refusals] == ["ArrayFeatureExtractor"]


def test_lookup_without_a_picker_is_not_cut(tmp_path):
    """A constant table indexed by a tensor that no ArgMax/TopK/... picked is part of the network."""
    tail = [helper.make_node("Cast", ["logits"], ["idx"], name="to_int", to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["looked_up"], name="lookup")]
    path = save(build(BODY + tail, [("looked_up", TensorProto.FLOAT)], {"table": np.arange(5, dtype=np.float32)}),
                tmp_path / "lookup.onnx")
    res = inspect_model(path)
    assert res.cut == [] and res.status == "refused"
    assert "to_int" in {r.node for r in res.refusals}


def test_argmax_of_the_input_alone_is_refused(tmp_path):
    path = save(build([helper.make_node("ArgMax", ["x"], ["cls"], name="am", axis=1)], [("cls", TensorProto.INT64)]),
                tmp_path / "argmax_input.onnx")
    res = inspect_model(path)
    assert res.status == "refused" and res.refusals[0].reason == "no float output tensor left to analyse"
    assert res.dropped == [{"output": "cls", "tensor": "x", "reason": "it is a graph input"}]


# --------------------------------------------------------------------------------------------
# zoo and light models
# --------------------------------------------------------------------------------------------


def test_zoo_sklearn_classifiers(capsys, zoo):
    values = []
    for name in ("skl_mlp_digits_zipmap.onnx", "skl_mlp_digits_nozipmap.onnx"):
        rc, report, err = inspect_json(capsys, zoo / "generated" / name)
        assert rc == 0, err
        assert report["analysed_outputs"] == ["add_result2"] and report["dropped"] == []
        ops = {op for c in report["cut"] for op, _ in c["nodes"]}
        assert {"Softmax", "ArgMax", "ArrayFeatureExtractor"} <= ops
        assert ("ZipMap" in ops) == (name == "skl_mlp_digits_zipmap.onnx")
        rc, out, err = run_main(capsys, "norm", zoo / "generated" / name, "-q", 1, "--verify", "--json")
        assert rc == 0, err
        values.append(json.loads(out)["norms"][0]["value"])
    assert values[0] == pytest.approx(values[1], rel=1e-12)  # the same MLP, with and without ZipMap


def test_zoo_refused_and_invalid(capsys, zoo):
    rc, report, _ = inspect_json(capsys, zoo / "hls4ml_example_models" / "conv2d_small_mp_keras.onnx")
    assert rc == 3 and {(r["node"], r["op_type"]) for r in report["refusals"]} == {
        ("Selu", "Selu"), ("Selu1", "Selu"), ("Selu2", "Selu")}
    assert report["cut"][0]["nodes"] == [["Softmax", "Softmax"]]
    rc, report, _ = inspect_json(capsys, zoo / "hls4ml_example_models" / "three_layer_bn_keras.onnx")
    assert rc == 4 and report["error"] == "InvalidModelError"


def test_light_alexnet_lists_every_lrn(capsys):
    rc, report, _ = inspect_json(capsys, LIGHT / "light_bvlc_alexnet.onnx")
    assert rc == 3
    assert {r["op_type"] for r in report["refusals"]} == {"LRN"} and len(report["refusals"]) == 2
    assert report["folded"]["ops"].get("ConstantOfShape", 0) > 0  # the light models' weights


# --------------------------------------------------------------------------------------------
# tools/coverage.py on a few files
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_coverage_tool_on_a_subset(tmp_path):
    refused = save(refused_model(), tmp_path / "refused.onnx")
    invalid = tmp_path / "invalid.onnx"
    invalid.write_bytes(b"not an onnx file")
    out = tmp_path / "cov.md"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "coverage.py"), str(MODELS / "digits_cnn_torch.onnx"),
                           str(MODELS / "digits_mlp_sklearn.onnx"), str(refused), str(invalid), "-o", str(out),
                           "--jobs", "2", "--timeout", "120"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    summary = dict(line.strip("| ").split(" | ") for line in text.split("## Summary")[1].split("##")[0].splitlines()
                   if line.startswith("| ") and not line.startswith("| status") and "**" not in line)
    assert summary == {"ok": "2", "refused": "1", "invalid": "1", "error": "0"}
    rows = {line.split(" | ")[1].strip("`"): line.split(" | ") for line in text.splitlines()
            if line.startswith("| other |")}
    cnn = rows["models/digits_cnn_torch.onnx"]
    assert cnn[2] == "ok" and cnn[4] == "2586"
    assert float(cnn[5]) == pytest.approx(pl.path_norm(MODELS / "digits_cnn_torch.onnx", q=1).log10, abs=1e-6)
    assert float(cnn[6]) <= 1e-4
    assert rows["models/digits_mlp_sklearn.onnx"][8] == "cut Softmax, ArgMax, ArrayFeatureExtractor"
    ref = next(v for k, v in rows.items() if k.endswith("refused.onnx"))
    assert ref[2] == "refused"
    for op, node in (("Tanh", "tanh1"), ("Erf", "erf1"), ("Abs", "abs1"), ("MyOp", "custom1")):
        assert f"{op} ×1 (`{node}`)" in ref[-1]
    assert next(v for k, v in rows.items() if k.endswith("invalid.onnx"))[2] == "invalid"
    assert "## Refusal reasons" in text


def test_coverage_tool_timeout(tmp_path):
    out = tmp_path / "cov.md"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "coverage.py"), str(MODELS / "digits_cnn_torch.onnx"),
                           "-o", str(out), "--timeout", "0.01"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| error | 1 |" in out.read_text() and "timed out after 0.01 s" in out.read_text()
