"""The float32 fast paths of the lift (issue 12) against the float64 routes they replace.

* ``scaled_power`` on a float32 weight, q = 1 and 2, integer shifts: bit-identical to the float64
  computation rounded once to float32, including weights and shifts at the edges of float32's normal
  range (where the fast path must step aside);
* ``log2_power_matvec32`` (static bounds of dense and ungrouped conv layers): never below the exact
  ``log2 Σ |w|^q 2^lu`` (math.fsum on exact float64 terms), and within 2·n·u of it;
* ``log2_range`` from magnitude bits equals ``log2`` of numpy's min/max of ``|a|`` over nonzero entries;
* lifted weights below their floor (subnormal, whose products the error budget counts as underflows)
  are set to 0, on both routes, and nothing else changes; a network built to have them (two towers
  2**140 apart merged by one layer) keeps its exact, certified path-norm and loses its subnormals;
* sessions run once take their large constants as feeds (no copy while building): the same outputs
  as with the constants as initializers up to the order of float32 sums, and certified norms that
  hold each other's values.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import make_model
from onnx import helper, numpy_helper

from onnx_pathlift import path_norm
from onnx_pathlift.analyses.scores import scores_model
from onnx_pathlift.backend import runtime
from onnx_pathlift.backend.emit import lift_model, lifted_bundle
from onnx_pathlift.backend.norm import LiftedSession
from onnx_pathlift.frontend.importer import import_model
from onnx_pathlift.graph import builder as graph
from onnx_pathlift.graph import exponents
from onnx_pathlift.graph.bounds import log2_power_matvec32
from onnx_pathlift.graph.exponents import log2_range, scaled_power

FLOAT32_POWER = exponents._float32_power


def _weights(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """float32 weights with log2 magnitudes uniform in [low, high], random signs and some zeros."""
    w = np.exp2(rng.uniform(low, high, shape)) * rng.choice([-1.0, 1.0], shape)
    w[rng.random(shape) < 0.05] = 0.0
    return w.astype(np.float32)


def _float64_route(w: np.ndarray, q: float, *shifts: np.ndarray) -> np.ndarray:
    """|w|^q · 2^(Σ shifts) entry by entry in float64 (exact for q ≤ 2 on float32 values), then float32."""
    m = np.abs(w.astype(np.float64)) ** q
    for s in shifts:
        m = m * np.exp2(s)
    return m.astype(np.float32)


@pytest.mark.parametrize("q", [1.0, 2.0])
@pytest.mark.parametrize("low, high, reach", [(-20, 4, 10), (-60, -40, 5), (-10, 10, 60), (-70, 0, 0), (30, 60, 5)])
def test_scaled_power_is_the_float64_computation_rounded_once(q: float, low: float, high: float, reach: int, monkeypatch) -> None:
    fast = []
    monkeypatch.setattr(exponents, "_float32_power", lambda *args: fast.append(1) or FLOAT32_POWER(*args))
    rng = np.random.default_rng(abs(int(100 * q) + low + high + reach))
    w = _weights(rng, (37, 53), low, high)
    rows = rng.integers(-reach, reach + 1, (37, 1)).astype(np.float64) + 200.0  # k_in − k_out of a deep network:
    cols = rng.integers(-reach, reach + 1, (1, 53)).astype(np.float64) - 200.0  # both near ±200, the sum small
    cols[0, 3] = -np.inf  # a neuron known to be 0
    got = scaled_power(w, q, rows, cols)
    want = _float64_route(w, q, rows + cols)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    if (low, high, reach) == (-20, 4, 10) or ((low, high, reach) == (-70, 0, 0) and q == 1.0):
        assert fast, "the float32 path should have been taken"
    if (low, high, reach) == (-70, 0, 0) and q == 2.0:
        assert not fast, "(2^-70)² is subnormal: the float64 route must be taken"


@pytest.mark.parametrize("q", [1.0, 2.0])
@pytest.mark.parametrize("low, high, spread", [(-12, 2, 8), (-30, -2, 30), (-50, -40, 20), (0, 20, 90)])
def test_float32_bound_is_an_upper_bound_within_its_error_term(q: float, low: float, high: float, spread: float) -> None:
    rng = np.random.default_rng(abs(int(10 * q) + low + high + int(spread)))
    w = _weights(rng, (24, 700), low, high)
    lu = rng.uniform(-spread, 0.0, 700) + 37.25
    lu[5] = -np.inf
    got = log2_power_matvec32(w, w, q, lu)
    if got is None:  # outside float32's normal range: the float64 route is taken
        assert q * low + (-spread) < -125 or q * high + math.log2(700) > 125 or spread > 125
        return
    for row, bound in zip(w.astype(np.float64), got):
        terms = [abs(x) ** q * 2.0 ** (v - 37.25) for x, v in zip(row, lu) if x != 0 and np.isfinite(v)]
        exact = math.log2(math.fsum(terms)) + 37.25 if terms else -math.inf
        assert bound >= exact
        assert bound - exact <= 2 * 700 * 2.0**-24 + 1e-9


def test_float32_bound_steps_aside_where_products_would_be_subnormal() -> None:
    w = np.full((2, 3), 2.0**-70, np.float32)
    assert log2_power_matvec32(w, w, 2.0, np.zeros(3)) is None  # (2^-70)² is below float32's normal range
    assert log2_power_matvec32(w, w, 1.0, np.array([0.0, -40.0, -56.0])) is None  # 2^-70 · 2^-56
    assert log2_power_matvec32(w, w, 1.0, np.array([0.0, -40.0, -50.0])) is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log2_range_from_magnitude_bits(dtype) -> None:
    rng = np.random.default_rng(7)
    for a in (_weights(rng, (300, 41), -140, 20).astype(dtype), _weights(rng, (41, 300), -30, 3).astype(dtype).T,
              np.zeros((3, 4), dtype), np.array(-0.0, dtype), _weights(rng, (9, 8, 7), -5, 5).astype(dtype)[::2, ::3]):
        nz = np.abs(a[a != 0]).astype(np.float64)
        want = (math.log2(nz.min()), math.log2(nz.max())) if nz.size else (-math.inf, -math.inf)
        assert log2_range(a) == want


@pytest.mark.parametrize("route", ["float32", "float64"])
def test_scaled_power_floor_zeroes_only_entries_below_it(route: str, monkeypatch) -> None:
    """Entries below ``2**floor`` (a floor per column here, ``-inf``: none) become 0, the others are
    bit-identical to the unfloored result; on the float32 fast path and the float64 route."""
    if route == "float64":
        monkeypatch.setattr(exponents, "_normal_float32", lambda *a: False)
    rng = np.random.default_rng(7)
    w = _weights(rng, (40, 6), -20.0, 0.0)
    shift = np.array([[-100.0, -110.0, -120.0, -125.0, -128.0, 0.0]])  # column 4: subnormal results
    floor = np.array([[-127.0, -127.0, -126.0, -126.0, -127.0, -np.inf]])
    plain = scaled_power(w, 1.0, shift)
    got = scaled_power(w, 1.0, shift, floor_log2=floor)
    below = plain < np.exp2(floor).astype(np.float32)
    assert below.any() and (plain[below] > 0).any()  # the case is exercised
    np.testing.assert_array_equal(got[below], 0.0)
    np.testing.assert_array_equal(got[~below], plain[~below])


def test_subnormal_lifted_weights_are_dropped_and_the_norm_stays_certified() -> None:
    """Two towers of 7 Gemm layers (x 1e3 and x 1e-3 per layer) merged by one output layer: the merge's
    lifted weight for the small tower is about 2**-140 of its output's scale, a subnormal float32
    (several times slower in a GEMM). It is set to 0; ‖Φ‖_1 = 1e21 + 1e-21 stays exact to float32
    rounding and its certified interval holds the truth."""
    ws = [np.diag([1e3, 1e-3])] * 7 + [np.array([[1.0], [1.0]])]
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(ws):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        nodes += [helper.make_node("Gemm", [x, f"W{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        x = f"r{i}"
    model = make_model(nodes, [("x", [1, 2])], [(x, [1, 1])], inits, name="towers")
    lifted = lift_model(import_model(model), 1.0)
    consts = [numpy_helper.to_array(t) for t in lifted.graph.initializer if t.data_type == 1]
    assert not any(((c > 0) & (c < np.finfo(np.float32).tiny)).any() for c in consts)
    truth = math.log10(1e21 + 1e-21)
    got = path_norm(model, q=1)
    assert got.certified
    assert got.lower_log10 <= truth <= got.upper_log10
    assert got.log10 == pytest.approx(truth, abs=1e-6)


def _wide_mlp() -> onnx.ModelProto:
    """x[1, 256] → Gemm (256 × 128, 128 KiB: a constant handed to onnxruntime as an array) → Relu →
    Gemm (128 × 10)."""
    rng = np.random.default_rng(11)
    p = {"W1": rng.normal(0, 0.1, (256, 128)), "b1": rng.normal(0, 0.1, 128), "W2": rng.normal(0, 0.3, (128, 10))}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"])]
    return make_model(nodes, [("x", [1, 256])], [("y", [1, 10])], p, name="wide")


@pytest.mark.parametrize("graph_kind", ["lifted", "scores"])
def test_fed_constants_give_the_same_outputs_as_initializers(graph_kind: str) -> None:
    """A session run once (basic or no graph rewrites) is fed its large constants instead of copying
    them as initializers: a :class:`FedSession` whose outputs equal those of a session of the same
    graph and level holding them as initializers, up to the order of float32 sums (onnxruntime's
    kernels for constant weights sum in another order; the error budget holds for any order)."""
    dag = import_model(_wide_mlp())
    built = lifted_bundle([(dag, 1.0), (dag, 2.0)])[0] if graph_kind == "lifted" else scores_model(dag)[0]
    rewrites = "basic" if graph_kind == "lifted" else "none"
    assert built.external  # W1 is handed over as an array
    fed = runtime.make_session(built, rewrites=rewrites)
    assert isinstance(fed, runtime.FedSession)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = runtime.REWRITES[rewrites]
    opts.add_session_config_entry("session.disable_prepacking", "1")  # feeds are never prepacked
    opts.add_external_initializers(list(built.external), [ort.OrtValue.ortvalue_from_numpy(v) for v in built.external.values()])
    kept = ort.InferenceSession(built.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, 256), np.float32)}
    for a, b in zip(fed.run(None, feeds), kept.run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=300 * 2.0**-24, atol=0)  # γ of 256-term dot products, twice


def test_fed_session_norms_are_certified_around_the_initializer_ones() -> None:
    """``norm``'s one-run sessions (fed constants, basic rewrites) and repeated-run sessions
    (initializers, all rewrites) give certified intervals that each hold the other's value."""
    dag = import_model(_wide_mlp())
    once = LiftedSession([(dag, 1.0), (dag, 2.0)], quick_build=True)
    assert isinstance(once.session, runtime.FedSession)
    for a, b in zip(once.norms(), LiftedSession([(dag, 1.0), (dag, 2.0)]).norms()):
        assert a.certified and b.certified
        assert a.lower_log10 <= b.log10 <= a.upper_log10 and b.lower_log10 <= a.log10 <= b.upper_log10


