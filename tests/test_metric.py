"""Path-metrics between two models (``compare``) and input-space Lipschitz bounds (``lipschitz``).

Independent oracles used here:

* a *signed* brute-force path enumerator over the neuron DAGs that ``oracle.neuron_dag`` probes out
  of onnxruntime (union of both models' edges, a missing edge has weight 0): it gives
  ``d(θ, θ') = Σ_p |Φ_p(θ) − Φ_p(θ')|`` in float64 on the tiny nets;
* onnxruntime runs of the two ONNX files themselves (not the package's re-emission) for the theorem
  ``‖R_θ(x) − R_θ'(x)‖_1 ≤ max(‖x‖_∞, 1)·d(θ, θ')`` on shipped and zoo models;
* a float64 torch evaluator of the lifted network written from the path-lifting definitions
  (``torch_lifted.lifted_norm``), validated against the brute-force oracle on the tiny nets, for the
  light ResNet-50 where the difference of two nearly equal path-norms is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import oracle
import pytest
import tiny_nets
from builders import dropped, inits, make_model, noise, param_roles, replace_inits
from checks import Runner
from conftest import LIGHT, MODELS, run_main
from onnx import helper, numpy_helper
from oracle import neuron_signs_agree, signed_path_metric, union_dags
from torch_lifted import lifted_norm

from onnx_pathlift import import_model, path_norm
from onnx_pathlift.analyses import metric as metric_mod
from onnx_pathlift.analyses.check import check_bound
from onnx_pathlift.analyses.lipschitz import lipschitz
from onnx_pathlift.analyses.metric import MismatchError, path_metric
from onnx_pathlift.ir.dag import Dag

NETS = sorted(tiny_nets.ALL_NETS)
SHIPPED = sorted(MODELS.glob("*.onnx"))
ZOO_RELU = [
    "vnncomp2021/mnistfc/mnist-net_256x2.onnx",
    "vnncomp2021/oval21/nets/cifar_base_kw.onnx",
    "marabou/cnn_max_mninst2.onnx",
    "vnncomp2021/cifar10_resnet/onnx/resnet_2b.onnx",
    "vnncomp2021/acasxu/ACASXU_run2a_3_7_batch_2000.onnx",
]


# ---------------------------------------------------------------------------------------------
# helpers: parameters, perturbations, running models
# ---------------------------------------------------------------------------------------------


def quantize(model, mode: str = "trunc") -> onnx.ModelProto:
    """Symmetric int8-style per-tensor quantization of the Conv/Gemm/MatMul weights: ``trunc``
    rounds toward zero (so ``|θ'| ≤ |θ|``), ``nearest`` to the nearest level."""
    p = inits(model)
    weights, _, _ = param_roles(model)
    new = {}
    for n in weights:
        w = p[n].astype(np.float64)
        scale = np.abs(w).max() / 127.0
        k = np.trunc(w / scale) if mode == "trunc" else np.round(w / scale)
        new[n] = k * scale
    return replace_inits(model, new)


PERTURB = {
    "prune": lambda m, rng: dropped(m, rng, 0.3),
    "noise": lambda m, rng: noise(m, rng),
    "trunc": lambda m, rng: quantize(m, "trunc"),
}


def test_signed_enumerator_on_a_closed_form() -> None:
    """The enumerator itself: y = v·relu(w·x + b) + c, one path per parameter combination."""
    def net(w, b, v, c):
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"]),
                 helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("Gemm", ["r", "V", "C"], ["y"])]
        arrs = {"W": np.array([[w]], np.float32), "B": np.array([b], np.float32),
                "V": np.array([[v]], np.float32), "C": np.array([c], np.float32)}
        return make_model(nodes, [("x", [1, 1])], [("y", [1, 1])], arrs)

    a, b = net(0.5, -0.25, 2.0, 1.0), net(0.0, -0.5, 1.5, 0.25)
    Ga, Gb, outs, edges = union_dags(a, b)
    d, n = signed_path_metric(Ga, Gb, outs, edges)
    # paths: x→h→y: |0.5·2 − 0·1.5| = 1; b→h→y: |−0.25·2 + 0.5·1.5| = 0.25; c: |1 − 0.25| = 0.75
    assert n == 3
    assert d == pytest.approx(2.0, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# 1. brute-force oracle on the tiny nets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PERTURB))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", NETS)
def test_metric_matches_brute_force(name: str, seed: int, kind: str) -> None:
    model_a, _ = tiny_nets.ALL_NETS[name](seed)
    model_b = PERTURB[kind](model_a, np.random.default_rng(100 + seed))
    Ga, Gb, outs, edges = union_dags(model_a, model_b)
    assert neuron_signs_agree(Ga, Gb, edges), "the perturbation must keep every sign"
    d, n_paths = signed_path_metric(Ga, Gb, outs, edges)
    assert n_paths > 0 and d > 0

    m = path_metric(model_a, model_b)
    assert m.sign_consistent
    assert all(s.violations == 0 for s in m.signs)
    assert m.lower <= d * (1 + 1e-6)
    assert m.upper >= d * (1 - 1e-6)
    # the lower bound is |‖Φ(θ)‖_1 − ‖Φ(θ')‖_1|: check it against the oracle's two norms too
    na = oracle.path_norm_from_dag(Ga, outs, 1.0)
    nb = oracle.path_norm_from_dag(Gb, outs, 1.0)
    assert 10 ** m.norm_a_log10 == pytest.approx(na, rel=1e-6)
    assert 10 ** m.norm_b_log10 == pytest.approx(nb, rel=1e-6)
    # rounded inward by the certified intervals of both norms (float32 rounding budget, ~1e-4 relative here)
    assert abs(na - nb) - 1e-4 * max(na, nb) <= m.lower <= abs(na - nb) * (1 + 1e-9)
    if kind in ("prune", "trunc"):  # |θ'| ≤ |θ| coordinatewise: both bounds are d itself
        assert m.exact
        assert d * (1 - 1e-4) <= m.lower <= d * (1 + 1e-12)  # the certified interval around d, rounded outward
        assert d * (1 - 1e-12) <= m.upper <= d * (1 + 1e-4)
    d_json = m.to_dict(1.0)
    assert d_json["bound"] == pytest.approx(m.upper) and d_json["sign_violations"] == []


# ---------------------------------------------------------------------------------------------
# 2. sign changes
# ---------------------------------------------------------------------------------------------


def _flip3(model: onnx.ModelProto, rng) -> tuple[onnx.ModelProto, str]:
    """Flip the sign of 3 non-zero weights of the first Conv/Gemm/MatMul weight; also return the
    output name of the node that reads it (the DAG layer's ``source`` for unnamed nodes)."""
    weights, _, _ = param_roles(model)
    name = weights[0]
    node = next(n for n in model.graph.node if name in n.input)
    w = inits(model)[name].astype(np.float64)
    idx = rng.choice(np.flatnonzero(w), size=3, replace=False)
    w.flat[idx] *= -1
    return replace_inits(model, {name: w}), node.name or node.output[0]


@pytest.mark.parametrize("name", NETS)
def test_sign_flips_are_reported_per_layer(name: str, tmp_path: Path, capsys) -> None:
    model_a, _ = tiny_nets.ALL_NETS[name](0)
    model_b, source = _flip3(model_a, np.random.default_rng(3))
    m = path_metric(model_a, model_b)
    assert not m.sign_consistent
    bad = [s for s in m.signs if s.violations]
    flipped = param_roles(model_a)[0][0]  # the API names the layer as compare does: by its weight initializer
    assert [(s.layer, s.initializer, s.violations) for s in bad] == [(flipped, flipped, 3)]
    layers = [x for x in import_model(model_a).layers() if x.source == source]  # the DAG layers of the flipped node
    assert any(x.op in ("conv", "dense") for x in layers) and bad[0].size == sum(x.n_params for x in layers)
    # the lower bound |‖Φ‖ − ‖Φ'‖| is valid whatever the signs (triangle inequality)
    Ga, Gb, outs, edges = union_dags(model_a, model_b)
    assert not neuron_signs_agree(Ga, Gb, edges)
    d, _ = signed_path_metric(Ga, Gb, outs, edges)
    assert d > 0 and m.lower <= d * (1 + 1e-6)

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model_a, a)
    onnx.save(model_b, b)
    rc, out, err = run_main(capsys, "compare", a, b, "--json")
    assert rc == 0, err
    res = json.loads(out)
    # certified through an intermediate model (tests/test_certify.py checks the routes)
    assert res["bound"] == pytest.approx(res["upper"], rel=1e-9) and res["route"].removeprefix("aligned-") in ("via-zero", "via-min")
    assert res["sign_consistent"] is False and d <= res["upper"] * (1 + 1e-6)
    assert [(v["layer"], v["initializer"], v["violations"]) for v in res["sign_violations"]] == [(flipped, flipped, 3)]
    assert res["sign_violations"][0]["onnx_node"] == next(n.name for n in model_a.graph.node if flipped in n.input)
    assert "lower" in res and "upper" in res  # the metric bounds are still printed
    rc, out, _ = run_main(capsys, "compare", a, b)
    assert rc == 0 and "change sign" in out and f"{flipped!r}: 3 of" in out and "certified: for every" in out


