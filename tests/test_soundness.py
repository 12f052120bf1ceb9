"""Never wrong: models built to make a float32 lifted network lose paths, against exact values.

The two-tower MLPs put neurons of one tensor 2**159 apart (1e24 and 1e-24), farther than float32 can
hold with one scale per tensor; every weight is a normal float32 (1e3 or 1e-3). Their path-norms,
Lipschitz bound and certificate are known in closed form. Each test also checks the certified
interval: it must contain the truth, whatever the scales did.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import tiny_nets
from builders import make_model
from conftest import MODELS, ZOO
from onnx import helper, numpy_helper
from oracle import log10_mlp_path_norm, log10_path_norm

import onnx_pathlift as pl
from onnx_pathlift.analyses.check import check_bound
from onnx_pathlift.analyses.metric import path_metric
from onnx_pathlift.backend.norm import LiftedSession

UP, DOWN, HALF = 1e3, 1e-3, 8


def _gemm_chain(weights: list[np.ndarray], n_in: int, conv: bool = False) -> onnx.ModelProto:
    """Gemm (or 1x1 Conv) + Relu layers with the given ``(in, out)`` weights, no bias."""
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(weights):
        w = w.astype(np.float32)
        if conv:
            inits.append(numpy_helper.from_array(w.T.reshape(w.shape[1], w.shape[0], 1, 1).copy(), f"W{i}"))
            nodes.append(helper.make_node("Conv", [x, f"W{i}"], [f"h{i}"]))
        else:
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            nodes.append(helper.make_node("Gemm", [x, f"W{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        x = f"r{i}"
    shape_in = [1, n_in, 2, 2] if conv else [1, n_in]
    shape_out = [1, weights[-1].shape[1], 2, 2] if conv else [1, weights[-1].shape[1]]
    return make_model(nodes, [("x", shape_in)], [(x, shape_out)], inits, name="towers")


def towers(two_inputs: bool = False, last: tuple[float, float] = (0.0, 1.0), conv: bool = False) -> onnx.ModelProto:
    """Tower A goes up 1e3 a layer for 8 layers then down, tower B down then up: both paths have
    product 1, and at the middle the two neurons of one tensor are 1e24 and 1e-24. ``last``: the
    output weights of A and B (default: only B reaches the output)."""
    first = np.diag([UP, DOWN]) if two_inputs else np.array([[UP, DOWN]])
    ws = [first] + [np.diag([UP, DOWN])] * (HALF - 1) + [np.diag([DOWN, UP])] * HALF + [np.array([[last[0]], [last[1]]])]
    return _gemm_chain(ws, 2 if two_inputs else 1, conv)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("q", [1.0, 2.0, 4.0])
def test_tower_path_norm_is_exact(q: float, conv: bool) -> None:
    """The only path is tower B's (product 1, times 4 positions for the 1x1-conv form)."""
    got = pl.path_norm(towers(conv=conv), q=q)
    want = math.log10(4.0) / q if conv else 0.0
    assert got.certified
    assert got.log10 == pytest.approx(want, abs=1e-6)
    assert got.lower_log10 <= want <= got.upper_log10


def test_tower_lipschitz_bound_holds() -> None:
    """R(x1, x2) = x1 + x2 through the two towers: R(1,1) − R(0,0) = 2 must be within the bound."""
    model = towers(two_inputs=True, last=(1.0, 1.0))
    bound = pl.lipschitz(model)
    assert bound.path_norm_log10 >= math.log10(2.0)
    assert bound.path_norm_log10 == pytest.approx(math.log10(2.0), abs=1e-4)  # rounded outward
    assert bound.estimate_log10 == pytest.approx(math.log10(2.0), abs=1e-6)


def test_tower_certificate_is_exact_and_holds() -> None:
    """Pruning the last surviving weight changes the output at x = 1 by exactly 1."""
    a, b = towers(), towers(last=(0.0, 0.0))
    m = path_metric(a, b)
    assert m.exact
    assert m.upper >= 1.0 and m.upper == pytest.approx(1.0, rel=1e-4)  # rounded outward by the float32 budget
    report = check_bound(a, b, pl.import_model(a), pl.import_model(b), m, 1.0, 8)
    assert not report.violated and report.max_observed == pytest.approx(1.0, rel=1e-6)


