"""The lift's passes over the weights (issue 29), counted, and the shortcuts that cut them, bit for bit.

* a bundle folds each DAG's scales once, whatever its q: one ``absorb_scale`` and one magnitude range
  per folded weight for a q = 1, 2 bundle (two of each before), and the bundle's lifted weights and
  norms are those of two single-q runs, bit for bit;
* the conv bound's row sums of ``|W|**q`` (``pow_row_sums``: a transposed buffer summed column by column
  in numpy's pairwise order, unscaled where that is exact) equal the blocked ``sum(axis=1)`` they replace;
* the float64 power route's plain blocks (one combined ``2**Σ shifts`` factor, rounded straight into the
  float32 result) equal the float64 computation rounded once, and still refuse an overflow.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import MODELS
from onnx import numpy_helper

from onnx_pathlift.backend.emit import lifted_bundle
from onnx_pathlift.backend.norm import LiftedSession
from onnx_pathlift.errors import PathliftError
from onnx_pathlift.frontend.pipeline import load
from onnx_pathlift.graph import bounds, exponents
from onnx_pathlift.graph.numeric import PAIRWISE_BLOCK, column_sums
from onnx_pathlift.ops.conv import Conv

MODEL = MODELS / "digits_cnn_torch_bn.onnx"  # convolutions each followed by a BatchNorm: scales to fold


def _wide(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """float64 values with log2 magnitudes uniform in [low, high], random signs, some zeros."""
    a = np.exp2(rng.uniform(low, high, shape)) * rng.choice([-1.0, 1.0], shape)
    a[rng.random(shape) < 0.1] = 0.0
    return a


def _weights(built) -> Counter:
    """The multiset of a built lifted model's non-scalar initializers (external ones as held), by dtype,
    shape and bytes."""
    arrays = [built.external[i.name] if i.name in built.external else numpy_helper.to_array(i) for i in built.proto.graph.initializer]
    return Counter((v.dtype.str, v.shape, v.tobytes()) for v in arrays if v.size > 1)


def test_a_bundle_folds_once_and_lifts_as_two_single_runs(monkeypatch) -> None:
    dag = load(str(MODEL), whole=False).dag
    singles = [lifted_bundle([(dag, q)])[0] for q in (1.0, 2.0)]
    folds, ranges = [], []  # (layer, folded weight's size) per fold; sizes of the weights whose range is read
    real_absorb, real_range = Conv.absorb_scale, exponents._magnitude_range

    def absorb(self, layer, scale):
        folded = real_absorb(self, layer, scale)
        folds.append((layer.name, folded.params["W"].size))
        return folded

    monkeypatch.setattr(Conv, "absorb_scale", absorb)
    monkeypatch.setattr(exponents, "_magnitude_range", lambda v: ranges.append(v.size) or real_range(v))
    copies = []  # the float64 copies of weight blocks the bound and the lift made before (a fresh array each)
    for name in ("pow_block", "_power_in_place"):
        monkeypatch.setattr(exponents, name, _counted(getattr(exponents, name), copies))
    both = lifted_bundle([(dag, 1.0), (dag, 2.0)])[0]
    assert not [n for n in copies if n in {size for _, size in folds}]  # the folded weights' powers: reused buffers
    assert folds and len(folds) == len(set(folds))  # each conv's scale folded once, not once per q
    # the unfolded weights' ranges are remembered from the single runs (scalars aside); each folded weight's is read once
    assert Counter(n for n in ranges if n > 1) == Counter(size for _, size in folds)
    lifted = [_weights(m) for m in (both, *singles)]
    assert lifted[0] == lifted[1] + lifted[2]
    bundled = LiftedSession([(dag, 1.0), (dag, 2.0)]).norms()
    for got, q in zip(bundled, (1.0, 2.0)):
        (want,) = LiftedSession([(dag, q)]).norms()
        assert (got.log10, got.lower_log10, got.upper_log10, got.certified) == (want.log10, want.lower_log10, want.upper_log10, want.certified)


def _counted(real, sizes: list[int]):
    """``real``, recording the size of its first argument at each call."""
    def call(*args):
        sizes.append(np.size(args[0]))
        return real(*args)
    return call


@pytest.mark.parametrize("n", [*range(1, 20), 24, 25, 31, 32, 33, 49, 64, 100, PAIRWISE_BLOCK])
def test_column_sums_add_in_numpys_order(n: int) -> None:
    rng = np.random.default_rng(n)
    for k in (1, 7, 300) + ((40000,) if n in (1, 3, 9, 25, 49) else ()):  # a whole block of a kernel's filters
        t = np.abs(_wide(rng, (n, k), -40, 40))
        want = np.ascontiguousarray(t.T).sum(axis=1)  # numpy's own row sums
        got = column_sums(t, np.empty(k))
        assert got.tobytes() == want.tobytes(), (n, k)


@pytest.mark.parametrize("q", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("taps, low, high", [(1, -20, 4), (9, -20, 4), (9, -520, -440), (25, 300, 330), (3, -8, 8),
                                             (49, -1, 1), (PAIRWISE_BLOCK + 1, -4, 4), (9, -600, 10)])
@pytest.mark.parametrize("block", [64, 1 << 18])
def test_pow_row_sums_are_the_blocked_sums_bit_for_bit(q: float, taps: int, low: float, high: float, block: int,
                                                      monkeypatch) -> None:
    """Every route: unscaled sums (the common case), scaled sums (powers below float64's normal range,
    ``2**-1040`` at q = 2), the log domain (a span over 1000), more terms than one pairwise block, a
    kernel read as stored or through a transposed view, blocks ending mid-array."""
    monkeypatch.setattr(bounds, "CACHE_BLOCK", block)
    rng = np.random.default_rng(abs(taps + int(q) + int(high)))
    w = _wide(rng, (13, 5, taps), low, high)
    variants = [w, np.ascontiguousarray(w.transpose(1, 0, 2)).transpose(1, 0, 2)] + ([w.astype(np.float32)] if high < 100 else [])
    for a in variants:
        rows = a.reshape(-1, taps)
        got, e = bounds.pow_row_sums(a, rows, q)
        want, e_want = exponents.pow_row_reduce(a, rows, q, lambda m: m.sum(axis=1), row_wise=True)
        assert e == e_want and got.tobytes() == want.tobytes()


def test_plain_blocks_are_the_float64_computation_rounded_once(monkeypatch) -> None:
    plain = []
    real = exponents._plain_blocks
    monkeypatch.setattr(exponents, "_plain_blocks", lambda *args: plain.append(1) or real(*args))
    monkeypatch.setattr(exponents, "CACHE_BLOCK", 40)
    rng = np.random.default_rng(5)
    for trial in range(40):
        q = float(rng.choice([1.0, 2.0, 2.5]))
        a = _wide(rng, (int(rng.integers(1, 30)), 4, 3), -40, 20)
        a = a if trial % 3 else (a * np.exp2(rng.integers(-3, 3, (a.shape[0], 1, 1)))).astype(np.float32).astype(np.float64)
        parts = [np.round(rng.uniform(-30, 30, (a.shape[0], 1, 1))) + 300, np.round(rng.uniform(-30, 30, (1, 4, 1))) - 300]
        parts[1][0, 1, 0] = -np.inf  # a neuron known to be 0
        low, top = exponents.log2_range(a)
        got = exponents._float64_power(a, q, parts, low, top)
        with np.errstate(over="ignore", under="ignore"):
            want = (np.abs(a) ** q * np.exp2(parts[0] + parts[1])).astype(np.float32)  # exact scalings, one rounding
        assert got.tobytes() == want.tobytes(), trial
    assert len(plain) >= 20


def test_plain_blocks_step_aside_near_float32s_overflow() -> None:
    """Entries that may reach ``2**128`` take the checked route: one at ``2**127.9`` is kept, one that
    rounds to float32's infinity is refused."""
    a = np.array([[2.0**127.9, 1.0], [3.0, 0.5]])
    zero = np.zeros((2, 1))
    assert exponents._float64_power(a, 1.0, [zero], *exponents.log2_range(a))[0, 0] == np.float32(2.0**127.9)
    with pytest.raises(PathliftError, match="overflows float32"):
        exponents._float64_power(a, 1.0, [zero + 1.0], *exponents.log2_range(a))


