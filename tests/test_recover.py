"""Recovery of channel-pruned models from calibration data (``prune --structure channel --calibration``)
and the data-aware path mass: least squares against an independent numpy oracle, held-out error,
the recovered model's certificate on sampled and searched inputs, rescaling invariance, bad files."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import tiny_nets
from builders import make_model, normal
from checks import Runner, analyse, group_of, sample_and_search
from conftest import ROOT, run_main
from onnx import helper, numpy_helper

from onnx_pathlift.errors import UsageError
from onnx_pathlift.pruning.calibration import collect, read_calibration
from onnx_pathlift.pruning.channels import group_scores
from onnx_pathlift.pruning.prune import prune_channel_groups
from onnx_pathlift.pruning.ranking import prune_channels
from onnx_pathlift.pruning.recover import data_aware_mass, recover


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _mlp_data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.3, 1.0, (n, 6)).astype(np.float32)


# --- least squares against numpy ------------------------------------------------------------------

def test_one_layer_refit_is_the_ridge_optimum_computed_by_numpy() -> None:
    """tiny MLP (Gemm, alpha 0.7, beta 1.3 → Relu → Gemm): removing half the hidden units leaves one
    layer to refit, the output Gemm. Its weights must be the ridge solution with the λ recovery chose,
    computed here by ``numpy.linalg.lstsq`` on the augmented system from activations this test
    collects itself; the calibration error can be no lower than plain least squares."""
    model, _ = tiny_nets.mlp(3)
    p, dag, cg = analyse(model)
    result = prune_channels(model, p, dag, 0.5, "path-mass", "layer")
    x = _mlp_data(300, 0)
    rec = recover(model, result.slim, result.masked, result.graph, result.removed, p, list(dag.outputs), (x, None))
    (fit,) = [f for f in rec.layers if f.action == "refit"]
    assert fit.op == "Gemm" and fit.node == "y" and fit.ridge is not None and fit.error_after < fit.error_before
    kept = [j for j in range(8) if group_of(cg, "r1", j) not in result.removed]
    q = _arrays(model)
    hidden = np.maximum(0.7 * x.astype(np.float64) @ q["B1"].T + 1.3 * q["C1"], 0.0)[:, kept]
    y = np.concatenate([Runner(model, ["y"])({"x": xi[None]})[None] for xi in x])
    a = np.hstack([hidden, np.ones((len(x), 1))])
    beta0 = np.vstack([q["B2"][kept], q["C2"]])
    d = np.sqrt(fit.ridge * np.maximum(np.sum(a * a, axis=0), 1e-12 * np.max(np.sum(a * a, axis=0))))
    want = np.linalg.lstsq(np.vstack([a, np.diag(d)]), np.vstack([y, d[:, None] * beta0]), rcond=None)[0]
    got = _arrays(rec.slim)
    np.testing.assert_allclose(got["B2"], want[:-1], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got["C2"].ravel(), want[-1], rtol=2e-4, atol=2e-5)
    plain = np.linalg.lstsq(a, y, rcond=None)[0]
    floor = np.linalg.norm(a @ plain - y) / np.linalg.norm(y)
    assert floor - 1e-6 <= fit.error_after <= fit.error_before


def test_collect_reads_intermediate_tensors_of_a_fixed_batch_model() -> None:
    model, _ = tiny_nets.mlp(1)
    x = _mlp_data(7, 1)
    (g1,) = collect(model, ["g1"], x, "x")
    q = _arrays(model)
    np.testing.assert_allclose(g1, 0.7 * x @ q["B1"].T + 1.3 * q["C1"], rtol=1e-5, atol=1e-5)


# --- held-out error and certificate ---------------------------------------------------------------

def _conv_net(seed: int) -> onnx.ModelProto:
    """x[N,2,8,8] → Conv 3×3 (8) → Relu → Conv 3×3 stride 2 (8, no bias) → Relu → Conv 1×1 (6) → Add
    (skip from the second conv's output: a residual) → Relu → GlobalAveragePool → Flatten → Gemm → y[N,4],
    with a free batch dimension."""
    rng = np.random.default_rng(seed)
    p = {"W1": normal(rng, (8, 2, 3, 3), 18), "b1": rng.normal(0, 0.3, 8), "W2": normal(rng, (8, 8, 3, 3), 72),
         "W3": normal(rng, (8, 8, 1, 1), 8), "b3": rng.normal(0, 0.3, 8), "Wf": normal(rng, (4, 8), 8),
         "bf": rng.normal(0, 0.3, 4)}
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "W3", "b3"], ["c3"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c3", "c2"], ["s"]),
             helper.make_node("Relu", ["s"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, [("x", ["N", 2, 8, 8])], [("y", ["N", 4])], p, name="conv_net", producer="test")


def test_recovery_reduces_held_out_error_and_its_certificate_holds(tmp_path) -> None:
    model = _conv_net(0)
    rng = np.random.default_rng(1)
    calib = {"x": rng.uniform(0, 1, (200, 2, 8, 8)).astype(np.float32)}
    held = {"x": rng.uniform(0, 1, (60, 2, 8, 8)).astype(np.float32), "y": rng.integers(0, 4, 60)}
    report = prune_channel_groups(model, 0.5, tmp_path / "slim.onnx", scope="layer", round_to=1, masked_out=tmp_path / "m.onnx",
                                  input_shape=[1, 2, 8, 8], eval_data=held, calibration=calib, repeats=1)
    r = report.record
    rec = r["recovery"]
    for table in (rec["calibration"], rec["eval"]):
        assert table["recovered"]["output_rel_error"] < table["pruned"]["output_rel_error"]
        assert table["recovered"]["output_mean_l1"] < table["pruned"]["output_mean_l1"]
    assert rec["refit"] >= 2 and r["slim_vs_masked_max_rel_error"] <= 1e-4
    assert any(name.endswith("__recovered_bias") for name in _arrays(report.result.slim))  # W2 had no bias
    metric = r["metric"]
    assert not metric["exact"] and metric["bound"] > 0
    slim = onnx.load(tmp_path / "slim.onnx")
    _, dag, _ = analyse(model)
    sample_and_search(model, slim, dag, metric["bound"], 1.0, np.random.default_rng(2))
    masked = onnx.load(tmp_path / "m.onnx")
    sample_and_search(model, masked, dag, metric["bound"], 1.0, np.random.default_rng(3), samples=5, steps=10)


def test_a_layer_that_cannot_be_refit_gets_its_bias_mean_shifted(tmp_path) -> None:
    """1-D convs (not refit: im2col is 2-D) read by a Flatten → Gemm head: the second conv reads pruned
    channels and is bias-shifted (its error can only fall: the mean is the least-squares constant),
    the head is refit; the recovered output is closer to the original's."""
    rng = np.random.default_rng(7)
    p = {"W1": normal(rng, (6, 2, 3), 6), "b1": rng.normal(0, 0.3, 6), "W2": normal(rng, (6, 6, 3), 18),
         "b2": rng.normal(0, 0.3, 6), "Wf": normal(rng, (3, 72), 72), "bf": rng.normal(0, 0.3, 3)}
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "b2"], ["c2"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1)]
    model = make_model(nodes, [("x", ["N", 2, 12])], [("y", ["N", 3])], p, name="conv1d", producer="test")
    x = rng.normal(0.5, 1.0, (400, 2, 12)).astype(np.float32)
    r = prune_channel_groups(model, 0.5, tmp_path / "s.onnx", criterion="path-mass", scope="layer", round_to=1,
                             input_shape=[1, 2, 12], calibration={"x": x}, repeats=1).record["recovery"]
    actions = {f["node"]: f for f in r["layers"]}
    assert actions["c2"]["action"] == "shift" and actions["c2"]["error_after"] <= actions["c2"]["error_before"]
    assert actions["y"]["action"] == "refit"
    assert r["calibration"]["recovered"]["output_rel_error"] < r["calibration"]["pruned"]["output_rel_error"]