def test_exact_is_never_claimed_across_sign_changes() -> None:
    model_a, _ = tiny_nets.mlp(0)
    model_b, _ = _flip3(model_a, np.random.default_rng(3))
    Ga, Gb, outs, edges = union_dags(model_a, model_b)
    d, _ = signed_path_metric(Ga, Gb, outs, edges)
    m = path_metric(model_a, model_b)
    assert not m.sign_consistent
    assert not m.exact or m.lower == pytest.approx(d, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. the theorem on shipped and zoo models
# ---------------------------------------------------------------------------------------------


def _pairs(model: onnx.ModelProto, seed: int) -> list[tuple[str, onnx.ModelProto]]:
    rng = np.random.default_rng(seed)
    return [
        ("prune10", dropped(model, rng, 0.1)),
        ("prune90", dropped(model, rng, 0.9)),
        (f"prune{int(100 * (f := rng.uniform(0.1, 0.9)))}", dropped(model, rng, f)),
        ("noise", noise(model, rng, everything=False)),
        ("quant_nearest", quantize(model, "nearest")),
        ("quant_trunc", quantize(model, "trunc")),
    ]


def _direct_check(model_a, model_b, dag, upper: float, samples: int, rng) -> tuple[int, float]:
    """Run the two ONNX files themselves; every sample must satisfy the theorem. Returns the number
    of samples and the largest ratio observed/bound."""
    names = list(dag.outputs)
    run_a, run_b = Runner(model_a, names), Runner(model_b, names)
    worst = 0.0
    for k in range(samples):
        r = (0.5, 1.0, 3.0)[k % 3] * (1.0 if k % 5 else rng.uniform(0.1, 4.0))
        feeds = {}
        for name in dag.inputs:
            shape = dag.layer(name).shape
            x = rng.uniform(-r, r, shape) if k % 2 else r * rng.choice([-1.0, 1.0], shape)
            feeds[name] = x.astype(np.float32)
        xinf = max(float(np.abs(v).max()) for v in feeds.values())
        ya, yb = run_a(feeds), run_b(feeds)
        bound = max(xinf, 1.0) * upper
        diff = float(np.abs(ya - yb).sum())
        slack = 1e-6 * bound + 1e-5 * (np.abs(ya).sum() + np.abs(yb).sum()) / 2  # float32 runs
        assert diff <= bound + slack, f"sample {k}: ‖ΔR‖_1 = {diff} > {bound} (‖x‖_∞ = {xinf})"
        worst = max(worst, diff / bound if bound else 0.0)
    return samples, worst


def _theorem(model_a: onnx.ModelProto, seed: int, samples: int) -> int:
    dag_a = import_model(model_a)
    total = 0
    for tag, model_b in _pairs(model_a, seed):
        dag_b = import_model(model_b)
        m = path_metric(dag_a, dag_b)
        assert m.sign_consistent, tag
        assert 0 <= m.lower <= m.upper * (1 + 1e-9) and m.upper > 0, tag
        if tag.startswith("prune") or tag == "quant_trunc":
            assert m.exact, tag
        for r in (0.5, 1.0, 3.0):
            rep = check_bound(model_a, model_b, dag_a, dag_b, m, r, samples // 3, seed=seed + int(10 * r))
            assert rep.samples == samples // 3
            assert not rep.violated, (tag, r, rep)
            assert rep.bound == pytest.approx(max(r, 1.0) * m.upper, rel=1e-9)
            assert rep.ratio is not None and rep.ratio <= 1.0, (tag, r, rep)
            total += rep.samples
        n, _ = _direct_check(model_a, model_b, dag_a, m.upper, samples, np.random.default_rng(seed))
        total += n
    return total


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_theorem_on_shipped_models(path: Path) -> None:
    model = onnx.load(path)
    if not param_roles(model)[0]:
        pytest.skip("its weights are produced by other nodes (e.g. DequantizeLinear), not initializers")
    assert _theorem(model, 7, 150) >= 1500


@pytest.mark.slow
def test_theorem_on_zoo_models(zoo: Path) -> None:
    total = 0
    for rel in ZOO_RELU:
        model = onnx.load(zoo / rel)
        assert param_roles(model)[0], rel
        total += _theorem(model, 11, 90)
    assert total >= 5000


@pytest.mark.parametrize("name", NETS)
def test_theorem_on_tiny_nets(name: str) -> None:
    model, _ = tiny_nets.ALL_NETS[name](6)
    assert _theorem(model, 3, 60) >= 600


@pytest.mark.parametrize("r", [0.5, 1.0, 3.0])
def test_theorem_is_tight_on_one_dense_layer(r: float) -> None:
    """y = W x + b (one output): at the corner x = max(r,1)·sign(W − W') the change is exactly
    max(r,1)·Σ|ΔW| + |Δb| — equal to the bound max(r,1)·d at r ≤ 1. So a bound 1e-5 too small fails."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(1, 7)), rng.normal(size=1)
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)]
    a = make_model(nodes, [("x", [1, 7])], [("y", [1, 1])], {"W": w.astype(np.float32), "B": b.astype(np.float32)})
    bm = noise(a, rng)
    m = path_metric(a, bm)
    assert m.sign_consistent and not m.exact
    dw = (inits(a)["W"].astype(np.float64) - inits(bm)["W"])
    db = float(inits(a)["B"][0]) - float(inits(bm)["B"][0])
    rho = max(r, 1.0)
    x = (rho * np.sign(dw)).astype(np.float32)
    observed = float(np.abs(Runner(a, ["y"])({"x": x}) - Runner(bm, ["y"])({"x": x})).sum())
    assert observed == pytest.approx(rho * np.abs(dw).sum() + abs(db), rel=1e-5)
    assert observed <= rho * m.upper * (1 + 1e-6)
    if r <= 1:
        assert observed == pytest.approx(rho * m.upper, rel=1e-5)  # tight
    rep = check_bound(a, bm, import_model(a), import_model(bm), m, r, 300)
    assert not rep.violated and 0.3 < rep.ratio <= 1.0


@pytest.mark.parametrize("r", [0.5, 1.0, 3.0])
def test_compare_check_cli(r: float, tmp_path: Path, capsys) -> None:
    model_a = onnx.load(MODELS / "digits_cnn_torch_bn.onnx")
    model_b = noise(dropped(model_a, np.random.default_rng(1), 0.5), np.random.default_rng(2))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model_a, a)
    onnx.save(model_b, b)
    rc, out, err = run_main(capsys, "compare", a, b, "--check", 200, "--input-linf", r, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["sign_consistent"] and res["input_linf"] == r
    assert res["bound"] == pytest.approx(max(r, 1.0) * res["upper"], rel=1e-9)
    assert res["check"]["samples"] == 200 and res["check"]["violated"] is False
    assert 0 < res["check"]["ratio"] <= 1.0


# ---------------------------------------------------------------------------------------------
# 4. the check can fail: exit 5
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def pruned_pair(tmp_path: Path) -> tuple[Path, Path]:
    model_a = onnx.load(MODELS / "digits_mlp_sklearn.onnx")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model_a, a)
    onnx.save(dropped(model_a, np.random.default_rng(0), 0.5), b)
    return a, b


def _shrunk_metric(monkeypatch) -> None:
    real = metric_mod.path_metric

    def too_small(*args, **kwargs):
        m = real(*args, **kwargs)
        return dataclasses.replace(m, lower_log10=m.lower_log10 - 12, upper_log10=m.upper_log10 - 12)

    monkeypatch.setattr(metric_mod, "path_metric", too_small)


def test_check_detects_a_too_small_bound_exit_5(pruned_pair, monkeypatch, capsys) -> None:
    a, b = pruned_pair
    rc, _, err = run_main(capsys, "compare", a, b, "--check", 50)
    assert rc == 0, err  # the honest bound holds
    _shrunk_metric(monkeypatch)
    rc, out, err = run_main(capsys, "compare", a, b, "--check", 50)
    assert rc == 5
    assert "EXCEEDS the certified bound" in err and "bug" in err
    assert "check: largest observed" in out


def test_check_bound_api_flags_violation(pruned_pair) -> None:
    a, b = (onnx.load(p) for p in pruned_pair)
    dag_a, dag_b = import_model(a), import_model(b)
    m = path_metric(dag_a, dag_b)
    small = dataclasses.replace(m, upper_log10=m.upper_log10 - 12, lower_log10=m.lower_log10 - 12)
    rep = check_bound(a, b, dag_a, dag_b, small, 1.0, 40)
    assert rep.violated and rep.ratio > 1.0 and rep.max_observed > rep.bound
    ok = check_bound(a, b, dag_a, dag_b, m, 1.0, 40)
    assert not ok.violated and ok.max_observed == pytest.approx(rep.max_observed)


def test_check_violation_json_is_one_object(pruned_pair, monkeypatch, capsys) -> None:
    a, b = pruned_pair
    _shrunk_metric(monkeypatch)
    rc, out, _ = run_main(capsys, "compare", a, b, "--check", 50, "--json")
    assert rc == 5
    res = json.loads(out)  # one JSON object, as --json promises
    assert "EXCEEDS" in json.dumps(res)


def _no_constants(name):
    raise ValueError(f"not strict JSON: {name}")


def test_self_compare_check_is_clean(capsys) -> None:
    a = MODELS / "digits_cnn_torch_bn.onnx"
    rc, out, err = run_main(capsys, "compare", a, a, "--check", 20, "--json")
    assert rc == 0, err
    res = json.loads(out, parse_constant=_no_constants)
    assert res["upper"] == 0.0 and res["check"]["ratio"] in (0.0, None)


# ---------------------------------------------------------------------------------------------
# 5. tiny perturbation of a big model: two-stream accuracy against a float64 torch oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_torch_oracle_matches_brute_force(name: str) -> None:
    """The float64 torch evaluator is itself an oracle: check it on every tiny net."""
    model, _ = tiny_nets.ALL_NETS[name](3)
    assert lifted_norm(import_model(model)) == pytest.approx(oracle.brute_force_path_norm(model, 1.0), rel=1e-6)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_torch_oracle_matches_path_norm_on_shipped(path: Path) -> None:
    dag = import_model(path)
    assert lifted_norm(dag) == pytest.approx(path_norm(dag).value, rel=1e-5)


def _zero_one_weight(dag: Dag, layer_name: str, index: int) -> Dag:
    """A copy of ``dag`` whose layer ``layer_name`` has weight ``W.flat[index]`` set to 0."""
    out = Dag(opset=dag.opset, inputs=list(dag.inputs), outputs=dict(dag.outputs), notes=list(dag.notes))
    for layer in dag.layers():
        if layer.name == layer_name:
            w = layer.params["W"].copy()
            assert w.flat[index] != 0
            w.flat[index] = 0.0
            layer = dataclasses.replace(layer, params={**layer.params, "W": w})
        out.add(layer)
    return out


@pytest.mark.slow
def test_one_zeroed_weight_in_light_resnet50() -> None:
    """``upper`` (= d, exact) against the float64 difference ‖Φ(θ)‖_1 − ‖Φ(θ')‖_1; the naive float32
    difference of two path_norm values cannot resolve it (the change is ~1e-7 of the norm)."""
    pytest.importorskip("torch")
    path = LIGHT / "light_resnet50.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not in this onnx wheel")
    dag_a = import_model(path)
    convs = [layer for layer in dag_a.layers() if layer.op == "conv"]
    target = convs[len(convs) // 2]
    dag_b = _zero_one_weight(dag_a, target.name, 17)
    ref_a, ref_b = lifted_norm(dag_a), lifted_norm(dag_b)
    ref = ref_a - ref_b  # float64: the change is ~1e-7 of the norm, so ~1e-9 relative error at worst
    assert ref > 0 and ref / ref_a < 1e-5
    m = path_metric(dag_a, dag_b)
    assert m.exact and m.sign_consistent
    assert 10 ** m.estimate_log10 == pytest.approx(ref, rel=1e-4)
    assert ref * (1 - 1e-9) <= m.upper <= ref * 1.01  # certified: rounded outward by the float32 budget
    assert ref * 0.99 <= m.lower <= ref * (1 + 1e-9)
    assert 10 ** m.norm_a_log10 == pytest.approx(ref_a, rel=1e-4)
    assert 10 ** m.norm_b_log10 == pytest.approx(ref_b, rel=1e-4)
    # the two path_norm values path_metric computed (float32 lifted passes): their difference is noise
    naive = 10 ** m.norm_a_log10 - 10 ** m.norm_b_log10
    assert abs(naive - ref) > 1e-2 * ref, "naive float32 difference unexpectedly accurate"


def _deep_conv_net(seed: int, layers: int = 20, c: int = 16, hw: int = 16) -> onnx.ModelProto:
    """``layers`` × (conv3x3 + BN + ReLU) on a 16-channel 16×16 map with one residual Add, then GAP + Gemm."""
    rng = np.random.default_rng(seed)
    nodes, arrs, x = [], {}, "x"
    arrs["W0"] = rng.normal(0, 0.5, (c, 1, 3, 3))
    nodes.append(helper.make_node("Conv", ["x", "W0"], ["h0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    x = "h0"
    skip = None
    for i in range(1, layers + 1):
        arrs[f"W{i}"] = rng.normal(0, 1.0 / np.sqrt(9 * c), (c, c, 3, 3))
        arrs[f"g{i}"], arrs[f"be{i}"] = rng.uniform(0.5, 1.5, c), rng.normal(0.1, 0.3, c)
        arrs[f"mu{i}"], arrs[f"var{i}"] = rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)
        nodes += [helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"be{i}", f"mu{i}", f"var{i}"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"])]
        x = f"r{i}"
        if i == 5:
            skip = x
        if i == 15:
            nodes.append(helper.make_node("Add", [x, skip], ["res"]))
            x = "res"
    arrs["Wf"], arrs["bf"] = rng.normal(0, 0.3, (10, c)), rng.normal(0, 0.1, 10)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["f"]),
              helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, [("x", [1, 1, hw, hw])], [("y", [1, 10])],
                      {k: np.asarray(v, np.float32) for k, v in arrs.items()})


def test_one_zeroed_weight_in_a_deep_residual_conv_net() -> None:
    pytest.importorskip("torch")
    model_a = _deep_conv_net(0)
    w = inits(model_a)["W10"].copy()
    w.flat[5] = 0.0
    model_b = replace_inits(model_a, {"W10": w})
    dag_a, dag_b = import_model(model_a), import_model(model_b)
    ref_a, ref_b = lifted_norm(dag_a), lifted_norm(dag_b)
    ref = ref_a - ref_b
    assert ref > 0
    m = path_metric(model_a, model_b)
    assert m.exact and m.sign_consistent
    assert 10 ** m.estimate_log10 == pytest.approx(ref, rel=1e-4)
    assert ref * (1 - 1e-9) <= m.upper <= ref * 1.01  # certified: rounded outward by the float32 budget


# ---------------------------------------------------------------------------------------------
# 6. rescaling invariance of the metric
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prune", "noise"])
@pytest.mark.parametrize("name", NETS)
def test_metric_is_invariant_under_a_common_rescaling(name: str, kind: str) -> None:
    model_a, rescale = tiny_nets.ALL_NETS[name](4)
    model_b = PERTURB[kind](model_a, np.random.default_rng(5))
    ra, rb = rescale(model_a, np.random.default_rng(9)), rescale(model_b, np.random.default_rng(9))
    # the same seed draws the same λ: every parameter is multiplied by the same factor in A and B
    pa, pb, qa, qb = (inits(m, np.float64) for m in (model_a, model_b, ra, rb))
    changed = 0
    for k in pa:
        ok = (pa[k] != 0) & (pb[k] != 0)
        np.testing.assert_allclose(qa[k][ok] / pa[k][ok], qb[k][ok] / pb[k][ok], rtol=1e-6)
        changed += int(np.any(np.abs(qa[k][ok] / pa[k][ok] - 1) > 1e-3))
    assert changed > 0
    m0, m1 = path_metric(model_a, model_b), path_metric(ra, rb)
    assert (m1.exact, m1.sign_consistent) == (m0.exact, m0.sign_consistent)
    assert m1.upper == pytest.approx(m0.upper, rel=1e-6)
    if m0.exact:
        assert m1.lower == pytest.approx(m0.lower, rel=1e-6)
    else:  # lower = |‖Φ(θ)‖ − ‖Φ(θ')‖| of two float32-accurate norms: accurate relative to the norms only
        scale = 10 ** max(m0.norm_a_log10, m0.norm_b_log10)
        assert m1.lower == pytest.approx(m0.lower, rel=1e-6, abs=1e-6 * scale)
    # and the neuron-level path-lifting agrees: same brute-force metric
    d0 = signed_path_metric(*union_dags(model_a, model_b))[0]
    d1 = signed_path_metric(*union_dags(ra, rb))[0]
    assert d1 == pytest.approx(d0, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# 7. architectures that differ
# ---------------------------------------------------------------------------------------------


def _mlp3(hidden: int, relu: bool = True, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    arrs = {"W1": rng.normal(size=(hidden, 6)), "b1": rng.normal(size=hidden),
            "W2": rng.normal(size=(5, hidden)), "b2": rng.normal(size=5),
            "W3": rng.normal(size=(3, 5)), "b3": rng.normal(size=3)}
    act = "Relu" if relu else "Identity"
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1, name="fc1"),
             helper.make_node(act, ["h1"], ["r1"], name="act1"),
             helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"], transB=1, name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="act2"),
             helper.make_node("Gemm", ["r2", "W3", "b3"], ["y"], transB=1, name="fc3")]
    return make_model(nodes, [("x", [1, 6])], [("y", [1, 3])], {k: v.astype(np.float32) for k, v in arrs.items()})


def test_mismatch_names_the_first_differing_layer(tmp_path: Path, capsys) -> None:
    a, b = _mlp3(8), _mlp3(9)
    with pytest.raises(MismatchError) as info:
        path_metric(a, b)
    msg = str(info.value)
    assert "'fc2'" in msg and "fc1" not in msg and "fc3" not in msg
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(a, pa)
    onnx.save(b, pb)
    rc, _, err = run_main(capsys, "compare", pa, pb)
    assert rc == 2 and "fc2" in err
    rc, out, _ = run_main(capsys, "compare", pa, pb, "--json")
    res = json.loads(out)
    assert rc == 2 and res["exit_code"] == 2 and res["error"] == "MismatchError" and "fc2" in res["message"]
    # different ops at the same position, and a different number of outputs
    c = _mlp3(8)
    c.graph.node[2].op_type = "MatMul"
    del c.graph.node[2].attribute[:]
    del c.graph.node[2].input[2:]
    c.graph.initializer[2].CopyFrom(numpy_helper.from_array(inits(a)["W2"].T.copy(), "W2"))
    with pytest.raises(MismatchError, match="fc2"):
        path_metric(a, c)
    # unnamed nodes: each model's layer by its weight initializer (the DAG's own name was the output 'y')
    with pytest.raises(MismatchError, match=r"A's affine 'B2' does not match B's affine 'b2': output shape \(1, 3\) vs \(1, 2, 3, 3\)"):
        path_metric(tiny_nets.mlp(0)[0], tiny_nets.matmul_net(0)[0])


def test_a_missing_relu_is_not_certified(tmp_path: Path, capsys) -> None:
    a, b = _mlp3(8, relu=True), _mlp3(8, relu=False)
    names = ["y"]
    x = {"x": np.random.default_rng(0).uniform(-1, 1, (1, 6)).astype(np.float32)}
    assert np.abs(Runner(a, names)(x) - Runner(b, names)(x)).sum() > 0.1  # they really differ
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(a, pa)
    onnx.save(b, pb)
    rc, out, _ = run_main(capsys, "compare", pa, pb, "--json")
    res = json.loads(out)
    assert rc == 2 or res["bound"] is None or res["bound"] > 0.1


# ---------------------------------------------------------------------------------------------
# 8. the input-space Lipschitz bound
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_lipschitz_matches_brute_force_and_holds(name: str) -> None:
    model, _ = tiny_nets.ALL_NETS[name](2)
    lip = lipschitz(model)
    want = oracle.brute_force_path_norm_inputs_only(model, 1.0)
    assert 10 ** lip.estimate_log10 == pytest.approx(want, rel=1e-6)
    assert want * (1 - 1e-12) <= 10 ** lip.path_norm_log10 <= want * (1 + 1e-3)  # certified: rounded outward
    if not any(n.op_type == "MaxPool" for n in model.graph.node):
        # Π ℓ∞ norms × n_out bounds 1ᵀ|W_L|…|W_1|1; a max-pool breaks this (see the counterexample below)
        assert lip.naive_log10 >= lip.path_norm_log10 - 1e-9
    dag = import_model(model)
    run = Runner(model, list(dag.outputs))
    rng = np.random.default_rng(8)
    name_in = dag.inputs[0]
    shape = dag.layer(name_in).shape
    L = 10 ** lip.path_norm_log10
    worst = 0.0
    for k in range(200):
        x = rng.normal(0, 2.0, shape).astype(np.float32)
        step = (10.0 ** rng.uniform(-3, 0.5))
        x2 = (x + (rng.uniform(-step, step, shape) if k % 2 else step * rng.choice([-1, 1], shape))).astype(np.float32)
        lhs = float(np.abs(run({name_in: x}) - run({name_in: x2})).sum())
        rhs = L * float(np.abs(x2.astype(np.float64) - x).max())
        assert lhs <= rhs * (1 + 1e-5) + 1e-6
        worst = max(worst, lhs / rhs)
    assert worst > 1e-3  # the samples are not vacuous


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_lipschitz_on_shipped_models(path: Path, capsys) -> None:
    lip = lipschitz(path)
    assert math.isfinite(lip.path_norm_log10) and lip.naive_log10 >= lip.path_norm_log10
    d = lip.to_dict()
    assert d["naive_over_bound_log10"] == pytest.approx(lip.naive_log10 - lip.path_norm_log10)
    rc, out, err = run_main(capsys, "lipschitz", path, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert set(res) == {"model", "bound", "bound_log10", "naive", "naive_log10", "naive_over_bound_log10", "estimate_log10",
                        "value", "log10", "lower_log10", "upper_log10", "upper", "certified"}  # norm's interval fields
    assert res["bound_log10"] == pytest.approx(lip.path_norm_log10, rel=1e-9) and res["upper_log10"] == res["bound_log10"]
    assert res["certified"] and res["lower_log10"] <= res["log10"] <= res["upper_log10"] and res["log10"] == res["estimate_log10"]
    assert res["bound"] == pytest.approx(10 ** lip.path_norm_log10, rel=1e-9)
    assert res["naive_log10"] == pytest.approx(lip.naive_log10, rel=1e-9)
    # the bound is the input-only path-norm: smaller than the full one (biases start paths too)
    assert lip.path_norm_log10 < path_norm(path).log10


def test_naive_bound_can_be_below_the_path_norm_with_max_pooling() -> None:
    """Not a bug, a caveat: max-pooling is 1-Lipschitz in ℓ∞ (naive factor 1) but its lifted form is
    a sum over the window (K paths), so ``naive ≥ path-norm`` fails on a net that is mostly pooling.
    Both are valid bounds: check that sampled pairs respect both."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["m"], ["y"])]
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("y", [1, 16])], {"W": np.ones((1, 1, 1, 1), np.float32)})
    lip = lipschitz(model)
    assert 10 ** lip.estimate_log10 == pytest.approx(oracle.brute_force_path_norm_inputs_only(model, 1.0), rel=1e-6)
    assert 10 ** lip.naive_log10 == pytest.approx(16.0)
    # Σ over the 16 outputs of their window sizes: 4 corners × 4 + 8 edges × 6 + 4 interior × 9
    assert 10 ** lip.estimate_log10 == pytest.approx(4 * 4 + 8 * 6 + 4 * 9, rel=1e-6)
    assert 100 <= 10 ** lip.path_norm_log10 <= 100 * (1 + 1e-4)
    assert lip.naive_log10 < lip.path_norm_log10  # the counterexample
    run = Runner(model, ["y"])
    rng = np.random.default_rng(0)
    for _ in range(100):
        x = rng.normal(size=(1, 1, 4, 4)).astype(np.float32)
        x2 = (x + rng.uniform(-1, 1, x.shape)).astype(np.float32)
        lhs = float(np.abs(run({"x": x}) - run({"x": x2})).sum())
        assert lhs <= 10 ** lip.naive_log10 * float(np.abs(x2 - x).max()) * (1 + 1e-5)
