"""Path-norms far outside float32 (and float64) range: log10 must stay right to 1e-5 relative."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from builders import make_model
from onnx import helper, numpy_helper
from oracle import log10_mlp_path_norm

import onnx_pathlift as pl


def _chain(kind: str, depth: int, width: int, c: float, beta: float, bn: tuple[float, float] | None) -> onnx.ModelProto:
    """``depth`` layers (Gemm, or 1x1 Conv on 3x3 images) with every weight ``c`` and bias ``beta``,
    each optionally followed by a BatchNormalization with scale ``s`` and shift ``t``, then ReLU."""
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        if kind == "dense":
            inits += [numpy_helper.from_array(np.full((width, width), c, np.float32), f"W{i}"),
                      numpy_helper.from_array(np.full(width, beta, np.float32), f"b{i}")]
            nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"h{i}"]))
        else:
            inits += [numpy_helper.from_array(np.full((width, width, 1, 1), c, np.float32), f"W{i}"),
                      numpy_helper.from_array(np.full(width, beta, np.float32), f"b{i}")]
            nodes.append(helper.make_node("Conv", [x, f"W{i}", f"b{i}"], [f"h{i}"]))
        y = f"h{i}"
        if bn is not None:
            s, t = bn  # gamma = s, var = 1 - eps, mean = 0, beta = t  →  y = s·x + t
            for n, v in (("g", s), ("bb", t), ("m", 0.0), ("v", 1.0 - 1e-5)):
                inits.append(numpy_helper.from_array(np.full(width, v, np.float32), f"{n}{i}"))
            nodes.append(helper.make_node("BatchNormalization", [y, f"g{i}", f"bb{i}", f"m{i}", f"v{i}"], [f"n{i}"]))
            y = f"n{i}"
        nodes.append(helper.make_node("Relu", [y], [f"r{i}"]))
        x = f"r{i}"
    shape = [1, width] if kind == "dense" else [1, width, 3, 3]
    return make_model(nodes, [("x", shape)], [(x, shape)], inits, name="chain")


def _closed_form_log10(kind, depth, width, c, beta, bn, q) -> float:
    """log10 ‖Φ‖_q by the per-neuron recursion S ← |s|^q(W|c|^q S + |β|^q) + |t|^q, in the log domain."""
    log_s = 0.0  # log of the lifted value of one neuron, all neurons of a layer being equal
    for _ in range(depth):
        terms = [math.log(width) + q * math.log(abs(c)) + log_s]
        if beta:
            terms.append(q * math.log(abs(beta)))
        log_s = np.logaddexp.reduce(terms)
        if bn is not None:
            scale = bn[0] / math.sqrt(1.0)
            terms = [q * math.log(abs(scale)) + log_s] + ([q * math.log(abs(bn[1]))] if bn[1] else [])
            log_s = np.logaddexp.reduce(terms)
    n_out = width * (1 if kind == "dense" else 9)
    return (math.log(n_out) + log_s) / q / math.log(10)


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize(
    "depth,width,c,beta,bn,q",
    [
        (300, 16, 6.25, 0.0, None, 1.0),  # ≈ 1e600
        (300, 16, 6.25, 0.5, (1.5, 0.25), 2.0),  # biases and BN shifts aligned against huge activations
        (300, 16, 0.000625, 0.0, None, 1.0),  # ≈ 1e-600: underflow side
        (200, 8, 0.01, 0.0, (0.5, 0.0), 4.0),  # ≈ 1e-415 at q = 4, through BN scales
        (200, 8, 0.01, 1e-3, (0.5, 2.0), 4.0),  # shrinking paths: the BN shifts dominate (moderate value)
    ],
)
def test_deep_chain_log10(kind, depth, width, c, beta, bn, q) -> None:
    model = _chain(kind, depth, width, c, beta, bn)
    got = pl.path_norm(model, q=q)
    want = _closed_form_log10(kind, depth, width, c, beta, bn, q)
    assert got.log10 == pytest.approx(want, rel=1e-5)
    assert (got.value is None) == (want > 308)


@pytest.mark.parametrize("q", [1.0, 2.0, 4.0])
def test_deep_random_mlp_against_log_domain_oracle(q: float) -> None:
    rng = np.random.default_rng(11)
    depth, width = 120, 12
    ws = [rng.normal(0, 4.0, (width, width)) * rng.integers(0, 2, (width, width)) for _ in range(depth)]
    bs = [rng.normal(0, 1.0, width) for _ in range(depth)]
    ws, bs = [w.astype(np.float32) for w in ws], [b.astype(np.float32) for b in bs]
    nodes, inits, x = [], [], "x"
    for i, (w, b) in enumerate(zip(ws, bs)):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        x = f"r{i}"
    model = make_model(nodes, [("x", [1, width])], [(x, [1, width])], inits, name="deep")
    want = log10_mlp_path_norm([w.astype(np.float64) for w in ws], [b.astype(np.float64) for b in bs], q)
    got = pl.path_norm(model, q=q)
    assert want > 40
    assert got.log10 == pytest.approx(want, rel=1e-5)
    # the value itself, where float64 holds it, to the same relative precision
    if want < 300:
        assert got.value == pytest.approx(10.0 ** want, rel=1e-5 * want * math.log(10) + 1e-9)


def test_loose_static_bounds_fall_back_to_dynamic_scales() -> None:
    """3x3 convs on a 1x1 image: only the kernel centre touches a neuron, so the per-channel static
    bound (which assumes every tap sees the channel's max) overestimates by Σ|w|/|w_centre| a layer.
    The error budget does not certify the static graph (its underflow term is not small against the
    result), so the run-time renormalised graph gives the value; the interval stays sound."""
    depth, c_centre, c_edge = 12, 1e-3, 1.0
    kernel = np.full((1, 1, 3, 3), c_edge, np.float32)
    kernel[0, 0, 1, 1] = c_centre
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array(kernel, f"W{i}"))
        nodes += [helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]), helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    dag = pl.import_model(make_model(nodes, [("x", [1, 1, 1, 1])], [(x, [1, 1, 1, 1])], inits, name="centre"))
    session = pl.PathNormSession(dag, q=1.0)
    got = session.run()
    assert not session.static  # fell back
    assert got.log10 == pytest.approx(depth * math.log10(c_centre), rel=1e-6)
    truth = depth * math.log10(float(kernel[0, 0, 1, 1]))  # the float32 weight 1e-3·(1 + 4.7e-8)
    assert got.lower_log10 <= truth + 1e-9 <= got.upper_log10 + 2e-9
    static = pl.PathNormSession(dag, q=1.0, scales="static").run()
    assert not static.certified  # static alone: lost to underflow, and says so with a sound interval
    assert static.lower_log10 <= truth + 1e-9 <= static.upper_log10 + 2e-9