def test_cli_reports_recovery_in_text_and_json(tmp_path, capsys) -> None:
    model = _conv_net(4)
    src = tmp_path / "net.onnx"
    onnx.save(model, src)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(0, 1, (100, 2, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 100))
    args = ["prune", src, "--structure", "channel", "--sparsity", "0.5", "--scope", "layer", "--round-to", "1", "--input-shape", "1,2,8,8",
            "--calibration", tmp_path / "cal.npz", "--eval", tmp_path / "cal.npz", "--repeats", "1", "--criterion", "path-mass"]
    rc, out, err = run_main(capsys, *args, "-o", tmp_path / "a.onnx")
    assert rc == 0, err
    assert "not the pruning-exact case" in out and "calibration recovered: top-1" in out and "eval" in out
    assert "(data-aware)" in out
    rc, out, err = run_main(capsys, *args, "-o", tmp_path / "b.onnx", "--json")
    assert rc == 0, err
    r = json.loads(out)["recovery"]
    assert r["data_aware_scores"] and r["samples"] == 100 and r["eval"]["recovered"]["output_rel_error"] < r["eval"]["pruned"]["output_rel_error"]


# --- data-aware path mass -------------------------------------------------------------------------

def test_data_aware_mass_of_an_mlp_against_its_formula() -> None:
    """Hidden unit j of the tiny MLP: (Σ_i |0.7·B1_ji|·E|x_i| + |1.3·C1_j|)·P(z_j > 0)·Σ_k |B2_jk|, over
    the total (those summed over j plus the output biases' paths Σ_k |C2_k|)."""
    model, _ = tiny_nets.mlp(2)
    p, _, cg = analyse(model)
    x = _mlp_data(400, 5)
    q = _arrays(model)
    z = 0.7 * x.astype(np.float64) @ q["B1"].T + 1.3 * q["C1"]
    mass = ((np.abs(0.7 * q["B1"]) @ np.abs(x).mean(0) + np.abs(1.3 * q["C1"])) * (z > 0).mean(0)
            * np.abs(q["B2"]).sum(1))
    want = mass / (mass.sum() + np.abs(q["C2"]).sum())
    got = data_aware_mass(cg, model, p, x)
    np.testing.assert_allclose([got[group_of(cg, "r1", j)] for j in range(8)], want, rtol=1e-5)
    assert not np.allclose(got, group_scores(cg, p, "path-mass", analyse(model)[1]), rtol=1e-2, equal_nan=True)


