"""Certificates for any two checkpoints: sign flips (two-leg routes) and each layer's part of the bound.

Oracles: the signed brute-force path enumerator of ``oracle`` (``d = Σ_p |Φ_p(θ) − Φ_p(θ')|`` in
float64, and the two legs of a route through an explicit intermediate ONNX model), and onnxruntime
runs of the two ONNX files on sampled inputs and on a coordinate-ascent search of the input box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_nets
from builders import dropped, flip, inits, noise, noisy_flip, param_roles, replace_inits
from checks import sample_and_search
from conftest import MODELS, load_tool, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import signed_path_metric, union_dags

from onnx_pathlift import import_model
from onnx_pathlift.analyses.check import check_bound
from onnx_pathlift.analyses.metric import path_metric

NETS = sorted(tiny_nets.ALL_NETS)
FLOAT_SHIPPED = [p for p in sorted(MODELS.glob("*.onnx")) if param_roles(onnx.load(p))[0]]


def weight_noise(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """Multiplicative noise U(0.5, 1.5) on the Conv/Gemm/MatMul weights and biases only."""
    p = inits(model)
    weights, biases, _ = param_roles(model)
    return replace_inits(model, {n: p[n] * rng.uniform(0.5, 1.5, p[n].shape) for n in weights + biases})


def _brute_d(a: onnx.ModelProto, b: onnx.ModelProto) -> float:
    Ga, Gb, outs, edges = union_dags(a, b)
    return signed_path_metric(Ga, Gb, outs, edges)[0]


def _with_weights(model: onnx.ModelProto, how: str, other: onnx.ModelProto) -> onnx.ModelProto:
    """The intermediate points of the routes as ONNX models (the pair differs in Conv/Gemm/MatMul
    weights and biases only, each the one parameter of its DAG layer)."""
    pa, pb = inits(model), inits(other)
    new = {}
    weights, biases, _ = param_roles(model)
    for n in weights + biases:
        wa, wb = pa[n].astype(np.float64), pb[n].astype(np.float64)
        keep = wa if how == "zero" else np.sign(wa) * np.minimum(np.abs(wa), np.abs(wb))
        new[n] = np.where(wa * wb < 0, 0.0, keep)
    return replace_inits(model, new)


# ---------------------------------------------------------------------------------------------
# sign flips
# ---------------------------------------------------------------------------------------------


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NETS), seed=st.integers(0, 10**6), frac=st.floats(0.0, 0.5),
       noisy=st.booleans(), r=st.sampled_from([0.5, 1.0, 2.0]))
def test_sign_flip_routes_against_brute_force_and_inputs(name: str, seed: int, frac: float, noisy: bool, r: float) -> None:
    rng = np.random.default_rng(seed)
    model_a, _ = tiny_nets.ALL_NETS[name](seed % 1000)
    model_b = weight_noise(model_a, rng) if noisy else model_a
    model_b, masks = flip(model_b, rng, frac)
    m = path_metric(model_a, model_b)
    assert not m.sign_consistent and not m.exact
    plain = {k for k in m.routes if not k.startswith("aligned-")}  # the gauge-aligned pair's routes: tests/test_gauge.py
    assert m.route.removeprefix("aligned-") in ("via-zero", "via-min") and plain == {"via-zero", "via-min"}
    assert m.routes["via-min"] <= m.routes["via-zero"] + 1e-6  # the same per-path inequality
    assert m.upper_log10 == min(m.routes.values())
    assert sum(s.violations for s in m.signs) == sum(int(k.sum()) for k in masks.values())
    d = _brute_d(model_a, model_b)
    assert m.lower <= d * (1 + 1e-6) + 1e-12 and d <= m.upper * (1 + 1e-6)
    # each route is the sum of its two legs' bounds; via-min's legs are exact (pruning-like pairs)
    low = _with_weights(model_a, "min", model_b)
    legs = _brute_d(model_a, low) + _brute_d(low, model_b)
    assert legs * (1 - 1e-9) <= 10.0 ** m.routes["via-min"] <= legs * (1 + 1e-4)  # certified: rounded outward
    zero = _with_weights(model_a, "zero", model_b)
    assert 10.0 ** m.routes["via-zero"] >= (_brute_d(model_a, zero) + _brute_d(zero, model_b)) * (1 - 1e-6)
    sample_and_search(model_a, model_b, import_model(model_a), max(r, 1.0) * m.upper, r, rng)


@pytest.mark.parametrize("name", NETS)
def test_direct_route_unchanged_and_exact_for_pruning(name: str) -> None:
    model_a, _ = tiny_nets.ALL_NETS[name](4)
    model_b = dropped(model_a, np.random.default_rng(4), 0.4)
    m = path_metric(model_a, model_b)
    assert m.sign_consistent and m.exact and m.route == "direct" and set(m.routes) == {"direct"}
    low = _with_weights(model_a, "min", model_b)  # via-min would be equal: θ'' = θ', one leg 0
    assert _brute_d(low, model_b) == 0.0
    d = _brute_d(model_a, model_b)
    assert d * (1 - 1e-9) <= m.upper <= d * (1 + 1e-4) and d * (1 - 1e-4) <= m.lower <= d * (1 + 1e-9)  # certified interval


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NETS), seed=st.integers(0, 10**6), rescaled=st.booleans())
def test_via_min_is_never_above_direct_on_same_sign_pairs(name: str, seed: int, rescaled: bool) -> None:
    """Per path Πhi·Πlo = |a_p|·|b_p| and Πhi ≥ max(|a_p|, |b_p|), so |a_p| + |b_p| ≤ Πhi + Πlo: the
    via-min sum never exceeds the direct bound Σ(Πhi − Πlo); on a rescaled copy it is far below."""
    rng = np.random.default_rng(seed)
    model_a, rescale_fn = tiny_nets.ALL_NETS[name](seed % 1000)
    model_b = rescale_fn(model_a, rng) if rescaled else weight_noise(model_a, rng)
    m = path_metric(model_a, model_b)
    assert m.sign_consistent and {k for k in m.routes if not k.startswith("aligned-")} == {"direct", "via-min"}
    assert m.routes["via-min"] <= m.routes["direct"] + 1e-6 and m.upper_log10 == min(m.routes.values())
    low = _with_weights(model_a, "min", model_b)
    if not rescaled:  # the intermediate model is an ONNX file only when weights and biases alone differ
        legs = _brute_d(model_a, low) + _brute_d(low, model_b)
        assert legs * (1 - 1e-9) <= 10.0 ** m.routes["via-min"] <= legs * (1 + 1e-4)  # certified: rounded outward
    assert _brute_d(model_a, model_b) <= m.upper * (1 + 1e-6)
    sample_and_search(model_a, model_b, import_model(model_a), m.upper, 1.0, rng, 10, 20)


@pytest.mark.parametrize("path", FLOAT_SHIPPED, ids=lambda p: p.name)
def test_noisy_sign_flipping_copies_of_shipped_models(path: Path, tmp_path: Path, capsys) -> None:
    model_a = onnx.load(path)
    model_b = noisy_flip(model_a, np.random.default_rng(5), 0.05)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model_a, a)
    onnx.save(model_b, b)
    for r in (0.5,) if "pruned" in path.name else (2.0,):
        rc, out, err = run_main(capsys, "compare", a, b, "--check", 60, "--input-linf", r, "--json")
        assert rc == 0, err
        res = json.loads(out)
        assert res["sign_consistent"] is False and res["route"].removeprefix("aligned-") in ("via-zero", "via-min")
        assert res["bound"] == pytest.approx(max(r, 1.0) * res["upper"], rel=1e-9)
        assert res["check"]["violated"] is False and res["check"]["searched"] == 60
        assert 0 < res["check"]["ratio"] <= 1.0
        flipped = res["flipped_per_layer"]
        assert sum(flipped.values()) == sum(v["violations"] for v in res["sign_violations"]) > 0
    rc, out, _ = run_main(capsys, "compare", a, b)
    assert rc == 0 and "certified: for every" in out and ("route via-" in out or "route aligned-via-" in out)


# ---------------------------------------------------------------------------------------------
# where the bound comes from
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_layer_shares_add_up_and_locate_the_change(name: str) -> None:
    model_a, _ = tiny_nets.ALL_NETS[name](2)
    rng = np.random.default_rng(2)
    for model_b in (noise(model_a, rng), noisy_flip(model_a, rng, 0.2)):
        m = path_metric(model_a, model_b, breakdown=True)
        parts = [10.0 ** s.log10 for s in m.shares]
        assert all(p >= 0 for p in parts) and sum(parts) == pytest.approx(10.0 ** m.estimate_log10, rel=1e-5)
    # one layer pruned: its part is the whole (exact) metric, the others' parts are 0
    weights = param_roles(model_a)[0]
    w = inits(model_a)[weights[-1]].astype(np.float64)
    w[np.random.default_rng(0).random(w.shape) < 0.5] = 0.0
    model_b = replace_inits(model_a, {weights[-1]: w})
    m = path_metric(model_a, model_b, breakdown=True)
    nonzero = [s for s in m.shares if s.log10 > -np.inf]
    assert len(nonzero) == 1 and 10.0 ** nonzero[0].log10 == pytest.approx(_brute_d(model_a, model_b), rel=1e-5)
    # named as compare names it: the pruned weight's initializer (docs/design.md, "Layer names")
    assert (nonzero[0].layer, nonzero[0].initializer) == (weights[-1], weights[-1]) and nonzero[0].op in ("conv", "dense")


def test_shares_in_cli_text_and_json(tmp_path: Path, capsys) -> None:
    a = MODELS / "digits_cnn_torch_bn.onnx"
    b = MODELS / "digits_cnn_torch_bn_pruned50.onnx"
    rc, out, err = run_main(capsys, "compare", a, b, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["route"] == "direct" and res["exact"]
    assert sum(row["fraction"] for row in res["layers"]) == pytest.approx(1.0, rel=1e-5)
    assert sum(row["value"] for row in res["layers"]) == pytest.approx(res["estimate"], rel=1e-5)
    rc, out, _ = run_main(capsys, "compare", a, b)
    assert rc == 0 and "where the weight bound comes from" in out and "%" in out


def test_check_bound_api_searches(tmp_path: Path) -> None:
    model_a = onnx.load(MODELS / "digits_mlp_sklearn.onnx")
    model_b = noisy_flip(model_a, np.random.default_rng(1), 0.1)
    dag_a, dag_b = import_model(model_a), import_model(model_b)
    m = path_metric(dag_a, dag_b)
    plain = check_bound(model_a, model_b, dag_a, dag_b, m, 1.0, 20, seed=3)
    searched = check_bound(model_a, model_b, dag_a, dag_b, m, 1.0, 20, seed=3, search=60)
    assert searched.searched == 60 and not searched.violated
    assert searched.max_observed >= plain.max_observed  # the search starts from the samples' worst


def test_layer_parts_are_skipped_beyond_the_pass_budget(monkeypatch, capsys) -> None:
    from onnx_pathlift.analyses import metric as metric_mod

    monkeypatch.setattr(metric_mod, "MAX_SHARE_PASSES", 2)
    a = MODELS / "digits_cnn_torch_bn.onnx"
    b = MODELS / "digits_cnn_torch_bn_pruned50.onnx"
    rc, out, err = run_main(capsys, "compare", a, b, "--json")
    assert rc == 0, err
    assert json.loads(out)["layers"] == []
    rc, out, _ = run_main(capsys, "compare", a, b)
    assert rc == 0 and "per-layer parts not computed" in out and "certified: for every" in out


def test_tightness_study_smoke() -> None:
    """tools/tightness_study.py on the scikit-learn MLP with small budgets: every pair certified, the
    found changes below the certificate, eq. (2) above it, the rescaled pair's eq. (2) larger still."""
    study = load_tool("tightness_study")
    rows = study.study(MODELS / "digits_mlp_sklearn.onnx", 1.0, 10, 10, 0)
    # the int8 pairs import since the head cut walks back through the Q/DQ pair after the Softmax
    assert {"pruned 50%", "fp16", "noisy + 5% flips", "rescaled", "int8 weights only", "int8 QDQ"} <= {r["pair"] for r in rows}
    for r in rows:
        assert 0 <= r["sampled"] <= r["searched"] <= r["certificate"] < r["eq2"], r
    assert all(r["eq2_rescaled"] > r["eq2"] for r in rows if "eq2_rescaled" in r)
    assert "| digits_mlp_sklearn.onnx | fp16 |" in study.markdown(rows)
