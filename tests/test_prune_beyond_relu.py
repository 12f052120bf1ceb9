"""``prune --structure channel`` and ``inspect`` on networks that are not DAG-ReLU networks (issue 31):
SiLU, Hardswish, GELU, Mish, Tanh, GroupNorm, MobileNetV3-style squeeze-excitation (Hardswish, SE
gates by HardSigmoid) and SE gates on a ReLU net, with a ReLU control (``tools/beyond_relu_nets.py``), exported
at run time from torch (CPU, one thread) by the TorchScript exporter (the dynamo exporter in the slow tests).

What is checked: the criterion is chosen without the theory (``l1-norm``, with ``criterion_reason``
naming the importer's refusal; the certificate ``null`` with ``metric_reason``), ``--criterion path-mass``
is refused naming ``l1-norm``, ``inspect`` says the same as ``prune`` does; and at 30/50/70 % each slim
model reproduces its masked model in independent onnxruntime sessions, at least 20 % of the parameters
(counted in the slim file) go at 50 %, and the latency is measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from checks import run
from conftest import load_tool, run_main

torch = pytest.importorskip("torch")
import torch_archs  # noqa: E402

nets = load_tool("beyond_relu_nets")  # the nets and their export, shared with the measurement
NETS, SHAPE = nets.NETS, nets.SHAPE
SPARSITIES = (0.3, 0.5, 0.7)


def _export(name: str, folder: Path, exporter: str = "torchscript") -> Path:
    """The net with random BatchNorm statistics, exported at opset 17 (TorchScript) or 18 (dynamo)."""
    torch.manual_seed(0)
    return nets.export(torch_archs.randomise(NETS[name][0](), 1), folder / f"{name}_{exporter}.onnx", exporter)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("beyond_relu")
    return {name: _export(name, folder) for name in NETS}


def _prune(capsys, model: Path, tmp: Path, sparsity: float, *extra) -> tuple[int, dict, str, Path, Path]:
    """``prune --structure channel --json`` (3 latency runs): exit code, record, stderr, slim and masked paths."""
    slim, masked = tmp / f"slim{sparsity}.onnx", tmp / f"masked{sparsity}.onnx"
    rc, out, err = run_main(capsys, "prune", model, "--structure", "channel", "--sparsity", sparsity, "-o", slim,
                            "--masked", masked, "--repeats", 3, "--json", *extra)
    return rc, json.loads(out), err, slim, masked


def _slim_vs_masked(slim: Path, masked: Path, trials: int = 3) -> float:
    """max |masked − slim| / max |masked| on random inputs, each model in its own onnxruntime session."""
    rng, worst = np.random.default_rng(7), 0.0
    a, b = onnx.load(str(masked)), onnx.load(str(slim))
    for _ in range(trials):
        feeds = {"input": rng.normal(0, 1, SHAPE).astype(np.float32)}
        for x, y in zip(run(a, feeds), run(b, feeds)):
            worst = max(worst, float(np.abs(x - y).max() / np.abs(x).max()))
    return worst


def _float_parameters(path: Path) -> int:
    """Elements of the float initializers and Constant-node tensors in the file (counted here, not by the package)."""
    model = onnx.load(str(path))
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                                          if a.name == "value")]
    return sum(int(np.prod(t.dims)) for t in tensors if t.data_type in floats)


def _refused_op(reason: str) -> str:
    """The op type in ``... needs a DAG-ReLU network: NODE (OP): why``."""
    return reason.split(": ", 1)[1].split(" (", 1)[1].split(")", 1)[0]


@pytest.mark.parametrize("name", sorted(NETS))
def test_criterion_reasons_and_inspect(capsys, exported, tmp_path, name: str) -> None:
    """ReLU: path-mass and the certificate, as before; otherwise l1-norm, the certificate null, each with
    the importer's refusal (an op of the exported graph), a note on stderr; inspect agrees with prune."""
    model, refusable = exported[name], NETS[name][1]
    rc, record, err, slim, masked = _prune(capsys, model, tmp_path, 0.5)
    assert rc == 0, err
    ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    rc_inspect, out, _ = run_main(capsys, "inspect", model, "--json")
    inspection = json.loads(out)
    readiness = inspection["channel_pruning"]
    assert readiness["removable"] == record["groups"]["removable"]
    assert readiness["groups"] == record["groups"]["total"]
    assert readiness["criterion"] == record["criterion"]
    if not refusable:
        assert (rc_inspect, inspection["analysable"], readiness["certified"]) == (0, True, True)
        assert record["criterion"] == "path-mass" and "criterion_reason" not in record and "note:" not in err
        assert record["metric"]["bound"] >= 0 and "metric_reason" not in record
        return
    assert (rc_inspect, inspection["analysable"], readiness["certified"]) == (3, False, False)
    assert record["criterion"] == "l1-norm" and record["ranking"] == "normalised" and record["steps"] == 1
    assert record["criterion_reason"].startswith("path-mass needs a DAG-ReLU network: ")
    assert _refused_op(record["criterion_reason"]) in refusable & ops
    assert record["metric"] is None and record["metric_reason"].startswith("the certificate (path-metric) needs")
    assert readiness["criterion_reason"] == record["criterion_reason"]
    assert readiness["certificate_reason"] == record["metric_reason"]
    assert f"note: ranked by l1-norm: {record['criterion_reason']}" in err
    rc_inspect, out, err = run_main(capsys, "inspect", model)
    assert rc_inspect == 3 and "analyse (path-norms, scores, certificates): no" in out
    assert f"channel-prune: yes, {readiness['removable']} of {readiness['groups']} channel groups removable, by l1-norm" in out
    assert f"channel-prunable all the same (by l1-norm, no certificate): onnx-pathlift prune {model}" in err