def test_weight_floors_keep_every_dropped_product_below_the_underflow_unit() -> None:
    """The floor per input channel follows its headroom ``h = bound − k`` (the channel's values are at
    most ``2**h · (1 + γ)``): ``-127 − ceil(h)``, never above ``-126``, ``-inf`` (nothing dropped) where
    the headroom is unknown or unbounded; and a dropped weight times the largest value it can meet, with ``γ``
    up to 0.99, stays below ``2**-126``: the one underflow the budget counts for that product."""
    b = graph.LiftBuilder(13, static=True)
    bound = np.array([[10.0], [3.5], [-4.2], [np.inf], [7.0]]).reshape(1, 5, 1, 1)
    k = np.array([10.0, 0.0, 0.0, 3.0, -np.inf]).reshape(1, 5, 1, 1)
    b.begin(0, [(bound, k)])
    floors = b.floors(0, 5, 1)
    assert list(floors[:3]) == [-127.0, -131.0, -126.0]  # h = 0, 3.5, -4.2
    assert floors[3] == -np.inf  # an unbounded channel: nothing dropped
    assert floors[4] == -np.inf  # no exponent (k = -inf, its weights scale to 0 anyway): nothing dropped
    b.begin(0, None)
    assert (b.floors(0, 3, 1) == -np.inf).all()  # the dynamic lift drops nothing
    rng = np.random.default_rng(5)
    for h in rng.uniform(-10, 40, 200):
        f = min(-127.0 - math.ceil(h), -126.0)
        w = np.nextafter(np.float32(2.0**f), np.float32(0))  # the largest weight that is dropped
        t = 2.0**h * 1.99  # the largest value it can meet
        assert float(w) * t < 2.0**-126


