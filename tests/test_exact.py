"""The exact float64 fallback (issue 26): every finite norm of an ordinary-size model certified.

Oracles: the brute-force path enumeration of ``tests/oracle.py`` (its own neuron DAG, probed from
onnxruntime) on small nets of every op the fallback evaluates, and exact rational arithmetic
(``fractions``) on adversarial models built to defeat the exponent maps of the float32 lifted network
(magnitudes spread far beyond float32's range inside one channel, then amplified). Whatever route
computes a norm: its certified interval holds the truth and its value lies in its interval; where the
fallback refuses, the value is null with a reason.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
from builders import make_model, one_op, replace_inits
from conftest import MODELS, run_main
from onnx import helper
from oracle import log10_path_norm, log_path_terms, neuron_dag
from tiny_nets import conv_bn_pool, everything, matmul_net, mlp, residual_concat

from onnx_pathlift import api, path_norm
from onnx_pathlift.backend import exact
from onnx_pathlift.backend.exact import FallbackRefused, exact_log2
from onnx_pathlift.frontend.importer import import_model
from onnx_pathlift.ir.dag import Dag
from onnx_pathlift.ops import exact_api

QS = (1.0, 2.0, 4.0, math.inf)
#: the brute-force oracle's own error in log10: it probes Conv and AveragePool in float32 (a divisor 1/3
#: rounded to float32 moves a path by 3e-8 relative)
_ORACLE = 1e-7
_LOG10_2 = math.log10(2.0)


def _exact_log10(model: onnx.ModelProto | Dag, q: float) -> tuple[float, float]:
    """The fallback's ``log10 ‖Φ‖_q`` and its error bound, on the whole DAG (every sample)."""
    total, err = exact_log2(model if isinstance(model, Dag) else import_model(model), q)
    scale = _LOG10_2 if math.isinf(q) else _LOG10_2 / q
    return total * scale, err * scale