@pytest.mark.parametrize("name", sorted(NETS))
def test_pruned_beyond_relu(capsys, exported, tmp_path, name: str) -> None:
    """At 30/50/70 %: exit 0, groups removed, the slim model reproduces the masked one (checked by the
    command and again here), fewer parameters the higher the sparsity and ≥ 20 % fewer at 50 %, latency measured."""
    model = exported[name]
    before = _float_parameters(model)
    kept = []
    for sparsity in SPARSITIES:
        rc, record, err, slim, masked = _prune(capsys, model, tmp_path, sparsity)
        assert rc == 0, err
        assert record["groups"]["removed"] > 0, record["pinned"]
        assert 0.0 <= record["slim_vs_masked_max_rel_error"] <= 1e-4
        assert _slim_vs_masked(slim, masked) <= 1e-4
        assert record["params_before"] == before and record["params_after"] == _float_parameters(slim)
        assert all(isinstance(record[k], float) and record[k] > 0 for k in ("latency_before_s", "latency_after_s"))
        kept.append(record["params_after"])
    assert kept == sorted(kept, reverse=True) and kept[0] < before
    assert kept[1] <= 0.8 * before, f"{name}: {before} → {kept[1]} parameters at 50 %"


def test_path_mass_refused_with_the_way_out(capsys, exported, tmp_path) -> None:
    """An explicit --criterion path-mass on a SiLU net: exit 3, the refusal named, l1-norm as the way out,
    nothing written."""
    out = tmp_path / "slim.onnx"
    rc, text, err = run_main(capsys, "prune", exported["silu"], "--structure", "channel", "--sparsity", 0.5, "-o", out,
                             "--criterion", "path-mass")
    assert rc == 3 and not out.exists()
    assert "--criterion path-mass needs a DAG-ReLU network" in err and "Sigmoid" in err and "--criterion l1-norm" in err
    rc, text, _ = run_main(capsys, "prune", exported["silu"], "--structure", "channel", "--sparsity", 0.5, "-o", out,
                           "--criterion", "path-mass", "--json")
    error = json.loads(text)
    assert (rc, error["exit_code"], error["error"], error["criterion"]) == (3, 3, "PathMassRefused", "l1-norm")
    assert {r["op_type"] for r in error["refusals"]} == {"Sigmoid"}


def test_explicit_l1_norm_and_weight_structure(capsys, exported, tmp_path) -> None:
    """--criterion l1-norm on a Hardswish net gives the same record as the automatic choice; --structure
    weight (path-magnitude needs the DAG) still refuses with exit 3."""
    rc, auto, _, _, _ = _prune(capsys, exported["hardswish"], tmp_path, 0.5)
    rc2, asked, _, _, _ = _prune(capsys, exported["hardswish"], tmp_path, 0.5, "--criterion", "l1-norm")
    assert rc == rc2 == 0
    same = ("criterion", "criterion_reason", "metric", "metric_reason", "groups", "params_after", "layers")
    assert {k: auto[k] for k in same} == {k: asked[k] for k in same}
    rc, _, err = run_main(capsys, "prune", exported["hardswish"], "--sparsity", 0.5, "-o", tmp_path / "w.onnx")
    assert rc == 3 and "HardSwish" in err and not (tmp_path / "w.onnx").exists()


def test_calibration_recovers_without_a_dag(capsys, exported, tmp_path) -> None:
    """--calibration with l1-norm on the ReLU net with SE gates (HardSigmoid): no data-aware path mass (it needs the DAG: said in
    criterion_reason), the slim model recovered by least squares and still reproducing its masked model."""
    rng = np.random.default_rng(0)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=rng.normal(0, 1, (48, *SHAPE[1:])).astype(np.float32), y=rng.integers(0, 10, 48))
    rc, record, err, slim, masked = _prune(capsys, exported["relu-se"], tmp_path, 0.5, "--calibration", data,
                                           "--criterion", "l1-norm")
    assert rc == 0, err
    assert record["groups"]["removed"] > 0
    assert "--calibration's data-aware path mass" in record["criterion_reason"] and record["metric"] is None
    recovery = record["recovery"]
    assert recovery["data_aware_scores"] is False and recovery["samples"] == 48 and recovery["refit"] >= 1
    assert recovery["slim_vs_masked_max_rel_error"] <= 1e-4 and _slim_vs_masked(slim, masked) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETS))
