"""Gauge alignment in ``compare`` (``onnx_pathlift.analyses.gauge``): bounds that honour the rescaling symmetry.

Pairs built at run time from the shipped digits CNN and the tiny nets, with ``onnx_pathlift.analyses.rescale``:
a model and its rescaled copy (the certified d is at most 1e-5 of ‖Φ‖_1, against 2‖Φ‖_1 unaligned), a
pruned model against a rescaled copy of its original (exact, the same bound as unrescaled), noisy and
sign-flipped pairs with both sides rescaled (the bound moves by at most 1e-2 in log10), and
onnxruntime's int8 QDQ quantization of a rescaled copy (within 10× of plain quantization). Every
bound is checked against the brute-force signed path-metric (``oracle``) where the net is small enough,
and against sampled and searched inputs (``checks.sample_and_search``), run on the ONNX files.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import tiny_nets
from builders import dropped, make_model, noise, noisy_flip, qdq
from checks import sample_and_search
from conftest import MODELS
from onnx import helper
from oracle import signed_path_metric, union_dags

from onnx_pathlift import api, import_model
from onnx_pathlift.analyses.gauge import SNAP, _factors, align, param_depth
from onnx_pathlift.analyses.metric import comparable, path_metric
from onnx_pathlift.analyses.rescale import groups, rescale

CNN = MODELS / "digits_cnn_torch_bn.onnx"
SMALL = ["mlp", "conv_bn_pool", "matmul_net"]  # tiny nets onnx_pathlift.analyses.rescale rescales


def rescaled(model: onnx.ModelProto, seed: int, low: float = 1e-6, high: float = 1e6) -> onnx.ModelProto:
    out, report = rescale(model, import_model(model), seed=seed, low=low, high=high)
    assert report.neurons > 0
    return out


def _oracle_d(a: onnx.ModelProto, b: onnx.ModelProto) -> float:
    return signed_path_metric(*union_dags(a, b))[0]


def _certified(a: onnx.ModelProto, b: onnx.ModelProto, upper: float, seed: int) -> None:
    """No sampled or searched input in [-1, 1] changes the outputs by more than ``upper``."""
    sample_and_search(a, b, import_model(a), upper, 1.0, np.random.default_rng(seed), samples=10, steps=20)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_rescaled_copy_is_certified_within_1e_5_of_the_norm(seed: int) -> None:
    model = onnx.load(CNN)
    other = rescaled(model, seed)
    m = path_metric(model, other)
    assert m.route.startswith("aligned-") and m.alignment["used"] and m.alignment["aligned_neurons"] == 24
    assert m.upper <= 1e-5 * 10 ** m.norm_a_log10
    assert min(m.routes["direct"], m.routes["via-min"]) > m.upper_log10 + 6  # what the unaligned routes give (log10)
    _certified(model, other, m.upper, seed)


@pytest.mark.parametrize("name", SMALL)
def test_aligned_bounds_hold_against_the_brute_force_metric(name: str) -> None:
    """d(A, B) by explicit path enumeration lies in [lower, upper] for a rescaled copy, a rescaled
    noisy copy and a rescaled noisy sign-flipped copy; the first is at most 1e-5 of ‖Φ‖_1."""
    model, _ = getattr(tiny_nets, name)(7)
    rng = np.random.default_rng(8)
    for k, other in enumerate([rescaled(model, 1), rescaled(noise(model, rng), 2), rescaled(noisy_flip(model, rng, 0.1), 3)]):
        m = path_metric(model, other)
        d = _oracle_d(model, other)
        assert m.lower * (1 - 1e-6) <= d <= m.upper, (k, m.lower, d, m.upper)
        assert m.alignment["route"] is not None
        if k == 0:
            assert m.upper <= 1e-5 * 10 ** m.norm_a_log10 and m.exact
        _certified(model, other, m.upper, k)


def test_the_rounding_term_bounds_the_change_of_phi() -> None:
    """‖Φ(B'') − Φ(B)‖_1 (brute force, B'' the aligned parameters written back as float64 are what is
    certified) stays within the reported rounding: here checked through the metric's parts: the
    aligned pair's exact d plus the slack bounds the brute-force d, and every snapped coordinate
    moved by at most SNAP."""
    model, _ = tiny_nets.mlp(3)
    other = rescaled(model, 5)
    a, b = (import_model(x).float64_params() for x in (model, other))
    a, b, pairs, _, _ = comparable(a, b)
    gauge = align(a, b, pairs)
    assert gauge is not None and gauge.snapped > 0 and gauge.depth == param_depth(a) == 4
    for layer in a.layers():
        for k, va in layer.params.items():
            vb = gauge.params[layer.name][k]
            moved = (va != 0) & (np.abs(vb / np.where(va != 0, va, 1.0) - 1) > 0)
            assert np.all(np.abs(vb[moved] / va[moved] - 1) > SNAP)  # what is not A's was not within SNAP
    m = path_metric(model, other)
    assert m.alignment["rounding_log10"] == pytest.approx(gauge.slack_log10 + math.log10(10 ** m.norm_b_log10), abs=1e-3)
    assert _oracle_d(model, other) <= m.upper


def test_factors_are_the_median_log_ratios_and_equivariant() -> None:
    """Each channel's factor is exp(median ln|b_i/a_i|) over its incoming coordinates with a_i·b_i ≠ 0
    (numpy's median, coordinate by coordinate), and rescaling B by a gauge multiplies the factors by it."""
    model, _ = tiny_nets.mlp(5)
    a = import_model(model).float64_params()
    g = groups(a)[0]
    rng = np.random.default_rng(1)
    wa, ba = a.layer(g.c.name).params["W"], g.path[0].params["bias"]
    wb, bb = wa * rng.uniform(0.5, 1.5, wa.shape), ba * rng.uniform(0.5, 1.5, ba.shape)
    wb[rng.random(wb.shape) < 0.3] = 0.0  # no ratio there
    params = {g.c.name: {"W": wb}, g.path[0].name: {"bias": bb}}
    got = _factors(g, a, params)
    ra, rb = np.concatenate([wa.T, ba.reshape(-1, 1)], axis=1), np.concatenate([wb.T, bb.reshape(-1, 1)], axis=1)
    want = [np.exp(np.median(np.log(np.abs(y[x * y != 0] / x[x * y != 0])))) for x, y in zip(ra, rb)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    mu = np.exp(rng.uniform(-5, 5, len(want)))
    scaled = {g.c.name: {"W": wb * mu}, g.path[0].name: {"bias": bb * mu}}
    np.testing.assert_allclose(_factors(g, a, scaled), got * mu, rtol=1e-12)


@pytest.mark.parametrize("rescale_pruned", [False, True])
def test_a_pruned_model_against_a_rescaled_copy_stays_exact(rescale_pruned: bool) -> None:
    model = onnx.load(CNN)
    pruned = dropped(model, np.random.default_rng(0), 0.5)
    m0 = path_metric(pruned, model)
    a, b = (rescaled(pruned, 4), model) if rescale_pruned else (pruned, rescaled(model, 4))
    m1 = path_metric(a, b)
    assert m0.exact and m1.exact and m1.alignment["used"]
    assert abs(m1.upper_log10 - m0.upper_log10) <= 1e-4
    assert math.isfinite(m1.lower_log10) and abs(m1.lower_log10 - m0.lower_log10) <= 1e-4
    _certified(a, b, m1.upper, 4)


@pytest.mark.parametrize("kind", ["noise", "flip"])
def test_noisy_pairs_move_little_when_both_sides_are_rescaled(kind: str) -> None:
    model = onnx.load(CNN)
    rng = np.random.default_rng(4)
    other = noise(model, rng) if kind == "noise" else noisy_flip(model, rng, 0.05)
    m0 = path_metric(model, other)
    ra, rb = rescaled(model, 1), rescaled(other, 11)
    m1 = path_metric(ra, rb)
    assert m1.sign_consistent == (kind == "noise")
    assert m1.alignment["used"] and abs(m1.upper_log10 - m0.upper_log10) <= 1e-2
    assert max(v for k, v in m1.routes.items() if not k.startswith("aligned-")) > m1.upper_log10 + 1  # unaligned
    _certified(ra, rb, m1.upper, 2)


@pytest.mark.slow
def test_equalise_then_quantize_is_certified_near_plain_quantization(tmp_path) -> None:
    """onnxruntime's int8 QDQ quantizer on the model and on a rescaled copy (as equalisation does):
    the certified weight term of the second within 10× of the first (the unaligned routes are not)."""
    model = onnx.load(CNN)
    x = np.load(MODELS / "digits_test.npz")["x"][:16].astype(np.float32).reshape(-1, 1, 1, 8, 8)
    calibration = [{"input": v} for v in x]
    plain = api.compare_models(model, qdq(model, tmp_path, calibration)).metric
    for seed in (1, 2):
        eq = api.compare_models(model, qdq(rescaled(model, seed, 1 / 8, 8.0), tmp_path, calibration)).metric
        assert eq.alignment["used"] and eq.upper <= 10 * plain.upper
        assert min(v for k, v in eq.routes.items() if not k.startswith("aligned-")) > math.log10(10 * plain.upper)


def test_compare_reports_the_alignment_in_text_and_json(tmp_path) -> None:
    from conftest import run_cli

    other = tmp_path / "r.onnx"
    onnx.save(rescaled(onnx.load(CNN), 2), other)
    text = run_cli("compare", str(CNN), str(other))
    assert "brought to A's rescaling gauge (24 neurons in 2 layers" in text.stdout and "aligned-direct" in text.stdout
    import json

    d = json.loads(run_cli("compare", str(CNN), str(other), "--json").stdout)
    assert d["alignment"]["used"] and d["route"] == "aligned-direct" and d["exact"]
    same = json.loads(run_cli("compare", str(CNN), str(CNN), "--json").stdout)
    assert same["alignment"]["used"] is False and same["upper"] == 0.0


def test_a_bn_fused_rescaled_copy_aligns_after_canonicalisation(tmp_path) -> None:
    """onnxruntime's basic optimiser folds BatchNormalization into the convs of a rescaled copy: the
    pair is compared in canonical form (GlobalAveragePool becomes a ReduceMean-like reduce, a chain
    that rescaling crosses), both groups are aligned and the bound is within 1e-5 of ‖Φ‖_1."""
    import onnxruntime as ort

    src, fused = tmp_path / "r.onnx", tmp_path / "fused.onnx"
    onnx.save(rescaled(onnx.load(CNN), 2, 1e-3, 1e3), src)
    opts = ort.SessionOptions()
    opts.graph_optimization_level, opts.optimized_model_filepath = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, str(fused)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    c = api.compare_models(str(CNN), str(fused), check=20)
    assert c.canonical_a and c.metric.alignment["used"] and c.metric.alignment["aligned_neurons"] == 24
    assert c.metric.upper <= 1e-5 * 10 ** c.metric.norm_a_log10 and not c.check.violated


@pytest.mark.parametrize(("axes", "keepdims", "crosses"), [([2, 3], 1, True), ([2, 3], 0, False), ([1], 1, False)])
def test_rescaling_crosses_a_reduction_only_when_it_keeps_the_channels(axes, keepdims: int, crosses: bool) -> None:
    """Conv → Relu → ReduceMean → (flatten) → Gemm: the conv's channels are rescaled through the mean
    over H, W with keepdims; not when the reduction drops axes or reduces the channels."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=keepdims),
             helper.make_node("Flatten", ["m"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"])]
    rows = 3 if axes == [2, 3] else 4  # the flattened features: 3 channels, or 4 positions
    params = {"K": rng.normal(size=(3, 2, 1, 1)), "axes": np.array(axes, np.int64), "W": rng.normal(size=(rows, 2))}
    model = make_model(nodes, [("x", [1, 2, 2, 2])], [("y", [1, 2])], params, opset=18)
    _, report = rescale(model, import_model(model), seed=1)
    assert report.neurons == (3 if crosses else 0)
    if crosses:  # and the function is kept
        assert api.rescale_model(model, seed=1).check.passed


def test_alignment_is_refused_when_a_coordinate_leaves_the_normal_range() -> None:
    """A subnormal weight (1e-310, as float64 DAGs can hold) out of a channel B holds at 3×: aligning
    it rounds absolutely, not relatively, and the rounding term would not hold: align refuses."""
    model, _ = tiny_nets.mlp(3)
    a = import_model(model).float64_params()
    g = groups(a)[0]
    a.layer(g.d.name).params["W"] = w = a.layer(g.d.name).params["W"].copy()
    w[0, 0] = 1e-310
    b = import_model(model).float64_params()
    scale = np.ones(g.channels)
    scale[0] = 3.0
    b.layer(g.c.name).params["W"] = a.layer(g.c.name).params["W"] * scale
    b.layer(g.path[0].name).params["bias"] = a.layer(g.path[0].name).params["bias"] * scale
    b.layer(g.d.name).params["W"] = w / scale[:, None]
    same = {n: n for n in a.graph.nodes}
    assert align(a, b, same) is None
    w[0, 0] = 1e-300  # normal: aligned, and to A within rounding
    b.layer(g.d.name).params["W"] = w / scale[:, None]
    gauge = align(a, b, same)
    assert gauge is not None and gauge.neurons == 1
    np.testing.assert_allclose(gauge.params[g.d.name]["W"], w, rtol=1e-15)
