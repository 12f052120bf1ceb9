"""The one log-sum-exp (``graph/numeric.py``) against exact rational arithmetic: ``Σ 2**l_i`` for integer
``l_i`` is an exact :class:`fractions.Fraction` whatever its size, and ``math.log2`` of a big integer is
correctly computed, so the oracle is independent of the shift-by-the-maximum algebra under test."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from onnx_pathlift.graph.numeric import log2_sum, log2_sum_scaled, log10_sum


def _exact_log2(terms: list[Fraction]) -> float:
    """log2 of a positive rational: log2(numerator) − log2(denominator), each a big integer."""
    total = sum(terms, Fraction(0))
    return math.log2(total.numerator) - math.log2(total.denominator)


@pytest.mark.parametrize("logs", [[0, 0], [3, -2, 7, 7], [5000, 4999, -3000], [-1070, -1074, -1075], [1023, 1023, 1023]])
def test_log2_sum_is_the_exact_sum_far_past_float_range(logs):
    expected = _exact_log2([Fraction(2) ** v for v in logs])
    assert log2_sum([float(v) for v in logs]) == pytest.approx(expected, rel=1e-15, abs=1e-12)


def test_log10_sum_closed_forms():
    assert log10_sum([2.0, 2.0]) == pytest.approx(2.0 + math.log10(2.0), rel=1e-15)
    assert log10_sum([400.0, 399.0]) == pytest.approx(400.0 + math.log10(1.1), rel=1e-15)  # 10**400 + 10**399
    assert log10_sum([1.0]) == 1.0


def test_zero_terms_give_minus_inf_without_a_warning():
    """``-inf`` is a term 0: it drops out, and a sum of nothing but zeros is log 0 = -inf, never nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert log2_sum([]) == -math.inf
        assert log2_sum([-math.inf, -math.inf]) == -math.inf
        assert log10_sum([-math.inf]) == -math.inf
        assert log2_sum([-math.inf, 3.0]) == 3.0
        assert log2_sum_scaled(np.full((2, 3), -np.inf), shape=(2, 3)) == -math.inf
        assert log2_sum_scaled(np.array([1e6, 2.0]), np.array([0.0, 3.0])) == pytest.approx(2.0 + math.log2(3.0), rel=1e-15)
        assert log2_sum_scaled(np.array([-np.inf, 2.0]), np.array([5.0, 3.0])) == pytest.approx(2.0 + math.log2(3.0), rel=1e-15)
        assert log2_sum_scaled(np.array([1.0, 2.0]), np.zeros(2)) == -math.inf


def test_scaled_form_is_the_weighted_sum():
    """``log2 Σ t·2**k`` with k broadcast (per-channel exponents), against the exact rational sum."""
    rng = np.random.default_rng(0)
    k = rng.integers(-1200, 1200, size=(3, 1)).astype(np.float64)
    t = rng.integers(0, 9, size=(3, 4)).astype(np.float64)
    expected = _exact_log2([Fraction(int(t[i, j])) * Fraction(2) ** int(k[i, 0]) for i in range(3) for j in range(4)])
    assert log2_sum_scaled(k, t) == pytest.approx(expected, rel=1e-15, abs=1e-12)
    assert log2_sum_scaled(np.float64(7.0), t) == pytest.approx(7.0 + math.log2(t.sum()), rel=1e-15)
    # the unweighted form over a shape: 2**k broadcast, the same as listing every term
    assert log2_sum_scaled(k, shape=(3, 4)) == pytest.approx(log2_sum(np.repeat(k, 4).tolist()), rel=1e-15)


def _compact_by_definition(k: np.ndarray, shape) -> object:
    """The definition of ``compact``, entry by entry: an int when every entry is one finite value, a 0-d
    ``-inf`` when none is finite, else the map with each axis along which every slice is equal to the
    first (NaN never equal) cut to that first slice, axis by axis."""
    if shape is not None and k.ndim < len(shape):
        k = k.reshape((1,) * (len(shape) - k.ndim) + k.shape)
    finite = [v for v in k.flat if math.isfinite(v)]
    if not finite:
        return np.full((), -np.inf)
    if len(finite) == k.size and len(set(finite)) == 1:
        return int(finite[0])
    for axis in range(k.ndim):
        if k.shape[axis] > 1 and all(np.take(k, [i], axis).tolist() == np.take(k, [0], axis).tolist()
                                     and not np.isnan(np.take(k, [i], axis)).any() for i in range(k.shape[axis])):
            k = np.take(k, [0], axis)
    return k


def test_compact_against_its_definition_on_random_maps():
    """Exponent maps of every mix of finite values, ±inf and NaN, of rank 0-3 with empty axes, with and
    without a shape to keep the rank of."""
    from onnx_pathlift.graph.exponents import compact

    rng = np.random.default_rng(7)
    values = np.array([0.0, 1.0, -3.0, 7.0, np.inf, -np.inf, np.nan])
    for _ in range(3000):
        shape = tuple(int(d) for d in rng.integers(0, 4, size=rng.integers(0, 4)))
        k = rng.choice(rng.choice(values, size=rng.integers(1, 4)), size=shape).astype(np.float64)
        for keep in (None, (1,) * (k.ndim + int(rng.integers(0, 2)))):
            got, want = compact(k.copy(), keep), _compact_by_definition(k.copy(), keep)
            if isinstance(want, int):
                assert type(got) is int and got == want, (k, got)
            else:
                assert isinstance(got, np.ndarray) and got.shape == want.shape, (k, got, want)
                assert np.array_equal(got, want, equal_nan=True), (k, got, want)
