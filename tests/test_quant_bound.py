"""The activation-quantization term: ‖B(x) − F(x)‖_1 ≤ Σ_v b(v)·ε(v) on the box (docs/metrics.md).

Oracles: the brute-force path enumerator of ``tests/oracle.py`` (b(v) = Σ over paths from v to the
outputs of Π|w|, on neuron DAGs probed out of onnxruntime); a numpy implementation of ONNX's
QuantizeLinear (round half to even, saturate) evaluated on a dense grid for ε; and the QDQ models
made by onnxruntime's own ``quantize_static``, run as ONNX files by onnxruntime on sampled inputs and
on a coordinate-ascent search of the box, against the total certificate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import oracle
import pytest
import tiny_nets
from builders import make_model, noisy_flip, param_roles, qdq
from checks import Runner, sample_and_search
from conftest import MODELS, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_pathlift import import_model
from onnx_pathlift.analyses.check import check_bound
from onnx_pathlift.analyses.metric import pair_layers, path_metric
from onnx_pathlift.analyses.quant_bound import _Point, activation_bound, backward_sum, certify, epsilon
from onnx_pathlift.ir.dag import ActivationQuantizer
from onnx_pathlift.rewrite.transforms import with_params_of

NETS = sorted(tiny_nets.ALL_NETS)
DIGITS = np.load(MODELS / "digits_test.npz")["x"]


def _random_calibration(model: onnx.ModelProto, rng, n: int = 16, r: float = 1.0) -> list[dict]:
    dag = import_model(model)
    return [{i: rng.uniform(-r, r, dag.layer(i).shape).astype(np.float32) for i in dag.inputs} for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# the two ingredients against independent oracles
# ---------------------------------------------------------------------------------------------


def _brute_backward(G, outputs, v) -> float:
    """Σ over paths from neuron v to the outputs of Π|w| (explicit enumeration)."""
    out_set, total, stack = set(outputs), [], [(v, 1.0)]
    while stack:
        u, p = stack.pop()
        if u in out_set:
            total.append(p)
        stack.extend((w, p * abs(d["w"])) for w, d in G.succ[u].items())
    return math.fsum(total)


@pytest.mark.parametrize("name", NETS)
def test_backward_sum_matches_brute_force(name: str) -> None:
    model, _ = tiny_nets.ALL_NETS[name](1)
    dag = import_model(model)
    G, outputs = oracle.neuron_dag(model)
    tensors = {t for _, t in G.nodes(data="tensor")}
    candidates = [layer.name for layer in dag.layers() if layer.name in tensors]
    rng = np.random.default_rng(1)
    chosen = list(rng.choice(candidates, size=min(3, len(candidates)), replace=False))
    eps = {n: rng.uniform(0.1, 2.0, dag.layer(n).shape) for n in chosen}
    expected = math.fsum(float(e.ravel()[i]) * _brute_backward(G, outputs, (n, i))
                         for n, e in eps.items() for i in range(e.size))
    assert expected > 0
    assert expected * (1 - 1e-9) <= 10.0 ** backward_sum(dag, eps) <= expected * (1 + 1e-4)  # certified: rounded outward


def _onnx_qdq(u: np.ndarray, s: float, zp: int, lo: int, hi: int) -> np.ndarray:
    """ONNX QuantizeLinear→DequantizeLinear in float64: round half to even, saturate."""
    return (np.clip(np.round(u / s) + zp, lo, hi) - zp) * s


@pytest.mark.parametrize("zp,lo,hi,relu,nonneg", [(-128, -128, 127, True, False), (-128, -128, 127, False, True),
                                                  (-128, -128, 127, False, False), (5, -128, 127, False, False),
                                                  (0, 0, 255, True, False), (17, 0, 255, False, False)])
@pytest.mark.parametrize("mass", [0.3, 4.0, 40.0])
def test_epsilon_bounds_the_quantization_error_on_a_grid(zp: int, lo: int, hi: int, relu: bool, nonneg: bool, mass: float) -> None:
    s = 0.037
    q = ActivationQuantizer("q", "u", "y", np.array(s), np.array(float(zp)), lo, hi, 1, True)
    eps = epsilon(_Point("u", relu, q), np.array([mass]), nonneg, (1,))[0]
    u = np.linspace(0.0 if nonneg else -mass, mass, 200_001)
    ref = np.maximum(u, 0.0) if relu else u
    err = np.abs(_onnx_qdq(u, s, zp, lo, hi) - ref)
    assert err.max() <= eps
    assert err.max() >= 0.9 * min(eps, mass)  # not vacuous: the bound is attained up to the grid (or ≤ |u|)


# ---------------------------------------------------------------------------------------------
# QDQ models made by onnxruntime's quantizer
# ---------------------------------------------------------------------------------------------


def _total_holds(model_a, model_b, r: float, seed: int) -> tuple[float, float]:
    """The total certificate of (A, B as shipped) on sampled and searched inputs of the ONNX files;
    returns (bound, largest change)."""
    dag_a, dag_b = import_model(model_a), import_model(model_b)
    m = path_metric(dag_a, dag_b)
    cert = certify(dag_a, dag_b, m.bound_log10(r), r)
    assert cert.activation.term is not None, cert.activation.reason
    assert cert.total == pytest.approx(max(r, 1.0) * m.upper + cert.activation.term, rel=1e-9)
    worst = sample_and_search(model_a, model_b, dag_a, cert.total, r, np.random.default_rng(seed), 30, 90)
    rep = check_bound(model_a, model_b, dag_a, dag_b, m, r, 20, seed=seed, search=40, activation=cert.activation.term)
    assert not rep.violated and rep.shipped_ratio is not None and rep.shipped_ratio <= 1.0
    assert rep.ratio is not None and rep.ratio <= 1.0  # B's int8 weights in A's float architecture
    return cert.total, max(worst, rep.shipped_max_observed)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("act", ["QInt8", "QUInt8"])
def test_qdq_tiny_nets_never_exceed_the_total_certificate(name: str, act: str, tmp_path: Path) -> None:
    model, _ = tiny_nets.ALL_NETS[name](2)
    rng = np.random.default_rng(2)
    quantized = qdq(model, tmp_path, _random_calibration(model, rng, r=0.5), act, per_channel=False)
    dag = import_model(quantized)
    assert dag.quantizers and len(dag.quantizers) == dag.activation_qdq
    for r in (0.5, 2.0):
        bound, worst = _total_holds(model, quantized, r, seed=int(10 * r))
        assert 0 < worst <= bound


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NETS), seed=st.integers(0, 10**6), act=st.sampled_from(["QInt8", "QUInt8"]),
       calib=st.sampled_from([0.1, 0.5, 2.0]), r=st.sampled_from([0.25, 1.0, 3.0]))
def test_qdq_random_nets_hypothesis(name: str, seed: int, act: str, calib: float, r: float, tmp_path: Path) -> None:
    """Random tiny nets, calibrated on a box smaller or larger than the certified one (clipping or not)."""
    model, _ = tiny_nets.ALL_NETS[name](seed % 1000)
    rng = np.random.default_rng(seed)
    quantized = qdq(model, tmp_path, _random_calibration(model, rng, 8, calib), act, per_channel=False)
    dag_a, dag_b = import_model(model), import_model(quantized)
    cert = certify(dag_a, dag_b, path_metric(dag_a, dag_b).bound_log10(r), r)
    if cert.activation.term is None:
        # onnxruntime's quantizer drops a ReLU even where its range keeps negative values (zero point
        # not q_min, e.g. a ReLU that was always 0 on the calibration data): B has no ReLU there, the
        # architectures differ, and the certificate must say so rather than certify
        assert "is in one model only and is not a quantizer's" in cert.activation.reason
        relus = {n.output[0] for n in quantized.graph.node if n.op_type == "Relu"}
        assert any(n.op_type == "Relu" and n.output[0] not in relus for n in model.graph.node)
        return
    bound, worst = _total_holds(model, quantized, r, seed=seed % 97)
    assert 0 <= worst <= bound


def _digits_calibration(model: onnx.ModelProto) -> list[dict]:
    dag = import_model(model)
    (name,) = dag.inputs
    return [{name: DIGITS[i].reshape(dag.layer(name).shape).astype(np.float32)} for i in range(60)]


# the sklearn MLP's quantized copy puts a Q/DQ pair before its Softmax head, which the importer then refuses
FLOAT_SHIPPED = [p for p in sorted(MODELS.glob("*.onnx")) if param_roles(onnx.load(p))[0] and "sklearn" not in p.name]


@pytest.mark.parametrize("path", FLOAT_SHIPPED, ids=lambda p: p.name)
def test_qdq_copies_of_shipped_models(path: Path, tmp_path: Path) -> None:
    model = onnx.load(path)
    quantized = qdq(model, tmp_path, _digits_calibration(model))
    for r in (1.0, 2.0):
        _total_holds(model, quantized, r, seed=3)
    # int8 weights only: the quantized weights in the float architecture (what check_bound's
    # max_observed measures against the weight term, inside _total_holds): no activation term
    dag_a, dag_b = import_model(model), import_model(quantized)
    dag_w = with_params_of(dag_a, dag_b, pair_layers(dag_a, dag_b))
    m = path_metric(dag_a, dag_w)
    cert = certify(dag_a, dag_w, m.bound_log10(1.0), 1.0)
    assert not dag_w.quantizers and cert.activation.term == 0.0 and cert.total == pytest.approx(m.upper, rel=1e-12)
    rep = check_bound(model, None, dag_a, dag_w, m, 1.0, 30, search=60)
    assert not rep.violated and 0 < rep.ratio <= 1.0


def test_shipped_int8_pair_cli(capsys) -> None:
    a, b = MODELS / "digits_cnn_torch_bn.onnx", MODELS / "digits_cnn_torch_bn_int8.onnx"
    rc, out, err = run_main(capsys, "compare", a, b, "--check", 100, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["activation"]["certified"] and res["activation"]["quantized_points"] == 13
    parts = [p["term"] for p in res["activation"]["points"]]
    assert len(parts) == 13 and min(parts) > 0 and sum(parts) == pytest.approx(res["activation_term"], rel=1e-4)
    assert res["bound"] == pytest.approx(res["weight_term"] + res["activation_term"], rel=1e-12)
    assert res["weight_term"] == pytest.approx(res["upper"], rel=1e-9) and res["input_linf"] == 1.0
    on = {p["node"]: p["layer"] for p in res["activation"]["points"]}  # the layer of A each quantizes, by layer name
    assert (on["input_QuantizeLinear"], on["/stem/stem.0/Conv_output_0_QuantizeLinear"], on["logits_QuantizeLinear"]) == (
        "input", "stem.0.weight", "head.4.weight") and on["/stem/stem.2/Relu_output_0_QuantizeLinear"] == "/stem/stem.2/Relu"
    check = res["check"]
    assert not check["violated"] and 0 < check["shipped_max_observed"] <= check["shipped_bound"] == res["bound"]
    rc, out, _ = run_main(capsys, "compare", a, b)
    assert rc == 0 and "activation term" in out and "(models as shipped)" in out
    assert "where the activation term comes from" in out and "'input_QuantizeLinear' on 'input': " in out
    # the other way round: A quantized, B float (the float architecture drops the ReLUs A's quantizers
    # fold in, e.g. at its input): the same certificate
    rc, out, err = run_main(capsys, "compare", b, a, "--check", 30, "--json")
    assert rc == 0, err
    back = json.loads(out)
    assert back["activation"]["certified"] and not back["check"]["violated"]
    assert back["bound"] == pytest.approx(res["bound"], rel=1e-6)


def test_quantized_and_sign_flipped_pair(tmp_path: Path, capsys) -> None:
    """A noisy sign-flipping copy, then quantized: both extensions at once."""
    model = onnx.load(MODELS / "digits_cnn_torch_bn.onnx")
    flipped = noisy_flip(model, np.random.default_rng(8), 0.05)
    quantized = qdq(flipped, tmp_path, _digits_calibration(flipped))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model, a)
    onnx.save(quantized, b)
    rc, out, err = run_main(capsys, "compare", a, b, "--check", 60, "--input-linf", 0.5, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["route"].removeprefix("aligned-").startswith("via-") and res["activation"]["certified"] and not res["check"]["violated"]


def test_activation_bound_refuses_an_unplaceable_quantizer() -> None:
    dag_a = import_model(MODELS / "digits_cnn_torch_bn.onnx")
    dag_b = import_model(MODELS / "digits_cnn_torch_bn_int8.onnx")
    pairs = pair_layers(dag_a, dag_b)
    q = dag_b.quantizers[3]
    dag_b.quantizers[3] = ActivationQuantizer(q.node, q.input_layer, q.output_layer, q.scale, q.zero_point * 0 + 3,
                                              q.q_min, q.q_max, q.axis, False)
    res = activation_bound(dag_b, dag_a, pairs, with_params_of(dag_a, dag_b, pairs), 1.0)
    assert res.term is None and "not undone" in res.reason


def _hand_qdq(relu_before: bool, zero_point: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A: Gemm → Relu → Gemm (float); B: the same weights with an int8 Q/DQ pair on the hidden layer,
    after a kept ReLU (``relu_before``) or instead of it, zero point ``zero_point``."""
    from onnx import helper

    rng = np.random.default_rng(5)
    w = {"W1": rng.normal(size=(6, 4)).astype(np.float32), "B1": rng.normal(size=6).astype(np.float32),
         "W2": rng.normal(size=(3, 6)).astype(np.float32), "B2": rng.normal(size=3).astype(np.float32)}
    io = ([("x", [1, 4])], [("y", [1, 3])])
    a = make_model([helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1)], *io, w)
    q = {"s": np.array(0.02, np.float32), "z": np.array(zero_point, np.int8)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1)]
    nodes += [helper.make_node("Relu", ["h"], ["r0"])] if relu_before else []
    nodes += [helper.make_node("QuantizeLinear", ["r0" if relu_before else "h", "s", "z"], ["hq"]),
              helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["r"]),
              helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1)]
    return a, make_model(nodes, *io, {**w, **q})


@pytest.mark.parametrize("relu_before", [False, True])
def test_hand_made_qdq_with_and_without_a_kept_relu(relu_before: bool) -> None:
    """A ReLU folded into a range starting at 0, with or without the ReLU kept before it: certified,
    and never exceeded (ranges [0, 5.1] clip hidden values of the box ‖x‖_∞ ≤ 2)."""
    a, b = _hand_qdq(relu_before, -128)
    bound, worst = _total_holds(a, b, 2.0, seed=5)
    assert 0 < worst <= bound


def test_a_relu_dropped_without_folding_is_refused() -> None:
    """B quantizes the pre-ReLU value with a range around 0 (zero point 0) and has no ReLU: a different
    architecture, which must not be certified as A's."""
    a, b = _hand_qdq(False, 0)
    dag_a, dag_b = import_model(a), import_model(b)
    cert = certify(dag_a, dag_b, path_metric(dag_a, dag_b).bound_log10(1.0), 1.0)
    assert cert.total is None and "is in one model only" in cert.activation.reason
    x = {"x": np.full((1, 4), -1.0, np.float32)}
    assert np.abs(Runner(a, ["y"])(x) - Runner(b, ["y"])(x)).sum() > 0  # they do differ