ONE_OPS = {
    "maxpool_ceil": ("MaxPool", [], {}, {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "maxpool_pads_dil": ("MaxPool", [], {}, {"kernel_shape": [2, 2], "pads": [1, 0, 1, 1], "dilations": [1, 2]}),
    "avgpool_pads": ("AveragePool", [], {}, {"kernel_shape": [3, 2], "pads": [1, 1, 1, 0], "strides": [2, 1]}),
    "avgpool_incl": ("AveragePool", [], {}, {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0], "count_include_pad": 1}),
    "globalavg": ("GlobalAveragePool", [], {}, {}),
    "globalmax": ("GlobalMaxPool", [], {}, {}),
    "grouped_strided_conv": ("Conv", ["Wg", "Bg"], {"Wg": np.random.default_rng(5).normal(size=(6, 1, 2, 3)),
                                                    "Bg": np.random.default_rng(6).normal(size=6)},
                             {"group": 3, "strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]}),
    "pad_reflect": ("Pad", ["pads"], {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 0])}, {"mode": "reflect"}),
    "transpose": ("Transpose", [], {}, {"perm": [0, 1, 3, 2]}),
    "mul_bias": ("Mul", ["s"], {"s": np.random.default_rng(7).normal(size=(1, 3, 1, 5))}, {}),
}


@pytest.mark.parametrize("name", sorted(ONE_OPS))
def test_the_fallback_matches_brute_force_on_every_op(name: str) -> None:
    op, inputs, params, attrs = ONE_OPS[name]
    model = one_op(op, inputs, params, **attrs)
    for q in QS:
        got, err = _exact_log10(model, q)
        want = log10_path_norm(model, q)
        assert abs(got - want) <= err + _ORACLE and err < 1e-9, (q, got, want, err)


@pytest.mark.parametrize("name", ["grouped_strided_conv", "maxpool_ceil", "avgpool_pads"])
def test_blocks_of_any_size_give_the_same_result(name: str, monkeypatch) -> None:
    """The im2col copy and the sums taken a few entries at a time (every block boundary crossed) give
    the whole-layer result."""
    op, inputs, params, attrs = ONE_OPS[name]
    dag = import_model(one_op(op, inputs, params, **attrs))
    for q in QS:
        whole = exact_log2(dag, q)
        monkeypatch.setattr(exact_api, "_BLOCK", 7)
        small = exact_log2(dag, q)
        monkeypatch.undo()
        assert abs(whole[0] - small[0]) <= whole[1] + small[1], (q, whole, small)


@pytest.mark.parametrize("build", [mlp, conv_bn_pool, matmul_net, pytest.param(residual_concat, marks=pytest.mark.slow),
                                   pytest.param(everything, marks=pytest.mark.slow)], ids=lambda f: f.__name__)
def test_the_fallback_matches_brute_force_on_tiny_nets(build) -> None:
    model, _ = build(3)
    graph, outputs = neuron_dag(model)  # the oracle's neuron DAG, probed once for every q
    for q in QS:
        got, err = _exact_log10(model, q)
        terms = log_path_terms(graph, outputs, q)
        top = max(terms)
        want = top if math.isinf(q) else (top + math.log(math.fsum(math.exp(t - top) for t in terms))) / q
        assert abs(got - want / math.log(10)) <= err + _ORACLE and err < 1e-9, q


def _corner(k: int, big: float = 1e38) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (1×1×5×5) → k Mul layers that amplify pixel (0, 0) by ``big`` and damp the others by
    ``1/big`` → an all-ones 3×3 conv (pads 1) → k Mul layers that amplify pixel (4, 4) (whose window
    misses the corner) and damp the others. Both families of paths carry ~1: float32's per-channel
    exponent map at the conv holds one and flushes the other."""
    up, down = np.full((1, 1, 5, 5), 1 / big, np.float32), np.full((1, 1, 5, 5), 1 / big, np.float32)
    up[0, 0, 0, 0], down[0, 0, 4, 4] = big, big
    params, nodes, x = {"W": np.ones((1, 1, 3, 3), np.float32)}, [], "x"
    for i in range(k):
        params[f"u{i}"] = up
        nodes += [helper.make_node("Mul", [x, f"u{i}"], [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes += [helper.make_node("Conv", [x, "W"], ["c"], pads=[1, 1, 1, 1])]
    x = "c"
    for i in range(k):
        params[f"d{i}"] = down
        nodes += [helper.make_node("Relu", [x], [f"s{i}"]), helper.make_node("Mul", [f"s{i}", f"d{i}"], [f"b{i}"])]
        x = f"b{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return make_model(nodes, [("x", [1, 1, 5, 5])], [("y", [1, 1, 5, 5])], params), params


def _corner_terms(params: dict[str, np.ndarray], k: int) -> list[Fraction]:
    """Every path product |Φ_p| of :func:`_corner` as an exact rational (closed form: a path is one input
    pixel, one conv tap of weight 1 in its output pixel's window, one output pixel)."""
    def prods(prefix: str) -> list[Fraction]:
        return [math.prod(Fraction(float(params[f"{prefix}{i}"][0, 0, r, c])) for i in range(k)) for r in range(5) for c in range(5)]
    up, down = prods("u"), prods("d")
    return [up[5 * r + c] * down[5 * i + j] for i in range(5) for j in range(5)
            for r in range(max(0, i - 1), min(5, i + 2)) for c in range(max(0, j - 1), min(5, j + 2))]


def _log10(x: Fraction) -> float:
    return math.log10(x.numerator) - math.log10(x.denominator)


def _corner_truth(params: dict[str, np.ndarray], k: int, q: float) -> float:
    """log10 ‖Φ‖_q of :func:`_corner` (q = ∞: the largest path product)."""
    terms = _corner_terms(params, k)
    return _log10(max(terms)) if math.isinf(q) else _log10(sum(t ** int(q) for t in terms)) / q


@pytest.mark.parametrize("k", [1, 3, 6])
def test_adversarial_spreads_are_certified_and_exact(k: int) -> None:
    """Spreads of 1e76 (k = 1) to 1e456 (k = 6, beyond float64's range) inside one channel: every norm
    certified, its interval holding the rational truth, its value equal to it."""
    model, params = _corner(k)
    for q in QS:
        got, want = path_norm(model, q), _corner_truth(params, k, q)
        assert got.fallback == "float64"  # float32 alone leaves [0.6, 77] or wider at q = 1
        assert got.certified and got.lower_log10 <= want + 1e-12 and want <= got.upper_log10 + 1e-12, (q, got, want)
        assert got.lower_log10 <= got.log10 <= got.upper_log10 and got.log10 == pytest.approx(want, abs=1e-9)
        assert got.value is None or got.value == pytest.approx(10.0**want, rel=1e-8)


def test_a_window_whose_big_weights_meet_small_inputs_is_summed_term_by_term() -> None:
    """A conv window where the filter's big weight meets the small input and vice versa: at q = 4 both
    products are 1 while the matmul route's units (row max × filter max) are 2**1920 above them, so
    both scaled factors underflow; that sum is re-evaluated term by term: ‖Φ‖_4^4 = 2 exactly
    (``2**-120`` and ``2**120`` are exact in float32). At q = 1, 2 the matmul route holds it."""
    d = np.array([[[[2.0**120, 2.0**-120]]]], np.float32)
    w = np.array([[[[2.0**-120, 2.0**120]]]], np.float32)
    nodes = [helper.make_node("Mul", ["x", "d"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"])]
    model = make_model(nodes, [("x", [1, 1, 1, 2])], [("y", [1, 1, 1, 1])], {"d": d, "w": w})
    for q in QS:
        total, err = exact_log2(import_model(model), q)
        assert abs(total - (0.0 if math.isinf(q) else 1.0)) <= err < 1e-9, (q, total, err)
        got = path_norm(model, q)
        want = 0.0 if math.isinf(q) else _LOG10_2 / q
        assert got.certified and got.lower_log10 <= want + 1e-15 and want <= got.upper_log10 + 1e-15, (q, got)


def test_a_spatial_mean_keeps_one_exponent_per_channel() -> None:
    """ReduceMean over H, W (the dynamo exporter's global pool) after channels whose static bounds differ
    by 2**(q·1) (weights 1 and 1/2): per-channel exponents pass through it, so float32 certifies every q
    alone; with one exponent for all channels the lifted classifier's weights overflowed float32 at
    q = ∞ (Q = 2**40), which crashed DenseNet-121's dynamo export."""
    w = np.ones((2, 1, 2, 2), np.float32)
    w[1] *= 0.5
    g = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Flatten", ["m"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"])]
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("y", [1, 3])], {"w": w, "g": g})
    for q in QS:
        got, want = path_norm(model, q), log10_path_norm(model, q)
        assert got.certified and got.fallback is None, q
        assert got.lower_log10 <= want + 1e-12 and want <= got.upper_log10 + 1e-12, (q, got, want)


