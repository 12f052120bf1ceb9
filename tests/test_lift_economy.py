"""Operations the static lift leaves out, each exact, each against the brute-force oracle (issue 12).

* a conv or dense layer's lifted bias goes into Conv's ``B`` / Gemm's ``C`` input (no Add): the
  same values and the same one rounding of the sum;
* an affine layer whose every ``|s|**q`` is a power of two ``2**j`` (an imported Clip's flips: s = −1;
  a halving at q = 2) moves its exponent map by ``j`` instead of multiplying, unless that map would
  drift from the layer's bounds (then the multiplication stays); a neuron known to be 0 (exponent
  ``-inf``) never keeps a finite neuron's bias from being added;
* a layer's static bound and its lifted weight share one ``|W|**q`` (``power32``): the lifted weights
  are bit-identical to those computed afresh, in both layouts the bound reads (rows, or their
  transpose).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from builders import net, sandwich
from onnx import helper
from oracle import brute_force_path_norm

from onnx_pathlift import path_norm
from onnx_pathlift.backend.emit import lift_model
from onnx_pathlift.frontend.importer import import_model
from onnx_pathlift.graph import exponents
from onnx_pathlift.graph.bounds import log2_power_matvec32


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _check_against_oracle(model: onnx.ModelProto, qs=(1.0, 2.0, 3.0)) -> None:
    dag = import_model(model)
    for q in qs:
        want = brute_force_path_norm(model, q) ** (1 / q)
        got = path_norm(dag, q=q)
        assert got.value == pytest.approx(want, rel=1e-6), q
        assert got.certified and 10**got.lower_log10 <= want * (1 + 1e-12) and want <= 10**got.upper_log10 * (1 + 1e-12), q


def test_conv_and_gemm_biases_are_the_ops_own_inputs() -> None:
    model = sandwich([helper.make_node("Relu", ["r"], ["m"])], {}, seed=3)  # Conv(bias) → Relu → Gemm(bias)
    lifted = lift_model(import_model(model), 1.0)
    ops = _ops(lifted)
    assert ops["Add"] == 0, ops
    assert [len(n.input) for n in lifted.graph.node if n.op_type in ("Conv", "Gemm")] == [3, 3]
    _check_against_oracle(model)


def _clip_net(scale: float, bias: float, seed: int = 0) -> onnx.ModelProto:
    """x → Gemm → ReLU6 as ``6 − relu(6 − relu(h))`` (what Clip(0, 6) imports as: two flips, s = −1;
    the oracle reads no Clip) → Mul(scale) → Add(bias) → Relu → Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"]), helper.make_node("Relu", ["h"], ["h1"]),
             helper.make_node("Sub", ["six", "h1"], ["f"]), helper.make_node("Relu", ["f"], ["f1"]),
             helper.make_node("Sub", ["six", "f1"], ["c"]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Gemm", ["r", "W2", "B2"], ["y"])]
    params = {"W1": rng.normal(size=(3, 4)), "B1": rng.normal(size=4), "six": np.array(6.0),
              "s": np.full(4, scale), "t": np.full(4, bias), "W2": rng.normal(size=(4, 2)), "B2": rng.normal(size=2)}
    return net([1, 3], nodes, [1, 2], params)


@pytest.mark.parametrize("scale, q, muls", [(-1.0, 1.0, 0), (-1.0, 2.0, 0), (0.5, 2.0, 0), (0.5, 3.0, 0),
                                            (0.5, 1.5, 1), (0.3, 1.0, 1)])
def test_power_of_two_scales_move_the_exponent(scale: float, q: float, muls: int) -> None:
    """Only the explicit Mul may multiply, and only when ``|s|**q`` is not a power of two."""
    model = _clip_net(scale, 0.75)
    lifted = lift_model(import_model(model), q)
    assert _ops(lifted)["Mul"] == muls
    _check_against_oracle(model, (q,))


def test_a_far_exponent_is_settled_by_multiplying() -> None:
    """s = 2**-60 with a bias of 1: the map ``k_x − 60`` is far below the layer's bound (the bias), so
    the layer multiplies to its target; the norm stays exact."""
    model = _clip_net(2.0**-60, 1.0, seed=1)
    assert _ops(lift_model(import_model(model), 1.0))["Mul"] == 1
    _check_against_oracle(model, (1.0, 2.0))


def test_a_bias_after_padding_reaches_the_padded_neurons() -> None:
    """Pad's new neurons are known to be 0 (exponent -inf) before the bias that a constant pad value
    becomes: keeping that exponent would drop the bias there."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], kernel_shape=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Pad", ["r", "pads", "v"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "W2", "B2"], ["y"], kernel_shape=[2, 2])]
    params = {"W1": rng.normal(size=(2, 2, 1, 1)), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 0], np.int64),
              "v": np.array(0.7), "W2": rng.normal(size=(2, 2, 2, 2)), "B2": rng.normal(size=2)}
    model = net([1, 2, 3, 3], nodes, [1, 2, 4, 3], params)
    _check_against_oracle(model)


@pytest.mark.parametrize("layout", ["rows", "transposed"])
@pytest.mark.parametrize("q", [1.0, 2.0])
def test_the_bound_and_the_lift_share_one_power_bit_for_bit(layout: str, q: float) -> None:
    rng = np.random.default_rng(int(q))
    base = (rng.normal(size=(24, 40)) * np.exp2(rng.integers(-8, 8, size=(24, 40)))).astype(np.float32)
    # the array the lift powers and the rows the bound reads (one per output), as conv and dense layers pass
    # them: a conv kernel or a Gemm transB weight is read as stored by both; x @ W with W laid out
    # (in, out) is bounded through Wᵀ
    w = np.ascontiguousarray(base.T) if layout == "transposed" else base
    rows = w.T if layout == "transposed" else w
    shifts = (np.arange(w.shape[0], dtype=np.float64)[:, None] % 5 - 2, -np.arange(w.shape[1], dtype=np.float64)[None, :] % 3)
    with exponents.lift_run() as memo:  # one lift run owns the kept powers
        fresh = exponents.scaled_power(w, q, *shifts)
        bound = log2_power_matvec32(w, rows, q, np.zeros(rows.shape[1]))
        assert memo.slot, "the bound keeps its powers for the lift"
        shared = exponents.scaled_power(w, q, *shifts)
        assert not memo.slot, "the lift takes them"
    assert shared.tobytes() == fresh.tobytes()
    exact = np.log2([np.sum(np.abs(r.astype(np.float64)) ** q) for r in rows])
    assert np.all(bound >= exact) and np.all(bound - exact < 1e-5)


def test_the_kept_power_never_answers_for_other_memory_or_another_q() -> None:
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    with exponents.lift_run() as memo:
        kept = exponents.power32(a, 2.0, keep=True)
        assert exponents.power32(a[:2], 2.0) is not kept  # same start, fewer elements
        assert exponents.power32(a, 1.0).tobytes() == np.abs(a).tobytes()  # another q
        assert exponents.power32(a.copy(), 2.0).tobytes() == kept.tobytes() and memo.slot  # other memory: computed
        assert exponents.power32(a.reshape(4, 3), 2.0).base is kept  # the same elements in the same order: taken


def test_the_lift_run_owns_the_powers_memo() -> None:
    """Outside a run nothing is kept; a run's memo ends with it; a run inside a run shares the outer one."""
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    kept = exponents.power32(a, 2.0, keep=True)
    assert exponents.power32(a, 2.0) is not kept  # no run: nothing held
    with exponents.lift_run() as outer:
        w = np.full((2, 2), 3.0)
        first = exponents.pow_scaled(w, 2.0)
        with exponents.lift_run() as inner:
            assert inner is outer and exponents.pow_scaled(w, 2.0) is first
        exponents.power32(a, 2.0, keep=True)
        assert outer.slot and outer.pows
    with exponents.lift_run() as fresh:
        assert fresh is not outer and not fresh.slot and not fresh.pows
    assert exponents.pow_scaled(w, 2.0) is not first  # no run: computed again (the same values)
    assert np.array_equal(exponents.pow_scaled(w, 2.0)[0], first[0])


def test_a_weight_and_its_transpose_share_one_range(monkeypatch) -> None:
    """The range of a Gemm transB weight is read once, for the bound (W) and the lift (Wᵀ); a part of
    it is a block of its own."""
    calls = []
    real = exponents._magnitude_range
    monkeypatch.setattr(exponents, "_magnitude_range", lambda v: calls.append(v.size) or real(v))
    w = np.ascontiguousarray(np.arange(1, 13, dtype=np.float32).reshape(3, 4).T)  # (4, 3) C-ordered
    assert exponents.log2_range(w) == exponents.log2_range(w.T) == exponents.log2_range(w.T.T) == (0.0, np.log2(12.0))
    assert calls == [12]
    assert exponents.log2_range(w[1:]) == (np.log2(2.0), np.log2(12.0)) and calls == [12, 9]  # rows 1..3: no 1
    assert exponents.log2_range(w[:, :1]) == (0.0, np.log2(4.0))  # a strided column: its own entry