def test_residual_and_concat_towers_keep_both_branches() -> None:
    """A skip adds a 1e-30 branch to a 1 branch, then a layer amplifies only the small one back
    (through a Concat): per-neuron exponents keep it; the path sum is 1 + 1 (both exact)."""
    w_split = np.array([[1.0, 1e-30]], np.float32)  # x -> (big 1, small 1e-30)
    nodes = [helper.make_node("MatMul", ["x", "Ws"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Concat", ["r", "r"], ["c"], axis=1),  # (1, 4)
             helper.make_node("MatMul", ["c", "Wa"], ["o"])]
    wa = np.array([[0.0], [1e30], [1.0], [0.0]], np.float32)  # small branch ×1e30, big branch ×1
    inits = [numpy_helper.from_array(w_split, "Ws"), numpy_helper.from_array(wa, "Wa")]
    model = make_model(nodes, [("x", [1, 1])], [("o", [1, 1])], inits, name="skip")
    for q in (1.0, 3.0):
        got = pl.path_norm(model, q=q)
        want = log10_path_norm(model, q)
        assert got.certified and got.log10 == pytest.approx(want, abs=1e-6)


def test_spatial_dynamic_range_is_never_wrong() -> None:
    """Within one channel, border and interior neurons 2**200 apart (a kernel whose border taps are
    1e-30 of its centre): exponents per channel cannot hold both. Whatever happens, the certified
    interval contains the brute-force value, and a certified result is accurate."""
    rng = np.random.default_rng(3)
    nodes, inits, x = [], [], "x"
    for i in range(4):
        k = (10.0 ** rng.uniform(-30, 30, (2, 2, 3, 3))).astype(np.float32)
        inits.append(numpy_helper.from_array(k, f"K{i}"))
        nodes += [helper.make_node("Conv", [x, f"K{i}"], [f"c{i}"], pads=[1, 1, 1, 1]), helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    model = make_model(nodes, [("x", [1, 2, 3, 3])], [(x, [1, 2, 3, 3])], inits, name="spatial")
    for q in (1.0, 4.0):
        want = log10_path_norm(model, q)
        for scales in ("static", "auto"):
            got = pl.PathNormSession(pl.import_model(model), q, scales=scales).run()
            assert got.lower_log10 - 1e-9 <= want <= got.upper_log10 + 1e-9
            if got.certified:
                assert got.log10 == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("q", [8.0, 40.0, 150.0, 1000.0, 1e4])
def test_large_q_matches_log_domain_enumeration(q: float) -> None:
    """Weights spread over 1e±2: at q = 1e4, |w|**q spans 10**±20000, far past float64."""
    rng = np.random.default_rng(int(q) % 97)
    ws = [10.0 ** rng.uniform(-2, 2, (3, 3)) * rng.choice([-1, 1], (3, 3)) for _ in range(4)]
    model = _gemm_chain(ws, 3)
    got = pl.path_norm(model, q=q)
    want = log10_path_norm(model, q)
    assert got.certified and got.lower_log10 <= want + 1e-9 and want <= got.upper_log10 + 1e-9
    assert got.log10 == pytest.approx(want, rel=1e-7, abs=1e-7)


def test_outward_rounding_on_an_attained_certificate() -> None:
    """All-positive weights: at x = 1 the certificate is attained (every path is active and adds
    with the same sign), so a certificate rounded to nearest would be exceeded by float64."""
    rng = np.random.default_rng(0)
    ws = [rng.uniform(0.1, 1.0, (64, 64)).astype(np.float32) for _ in range(6)]
    pruned = [np.where(rng.uniform(size=w.shape) < 0.95, 0.0, w).astype(np.float32) for w in ws]
    a, b = _gemm_chain(ws, 64), _gemm_chain(pruned, 64)
    m = path_metric(a, b)
    change = float(np.sum(_forward64(ws, np.ones(64)) - _forward64(pruned, np.ones(64))))
    assert m.exact
    assert change <= m.upper  # the certified bound at r = 1
    assert m.lower <= change


def _forward64(ws: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    for w in ws:
        x = np.maximum(x @ w.astype(np.float64), 0.0)
    return x


@pytest.mark.parametrize("name", sorted(tiny_nets.ALL_NETS))
@pytest.mark.parametrize("q", [150.0, math.inf])
def test_large_q_and_inf_on_every_layer_kind(name: str, q: float) -> None:
    """q = 150 and q = ∞ (the largest path product) on nets with conv, BN, pools, skips, concat and
    Gemm, against log-domain path enumeration; the interval holds the truth."""
    model, _ = tiny_nets.ALL_NETS[name](1)
    want = log10_path_norm(model, q)
    got = pl.path_norm(model, q=q)
    assert got.lower_log10 - 1e-9 <= want <= got.upper_log10 + 1e-9
    assert got.certified
    assert got.log10 == pytest.approx(want, abs=1e-6)


def test_inf_on_a_deep_mlp_against_max_plus() -> None:
    rng = np.random.default_rng(5)
    ws = [rng.normal(0, 3.0, (10, 10)) * rng.integers(0, 2, (10, 10)) for _ in range(40)]
    bs = [rng.normal(0, 1.0, 10) for _ in range(40)]
    nodes, inits, x = [], [], "x"
    for i, (w, b) in enumerate(zip(ws, bs)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"), numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"g{i}"]), helper.make_node("Relu", [f"g{i}"], [f"r{i}"])]
        x = f"r{i}"
    model = make_model(nodes, [("x", [1, 10])], [(x, [1, 10])], inits, name="deep")
    want = log10_mlp_path_norm([w.astype(np.float32).astype(np.float64) for w in ws],
                               [b.astype(np.float32).astype(np.float64) for b in bs], math.inf)
    got = pl.path_norm(model, q=math.inf)
    assert got.certified and got.lower_log10 - 1e-9 <= want <= got.upper_log10 + 1e-9
    assert got.log10 == pytest.approx(want, abs=1e-7)


def _rescale_models() -> list[tuple[str, onnx.ModelProto]]:
    """The shipped float models, ACAS Xu from the zoo when it is there, and deep test nets."""
    out = [(p.name, onnx.load(p)) for p in sorted(MODELS.glob("*.onnx")) if "int8" not in p.name]
    acas = ZOO / "vnncomp2021" / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
    if acas.exists():
        out.append((acas.name, onnx.load(acas)))
    rng = np.random.default_rng(2)
    out.append(("deep_mlp", _gemm_chain([rng.normal(0, 0.6, (16, 16)) for _ in range(30)], 16)))
    out.append(("deep_cnn", _conv_chain(rng, 20)))
    return out


def _conv_chain(rng: np.random.Generator, depth: int) -> onnx.ModelProto:
    """3x3 Conv (bias) + BatchNormalization + Relu, ``depth`` times, 6 channels on a 6x6 image."""
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, (6, 6, 3, 3)).astype(np.float32), f"K{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), f"B{i}")]
        inits += [numpy_helper.from_array(v.astype(np.float32), f"bn{i}_{n}") for n, v in
                  (("s", rng.uniform(0.5, 2, 6)), ("b", rng.normal(0, 0.1, 6)), ("m", rng.normal(0, 0.1, 6)), ("v", rng.uniform(0.5, 2, 6)))]
        nodes += [helper.make_node("Conv", [x, f"K{i}", f"B{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"bn{i}_s", f"bn{i}_b", f"bn{i}_m", f"bn{i}_v"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"])]
        x = f"r{i}"
    return make_model(nodes, [("x", [1, 6, 6, 6])], [(x, [1, 6, 6, 6])], inits, name="deep_cnn")


@pytest.mark.parametrize("name,model", _rescale_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_rescaling_by_1e12_leaves_every_norm_unchanged(name: str, model: onnx.ModelProto) -> None:
    """Neuron-wise factors log-uniform in [1e-12, 1e12] keep the function and every path-norm."""
    from onnx_pathlift.analyses.rescale import rescale

    dag = pl.import_model(model)
    before = LiftedSession([(dag, q) for q in (1.0, 2.0, 4.0)]).norms()
    for seed in (5, 6):
        scaled, report = rescale(model, dag, seed=seed, low=1e-12, high=1e12)
        assert report.neurons > 0
        after = LiftedSession([(pl.import_model(scaled), q) for q in (1.0, 2.0, 4.0)]).norms()
        for x, y in zip(before, after):
            assert y.certified, (x.q, y)
            assert y.log10 == pytest.approx(x.log10, abs=1e-6 / math.log(10))  # 1e-6 relative in the value