def test_a_refused_fallback_gives_a_null_value_and_a_sound_interval(monkeypatch, capsys, tmp_path) -> None:
    """Above the work limit the fallback refuses: value null with the reason, log10 and the interval
    still sound (the interval holds the truth, log10 inside it), and the CLI says why."""
    model, params = _corner(1)
    monkeypatch.setattr(exact, "WORK_LIMIT", 10)
    with pytest.raises(FallbackRefused, match="above its limit"):
        exact_log2(import_model(model), 1.0)
    for q in QS:
        got, want = path_norm(model, q), _corner_truth(params, 1, q)
        assert not got.certified and got.value is None and "above its limit" in got.reason and got.fallback is None
        assert got.lower_log10 <= want + 1e-12 <= got.upper_log10 + 2e-12 and got.lower_log10 <= got.log10 <= got.upper_log10
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rc, out, err = run_main(capsys, "norm", path, "--json")
    res = json.loads(out)["norms"][0]
    assert rc == 0 and res["value"] is None and not res["certified"] and "above its limit" in res["reason"], err
    rc, out, err = run_main(capsys, "norm", path)
    assert rc == 0 and "L1 path-norm: no value (float32 did not certify it, and the exact float64 fallback" in out, err
    assert "not certified" in out and "path-norm =" not in out