@pytest.mark.parametrize("block", [7, 1 << 18])
def test_scaled_rows_are_the_product_and_remember_its_range(block: int, monkeypatch) -> None:
    """A folded weight ``W · s`` (per leading index, or along the last axis) in numpy's result type, bit for
    bit, with the range ``log2_range`` reads afresh from a copy; zero rows and all-zero weights included."""
    monkeypatch.setattr(exponents, "CACHE_BLOCK", block)
    sizes = []
    monkeypatch.setattr(exponents, "_magnitude_range", _counted(exponents._magnitude_range, sizes))
    rng = np.random.default_rng(block)
    for trial in range(30):
        w = _wide(rng, (int(rng.integers(1, 9)), 3, int(rng.integers(1, 4))), -60, 60).astype(np.float32 if trial % 2 else np.float64)
        w[int(rng.integers(w.shape[0]))] = 0.0
        w = w * 0.0 if trial == 5 else w
        lead = _wide(rng, (w.shape[0], 1, 1), -30, 30)
        for s in (lead, lead.astype(np.float32), _wide(rng, (1, 1, w.shape[2]), -3, 3)):
            got = exponents.scaled_rows(w, s)
            assert got.dtype == (w * s).dtype and got.tobytes() == (w * s).tobytes()
            read = len(sizes)
            assert exponents.log2_range(got) == exponents.log2_range(got.copy())
            assert sizes[read:] == [got.size]  # the copy's range is read; the product's was remembered


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_abs_power_squares_as_the_power_does(dtype) -> None:
    """``a · a`` (one pass) has the bits of ``|a|`` raised by ``**= 2`` (two), subnormal and huge squares included."""
    rng = np.random.default_rng(2)
    lo, hi = (-75, 60) if dtype == np.float32 else (-560, 510)
    a = _wide(rng, (4000,), lo, hi).astype(dtype)
    for q in (1.0, 2.0, 3.0):
        want = np.abs(a, dtype=np.float64)
        with np.errstate(over="ignore", under="ignore"):
            want **= q
            got = exponents.abs_power_into(a, q, np.empty(a.shape))
        assert got.tobytes() == want.tobytes(), q