@pytest.mark.parametrize("net", ["mlp", "conv_bn_pool", "residual_concat"])
def test_data_aware_mass_is_rescaling_invariant(net: str) -> None:
    model, rescale_fn = getattr(tiny_nets, net)(1)
    other = rescale_fn(model, np.random.default_rng(5))
    (p, dag, cg), (p2, _, cg2) = analyse(model), analyse(other)
    shape = p.inputs[next(iter(p.inputs))]
    x = np.random.default_rng(0).normal(0, 1, (64, *shape[1:])).astype(np.float32)
    s, s2 = data_aware_mass(cg, model, p, x), data_aware_mass(cg2, other, p2, x)
    assert np.isfinite(s).sum() >= 2
    np.testing.assert_allclose(s2, s, rtol=1e-4)
    l1, l1b = group_scores(cg, p, "l1-norm", dag), group_scores(cg2, p2, "l1-norm", analyse(other)[1])
    assert not np.allclose(l1, l1b, rtol=1e-2, equal_nan=True)  # the rescaling is not a no-op


# --- bad calibration files ------------------------------------------------------------------------

@pytest.mark.parametrize("arrays, message", [
    ({"y": np.zeros(3)}, "no array 'x'"),
    ({"x": np.zeros((3, 5))}, "input shape"),
    ({"x": np.full((3, 64), np.nan, np.float32)}, "NaN"),
    ({"x": np.zeros((3, 64)), "y": np.zeros(2)}, "one integer label per sample"),
    ({"x": np.zeros((1, 64))}, "at least 2 samples"),
])
def test_bad_calibration_file_exit_2(tmp_path, capsys, arrays, message) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    src = ROOT / "models/digits_cnn_torch_bn.onnx"
    rc, out, err = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.3", "-o",
                            tmp_path / "s.onnx", "--calibration", tmp_path / "bad.npz")
    assert rc == 2 and message in err and err.startswith("onnx-pathlift: error:") and "Traceback" not in err
    assert not (tmp_path / "s.onnx").exists()


def test_calibration_not_an_npz_and_with_weight_pruning(tmp_path, capsys) -> None:
    (tmp_path / "bad.npz").write_text("not a zip")
    src = ROOT / "models/digits_cnn_torch_bn.onnx"
    for extra in (["--structure", "channel"], ["--structure", "weight"]):
        rc, _, err = run_main(capsys, "prune", src, "--sparsity", "0.3", "-o", tmp_path / "s.onnx",
                              "--calibration", tmp_path / "bad.npz", *extra)
        assert rc == 2 and "onnx-pathlift: error:" in err and "--calibration" in err, err
    rc, out, _ = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.3", "-o",
                          tmp_path / "s.onnx", "--calibration", tmp_path / "bad.npz", "--json")
    assert rc == 2 and "--calibration" in json.dumps(json.loads(out))
    with pytest.raises(UsageError):
        read_calibration({"x": np.zeros((4, 3))}, (1, 4))


# --- the goal on the digits nets ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet", "vgg", "mobilenet"])
def test_half_the_channels_per_layer_keep_90_percent_before_fine_tuning(tmp_path, arch) -> None:
    """The issue's goal: 50 % per-layer channel pruning (the data-aware path mass, every layer
    halved: ``round_to=1``) with calibration on the train split keeps ≥ 90 % top-1 on the test split, with
    no training, for each of tools/digits_nets.py's nets (measured 0.978 / 0.994 / 0.914; rounded to
    multiples of 8, MobileNetV2's narrow layers are cut less evenly and it keeps 0.897 with l1-norm)."""
    pytest.importorskip("torch", reason="torch trains the digits nets: pip install torch==2.13.0")
    pytest.importorskip("sklearn", reason="scikit-learn ships the digits: pip install scikit-learn")
    sys.path.insert(0, str(ROOT / "tools"))
    import digits_nets

    data = digits_nets.digits16()
    path, _ = digits_nets.make(arch, tmp_path, data=data)
    train = digits_nets.save_data(data, tmp_path / "train.npz", "train")
    test = digits_nets.save_data(data, tmp_path / "test.npz", "test")
    r = prune_channel_groups(path, 0.5, tmp_path / "slim.onnx", criterion="path-mass", scope="layer", round_to=1,
                             eval_data=test, calibration=train, repeats=1).record
    assert r["achieved"] == 0.5
    assert r["recovery"]["eval"]["pruned"]["top1"] < 0.5  # pruning alone breaks it
    assert r["accuracy_after"] >= 0.90 and r["recovery"]["eval"]["recovered"]["top1"] == r["accuracy_after"]