def test_cli_norm_reports_the_fallback(tmp_path, capsys) -> None:
    model, params = _corner(3)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rc, out, err = run_main(capsys, "norm", path, "-q", 1)
    assert rc == 0 and "certified by the exact float64 fallback" in out and "not certified" not in out, err
    rc, out, err = run_main(capsys, "norm", path, "-q", 1, "-q", 4, "--json")
    assert rc == 0, err
    for res, q in zip(json.loads(out)["norms"], (1.0, 4.0)):
        assert res["certified"] and res["fallback"] == "float64" and res["reason"] is None
        assert res["lower_log10"] <= _corner_truth(params, 3, q) <= res["upper_log10"]
    rc, out, err = run_main(capsys, "lipschitz", path, "--json")  # no biases: L = ‖Φ‖_1
    res = json.loads(out)
    assert rc == 0 and res["certified"] and res["lower_log10"] <= _corner_truth(params, 3, 1.0) <= res["upper_log10"], err


def test_compare_of_an_adversarial_pruned_pair_is_exact_with_a_finite_lower() -> None:
    """B: A with the corner's amplifiers halved (|B| ≤ |A|, same signs: an exact pair): d = ‖Φ(A)‖_1 −
    ‖Φ(B)‖_1 in rational arithmetic lies in the certified [lower, upper], and lower is finite."""
    model, params = _corner(3)
    halved = {n: v.copy() for n, v in params.items()}
    for i in range(3):
        halved[f"u{i}"][0, 0, 0, 0] /= 2
    other = replace_inits(model, halved)
    m = api.compare_models(model, other).metric
    want = _log10(sum(_corner_terms(params, 3)) - sum(_corner_terms(halved, 3)))
    assert m.exact and math.isfinite(m.lower_log10)
    assert m.lower_log10 <= want + 1e-9 and want <= m.upper_log10 + 1e-9, (m.lower_log10, want, m.upper_log10)


@pytest.mark.parametrize("name", ["digits_cnn_torch_bn.onnx", "digits_mlp_sklearn.onnx"])
def test_the_fallback_agrees_with_float32_on_the_shipped_models(name: str) -> None:
    """Two independent computations: float32's certified norm (no fallback needed) holds the float64
    pass's interval, at every q."""
    dag = import_model(MODELS / name)
    for q in QS:
        norm, (got, err) = path_norm(dag, q), _exact_log10(dag, q)
        assert norm.certified and norm.fallback is None and err < 1e-11
        assert norm.lower_log10 <= got + err and got - err <= norm.upper_log10, (q, norm, got)


def test_numpy_exp2_and_log2_are_within_the_assumed_error() -> None:
    """The error bound takes numpy's float64 ``exp2`` and ``log2`` at 2**-50 relative (8 ulp): checked
    against mpmath at 120 bits on the arguments the pass gives them (``t − s ≤ 0``; sums ≥ 1)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 120
    rng = np.random.default_rng(0)
    d = np.concatenate([-rng.uniform(0, 1020, 2000), -rng.uniform(0, 1, 2000)])
    s = np.concatenate([rng.uniform(1, 2, 2000), rng.uniform(1, 1e7, 2000)])
    for x, y in zip(d, np.exp2(d)):
        t = mpmath.power(2, mpmath.mpf(float(x)))
        assert abs(mpmath.mpf(float(y)) - t) <= 2.0**-50 * t
    for x, y in zip(s, np.log2(s)):
        t = mpmath.log(mpmath.mpf(float(x)), 2)
        assert abs(mpmath.mpf(float(y)) - t) <= 2.0**-50 * abs(t) + 2.0**-1000


def test_a_deconv_is_refused_by_name() -> None:
    rng = np.random.default_rng(0)
    model = one_op("ConvTranspose", ["Wt"], {"Wt": rng.normal(size=(3, 2, 2, 2))})
    with pytest.raises(FallbackRefused, match="'deconv'"):
        exact_log2(import_model(model), 1.0)
