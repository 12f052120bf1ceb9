"""tools/torch_pruning_study.py and its ONNX→torch rebuild (tools/onnx_torch.py), checked against onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import make_model
from checks import outputs
from conftest import MODELS, ROOT, load_tool
from onnx import helper

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[tools]'")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed: pip install -e '.[tools]'")
onnx_torch = load_tool("onnx_torch")


def _rebuilt_outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = onnx_torch.OnnxModule(model)(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def test_rebuild_reproduces_onnxruntime_on_the_shipped_cnn():
    """The BN-kept digits CNN on the whole test split: torch rebuild vs onnxruntime within 1e-4."""
    model = onnx.load(MODELS / "digits_cnn_torch_bn.onnx")
    x = onnx_torch.input_batch(model, np.load(MODELS / "digits_test.npz")["x"])
    assert x.shape == (360, 1, 8, 8)
    error = onnx_torch.max_abs_error(onnx_torch.OnnxModule(model), model, x)
    assert error <= 1e-4
    (ort_logits,) = outputs(model, {"input": x})
    assert np.abs(ort_logits).max() > 1.0  # not a vacuous comparison of near-zero outputs


def test_rebuild_trains_weights_only_and_round_trips(tmp_path):
    """Conv/Gemm/BN weights are parameters with gradients, BN statistics are buffers; a changed rebuild
    exported again runs in onnxruntime like in torch, with a dynamic batch."""
    model = onnx.load(MODELS / "digits_cnn_torch_bn.onnx")
    module = onnx_torch.OnnxModule(model)
    trained = {name for name, key in module.keys.items() if key in module.weights}
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert {n.input[1] for n in bn} | {n.input[2] for n in bn} <= trained
    assert not ({n.input[3] for n in bn} | {n.input[4] for n in bn}) & trained
    assert {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")} <= trained
    x = torch.from_numpy(onnx_torch.input_batch(model, np.load(MODELS / "digits_test.npz")["x"]))
    module(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.weights.values())
    with torch.no_grad():
        for p in module.weights.values():
            p.mul_(1.1)
    path = tmp_path / "again.onnx"
    torch.onnx.export(module.eval(), (x[:1],), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    with torch.no_grad():
        ours = module(x).numpy()
    again = onnx_torch.onnxruntime_outputs(onnx.load(path), x.numpy())
    assert np.abs(ours - again).max() <= 1e-5 * np.abs(ours).max()  # float32 rounding of logits in the hundreds
    assert np.abs(ours - _rebuilt_outputs(model, x.numpy())[0]).max() > 1e-2  # the weights did change


def test_inserted_batchnorms_start_as_the_identity():
    """``bn_after_conv``: one trainable BatchNorm per conv; after ``calibrate`` the rebuild still reproduces
    onnxruntime in eval mode, and in training mode on the calibration batch (its statistics are the running ones)."""
    model = onnx.load(MODELS / "digits_cnn_torch.onnx")  # BN folded by the exporter
    x = onnx_torch.input_batch(model, np.load(MODELS / "digits_test.npz")["x"])
    module = onnx_torch.OnnxModule(model, bn_after_conv=True)
    assert len(module.norms) == sum(n.op_type == "Conv" for n in model.graph.node) > 0
    module.calibrate(torch.from_numpy(x))
    assert onnx_torch.max_abs_error(module, model, x) <= 1e-4
    with torch.no_grad():
        trained_mode = module.train()(torch.from_numpy(x)).numpy()
    (expected,) = outputs(model, {"input": x})
    assert np.abs(trained_mode - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert all(p.requires_grad for bn in module.norms.values() for p in bn.parameters())


def _every_op_model() -> onnx.ModelProto:
    """Every supported op, with asymmetric conv pads, a padded ceil-mode max-pool, an average pool without
    the pads in its count, a depthwise conv, a Clip with only a lower bound, Gemm with alpha/beta and no
    transposes, Reshape with 0 and -1, Flatten on axis 2, and two outputs."""
    rng = np.random.default_rng(0)
    h = helper.make_node
    nodes = [
        h("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 0, 2, 1], strides=[2, 1]),
        h("Relu", ["c1"], ["r"]),
        h("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        h("AveragePool", ["c1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
        h("BatchNormalization", ["a", "s", "bb", "mean", "var"], ["b"], epsilon=1e-3),
        h("Clip", ["b", "lo", ""], ["cl"]),
        h("Conv", ["cl", "Wd"], ["dw"], group=4, pads=[1, 1, 1, 1]),
        h("Add", ["dw", "r"], ["sum"]),
        h("Mul", ["sum", "k"], ["mu"]),
        h("Concat", ["mu", "r"], ["cat"], axis=1),
        h("GlobalAveragePool", ["cat"], ["g"]),
        h("Flatten", ["g"], ["f"]),
        h("Gemm", ["f", "Wg", "C"], ["gm"], alpha=0.5, beta=2.0),
        h("MatMul", ["gm", "Wm"], ["mm"]),
        h("Reshape", ["mm", "shape"], ["rs"]),
        h("Flatten", ["rs"], ["fl"], axis=2),
        h("Identity", ["fl"], ["y"]),
        h("Flatten", ["m"], ["z"]),
    ]
    inits = {"W1": rng.normal(size=(4, 3, 3, 3)), "B1": rng.normal(size=4), "s": rng.uniform(0.5, 2, 4),
             "bb": rng.normal(size=4), "mean": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4),
             "lo": np.array(0.1), "Wd": rng.normal(size=(4, 1, 3, 3)), "k": rng.normal(size=(1, 4, 1, 1)),
             "Wg": rng.normal(size=(8, 5)), "C": rng.normal(size=5), "Wm": rng.normal(size=(5, 3)),
             "shape": np.array([0, -1, 1], dtype=np.int64)}
    return make_model(nodes, [("x", [2, 3, 7, 7])], [("y", None), ("z", None)], inits)


def test_rebuild_reproduces_onnxruntime_on_every_op():
    model = _every_op_model()
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 7)).astype(np.float32)
    expected = outputs(model, {"x": x})
    got = _rebuilt_outputs(model, x)
    assert [e.shape for e in expected] == [g.shape for g in got] == [(6, 1), (2, 48)]
    for e, g in zip(expected, got, strict=True):
        assert np.abs(e - g).max() <= 1e-4 * max(1.0, np.abs(e).max())


@pytest.mark.parametrize("node, needle", [
    (helper.make_node("Softmax", ["x"], ["y"]), "Softmax"),
    (helper.make_node("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER"), "auto_pad=SAME_UPPER"),
    (helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2]), "indices"),
])
def test_rebuild_refuses_what_it_does_not_implement(node, needle):
    model = make_model([node], [("x", [1, 1, 4, 4])], [("y", None)], {"W": np.ones((1, 1, 3, 3))})
    with pytest.raises(onnx_torch.UnsupportedOnnx, match=needle):
        _rebuilt_outputs(model, np.ones((1, 1, 4, 4), np.float32))


def test_rebuild_refuses_the_sklearn_mlp_by_name(capsys):
    assert onnx_torch.main([str(MODELS / "digits_mlp_sklearn.onnx"), str(MODELS / "digits_test.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnx_torch: error: ") and "ArrayFeatureExtractor" in err and err.count("\n") == 1


def test_search_matches_within_one_percent_or_returns_the_closest():
    study = load_tool("torch_pruning_study")
    seen: list[float] = []

    def smooth(x: float) -> int:
        seen.append(x)
        return round(100_000 * (1 - x) ** 2 + 3_000 * (1 - x))

    x, count, steps = study.search(smooth, 30_000, 0.5, p_lo=103_000)
    assert abs(count - 30_000) <= 300 and count == smooth(x) and steps == len(seen) - 1 <= study.MAX_STEPS

    def steps_of(x: float) -> int:  # the target falls between two attainable counts
        return 1000 if x < 0.37 else 500

    x, count, steps = study.search(steps_of, 720, 0.9, p_lo=1000)
    assert count == 500 and steps <= study.MAX_STEPS and x >= 0.37


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_folded_count_is_the_onnx_count(arch, tmp_path):
    """The count the Torch-Pruning search uses equals onnx_pathlift's count on the exported file, once the BN
    parameters differ; a fresh net's identical BN biases are stored once by the exporter (hence the offset and
    the row's ``params_torch_folded``)."""
    study = load_tool("torch_pruning_study")
    nets = load_tool("digits_nets")
    model = nets.build(arch).eval()
    fresh = study.float_parameters(onnx.load(nets.export(model, tmp_path / "fresh.onnx")))
    assert fresh < study.folded_params(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.copy_(torch.randn(t.shape, generator=gen))
    path = nets.export(model, tmp_path / "m.onnx")
    assert study.folded_params(model) == study.float_parameters(onnx.load(path))


@pytest.mark.slow
def test_quick_study_runs_and_matches(tmp_path):
    """``--quick`` on VGG (1 epoch each): every model matched within 1 % or flagged, rebuilt exactly, round trip."""
    pytest.importorskip("sklearn", reason="scikit-learn ships the digits: pip install scikit-learn")
    out = tmp_path / "study.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "torch_pruning_study.py"), "--quick", "--nets", "vgg",
                           "--epochs", "1", "--finetune-epochs", "1", "--repeats", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Torch-Pruning, best importance" in done.stdout
    study = json.loads(out.read_text())
    dense = study["nets"]["vgg"]["dense"]
    assert dense["top1_torch"] == dense["top1_onnxruntime"]
    settings = study["nets"]["vgg"]["settings"]
    assert [(s["sparsity"], s["scope"]) for s in settings] == [(0.5, "layer"), (0.5, "global")]
    for s in settings:
        rows = s["rows"]
        assert [r.get("criterion") or r["importance"] for r in rows] == ["path-mass", "l1-norm", "L1", "L2", "BN-scale", "Taylor"]
        assert rows[0]["params"] == s["target_params"] < dense["params"]
        for r in rows:
            assert r["matched"] == (abs(r["params"] / s["target_params"] - 1) <= 0.01)
            assert r["rebuild_max_abs_error"] <= 1e-4 and 0 <= r["top1_pruned"] <= 1 and 0 <= r["top1_finetuned"] <= 1
            assert len(r["widths"]) == len(dense["widths"]) and min(r["widths"]) >= 1
        assert sum(r["matched"] for r in rows) >= 5
    trip = study["round_trip"]
    assert trip["max_abs_error"] <= 1e-4 and trip["top1_torch"] == trip["top1_onnxruntime"]


def test_combine_merges_rows_per_setting_and_marks_missing_cells(tmp_path):
    """``--combine``: rows of later files join the setting they belong to, a row already present (same tool and
    criterion or importance) is kept from the first file, and a criterion a setting lacks prints as ``–``."""
    study = load_tool("torch_pruning_study")

    def row(tool: str, name: str, top1: float) -> dict:
        key = "criterion" if tool == "ours" else "importance"
        return {"tool": tool, key: name, "params": 100, "macs": 10, "latency_s": 1e-4, "matched": True,
                "top1_pruned": top1, "top1_finetuned": top1}

    dense = {"top1_onnxruntime": 0.99, "params": 400, "macs": 40, "latency_s": 2e-4}
    first = {"meta": {"finetune_epochs": 3, "repeats": 20}, "nets": {"vgg": {"dense": dense, "settings": [
        {"scope": "layer", "sparsity": 0.5, "target_params": 100, "rows": [row("ours", "path-mass", 0.91),
                                                                          row("torch-pruning", "L1", 0.95)]},
        {"scope": "global", "sparsity": 0.5, "target_params": 100, "rows": [row("ours", "path-mass", 0.81)]}]}}}
    second = {"meta": {}, "nets": {"vgg": {"dense": dense, "settings": [
        {"scope": "layer", "sparsity": 0.5, "target_params": 100, "rows": [row("ours", "path-mass", 0.11),
                                                                          row("ours", "reconstruction", 0.97)]}]}}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p, payload in zip(paths, (first, second), strict=True):
        p.write_text(json.dumps(payload))
    merged = study.combine(paths)
    layer, glob = merged["nets"]["vgg"]["settings"]
    assert [(r["tool"], r.get("criterion") or r["importance"], r["top1_finetuned"]) for r in layer["rows"]] == [
        ("ours", "path-mass", 0.91), ("ours", "reconstruction", 0.97), ("torch-pruning", "L1", 0.95)]
    table = study.accuracy_table(merged["nets"], "top1_finetuned")
    assert table[0].count("ours, ") == 2
    assert "| 0.910 | 0.970 | 0.950 (L1) |" in table[2] and "| 0.810 | – | nan (not run) |" in table[3]