def _one_copy_route(a: np.ndarray, q: float, parts: list[np.ndarray], log_domain: bool) -> np.ndarray:
    """``|a|**q · 2**(Σ parts)`` on one float64 copy of the whole weight, in the domain given, then float32."""
    m = np.broadcast_to(np.abs(a.astype(np.float64)), np.broadcast_shapes(a.shape, *(p.shape for p in parts))).copy()
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        m = np.exp2(q * np.log2(m) + sum(parts)) if log_domain else m**q * np.exp2(sum(parts)) if parts else m**q
    return m.astype(np.float32)


@pytest.mark.parametrize("block", [1, 3, 64, 1 << 18])
def test_float64_route_by_blocks_is_the_one_copy_computation(block: int, monkeypatch) -> None:
    """``_float64_power`` a block of rows at a time (whatever the block) gives the bits of one float64 copy of
    the whole weight: per-row and per-column shifts, transposed weights, q = 1, 2, 3.5, both domains (shifts
    of opposite signs far apart, as ``_balanced`` gives them, whose sum alone is small)."""
    monkeypatch.setattr(exponents, "CACHE_BLOCK", block)
    rng = np.random.default_rng(block)
    for trial in range(60):
        shape = tuple(int(d) for d in rng.integers(1, 7, size=int(rng.integers(1, 5))))
        a = _weights(rng, shape, -30, 30) if trial % 2 else np.exp2(rng.uniform(-200, 30, shape)) * rng.choice([-1.0, 0.0, 1.0], shape)
        a = a.T if trial % 3 == 0 else a
        q = float(rng.choice([1.0, 2.0, 3.5]))
        far = 600.0 if trial % 4 == 0 else 0.0  # forces the log domain
        parts = [np.round(rng.uniform(-10, 10, tuple(d if rng.random() < 0.5 else 1 for d in a.shape))) + far,
                 np.round(rng.uniform(-10, 10, tuple(d if rng.random() < 0.5 else 1 for d in a.shape))) - far]
        low, top = log2_range(a)
        got = exponents._float64_power(a, q, parts, low, top)
        log_domain = q * max(abs(top), abs(low)) + sum(float(np.abs(p).max()) for p in parts) >= 1000
        assert got.flags.c_contiguous and got.dtype == np.float32
        np.testing.assert_array_equal(got, _one_copy_route(a, q, parts, log_domain))


def test_a_nan_lifted_parameter_is_refused_not_emitted() -> None:
    """``inf · 0`` (an overflowed product times a ``-inf`` shift) is NaN, which hid from the overflow check."""
    with pytest.raises(Exception, match="overflows float32"):
        exponents._rounded32(np.array([1.0, np.inf * 0.0, np.inf]), 1.0)