def test_dynamo_exports(capsys, tmp_path, name: str) -> None:
    """The same nets by the dynamo exporter (opset 18): the criterion as for TorchScript's, and at 50 % the
    slim model reproduces the masked one with ≥ 20 % of the parameters gone."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = _export(name, tmp_path, "dynamo")
    rc, record, err, slim, masked = _prune(capsys, model, tmp_path, 0.5)
    assert rc == 0, err
    assert record["criterion"] == ("path-mass" if name == "relu" else "l1-norm")
    assert (record["metric"] is None) == (name != "relu")
    assert _slim_vs_masked(slim, masked) <= 1e-4
    assert record["params_after"] == _float_parameters(slim) <= 0.8 * _float_parameters(model)


def test_steps_and_targets_without_a_dag(capsys, exported, tmp_path) -> None:
    """l1-norm in 3 steps towards a parameter target on the ReLU + SE net: no DAG is imported on the way
    (the steps rescore by l1-norm), the target is met as far as the floors allow, slim = masked."""
    rc, record, err, slim, masked = _prune(capsys, exported["relu-se"], tmp_path, 0.3, "--steps", 3, "--ranking", "raw",
                                           "--target", "params", "--round-to", 4)
    assert rc == 0, err
    assert (record["criterion"], record["steps"], record["ranking"], record["target"]) == ("l1-norm", 3, "raw", "params")
    assert record["groups"]["removed"] > 0 and record["params_after"] == _float_parameters(slim) < record["params_before"]
    assert _slim_vs_masked(slim, masked) <= 1e-4


def test_hostile_node_name_in_the_reason(capsys, tmp_path) -> None:
    """A refused node named with terminal escapes: the note and the report show them escaped."""
    from builders import make_model

    rng = np.random.default_rng(0)
    evil = "\x1b]0;owned\x07\x1b[31mtanh"
    nodes = [onnx.helper.make_node("Conv", ["x", "w1", "b1"], ["h"]), onnx.helper.make_node("Relu", ["h"], ["r"]),
             onnx.helper.make_node("Conv", ["r", "w2"], ["h2"]), onnx.helper.make_node("Tanh", ["h2"], ["t"], name=evil),
             onnx.helper.make_node("Conv", ["t", "w3"], ["y"])]
    params = {"w1": rng.normal(size=(8, 2, 1, 1)), "b1": rng.normal(size=8), "w2": rng.normal(size=(8, 8, 1, 1)),
              "w3": rng.normal(size=(3, 8, 1, 1))}
    path = tmp_path / "evil.onnx"
    onnx.save(make_model(nodes, [("x", (1, 2, 4, 4))], [("y", (1, 3, 4, 4))], params), str(path))
    rc, out, err = run_main(capsys, "prune", path, "--structure", "channel", "--sparsity", 0.5, "--round-to", 1,
                            "-o", tmp_path / "slim.onnx")
    assert rc == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "note: ranked by l1-norm" in err and "owned" in err and "no certificate" in out


def test_a_custom_op_is_not_called_prunable(capsys, tmp_path) -> None:
    """A node without an ONNX schema: inspect does not call the model channel-prunable (the slim model is
    checked by running it), and prune indeed cannot check it (exit 1, nothing written)."""
    from builders import make_model

    rng = np.random.default_rng(0)
    nodes = [onnx.helper.make_node("Conv", ["x", "w1"], ["h"]), onnx.helper.make_node("Tanh", ["h"], ["t"]),
             onnx.helper.make_node("Conv", ["t", "w2"], ["c"]),
             onnx.helper.make_node("MyOp", ["c"], ["y"], name="custom", domain="com.example")]
    model = make_model(nodes, [("x", (1, 2, 4, 4))], [("y", (1, 3, 4, 4))],
                       {"w1": rng.normal(size=(16, 2, 1, 1)), "w2": rng.normal(size=(3, 16, 1, 1))})
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    rc, out, _ = run_main(capsys, "inspect", path, "--json")
    readiness = json.loads(out)["channel_pruning"]
    assert rc == 3 and readiness["removable"] > 0 and readiness["prunable"] is False
    assert "'custom' (com.example:MyOp) has no ONNX schema" in readiness["reason"]
    rc, _, err = run_main(capsys, "prune", path, "--structure", "channel", "--sparsity", 0.5, "--round-to", 1,
                          "-o", tmp_path / "slim.onnx")
    assert rc == 1 and "MyOp" in err and not (tmp_path / "slim.onnx").exists()
