"""Self-tests of the brute-force path-norm oracle (tests/oracle.py) and of tests/tiny_nets.py."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import inits, make_model
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oracle  # noqa: E402
from oracle import (  # noqa: E402
    OracleError,
    brute_force_path_norm,
    brute_force_path_norm_inputs_only,
    brute_force_path_norm_root,
    dp_path_norm_from_dag,
    neuron_dag,
    path_norm_from_dag,
    path_starts,
    path_terms,
)
from tiny_nets import ALL_NETS  # noqa: E402

QS = (1.0, 2.0, 4.0)


def _f32(a: np.ndarray) -> np.ndarray:
    """The float32-rounded values, back in float64 (what the ONNX model really holds)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _model(nodes, inputs, outputs, params) -> onnx.ModelProto:
    """``builders.make_model``, checked by ``onnx.checker`` (the oracle's inputs are valid models)."""
    m = make_model(nodes, inputs, outputs, params, name="t")
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x.astype(np.float32)})[0]


def _input_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_one_hidden_layer_closed_form(seed: int) -> None:
    """y = V relu(U x + b) + c:  sum_k sum_j |V_kj|^q (||U_j||_q^q + |b_j|^q) + sum_k |c_k|^q."""
    rng = np.random.default_rng(seed)
    d, h, o = 5, 7, 3
    U, b = _f32(rng.normal(size=(h, d))), _f32(rng.normal(size=h))
    V, c = _f32(rng.normal(size=(o, h))), _f32(rng.normal(size=o))
    U[0, 1] = 0.0  # a missing edge
    b[2] = 0.0  # a neuron without bias
    nodes = [
        helper.make_node("Gemm", ["x", "U", "b"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("Gemm", ["r", "V", "c"], ["y"], transB=1),
    ]
    m = _model(nodes, [("x", [1, d])], [("y", [1, o])], {"U": U, "b": b, "V": V, "c": c})
    G, outs = neuron_dag(m)
    for q in QS:
        hid = (np.abs(U) ** q).sum(axis=1) + np.abs(b) ** q
        want = float((np.abs(V) ** q @ hid).sum() + (np.abs(c) ** q).sum())
        want_in = float((np.abs(V) ** q @ (np.abs(U) ** q).sum(axis=1)).sum())
        assert path_norm_from_dag(G, outs, q) == pytest.approx(want, rel=1e-9)
        assert brute_force_path_norm(m, q) == pytest.approx(want, rel=1e-9)
        assert brute_force_path_norm_root(m, q) == pytest.approx(want ** (1 / q), rel=1e-9)
        assert brute_force_path_norm_inputs_only(m, q) == pytest.approx(want_in, rel=1e-9)
    n_paths = d * h * o - o + (h - 1) * o + o  # inputs (minus the 0 edge), hidden biases, c
    assert len(path_terms(G, outs, 1.0, path_starts(G))) == n_paths


def test_matmul_net_closed_form() -> None:
    """MatMul on the last axis of [1,2,3,4]: 6 independent copies of the one-hidden-layer form."""
    model, _ = ALL_NETS["matmul_net"](3)
    p = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
    for q in QS:
        hid = (np.abs(W1) ** q).sum(axis=0) + np.abs(b1) ** q
        want = 6 * float(hid @ (np.abs(W2) ** q).sum(axis=1) + (np.abs(b2) ** q).sum())
        assert brute_force_path_norm(model, q) == pytest.approx(want, rel=1e-9)


def test_single_conv_closed_form() -> None:
    """3x3 conv, pad 1, on 5x5: sum_c 25 |b_c|^q + sum |W[c,i,k,l]|^q n(k) n(l), n = (4, 5, 4)."""
    rng = np.random.default_rng(7)
    W, b = _f32(rng.normal(size=(3, 2, 3, 3))), _f32(rng.normal(size=3))
    node = helper.make_node("Conv", ["x", "W", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)
    m = _model([node], [("x", [1, 2, 5, 5])], [("y", [1, 3, 5, 5])], {"W": W, "b": b})
    n = np.array([4.0, 5.0, 4.0])
    for q in QS:
        want = 25 * (np.abs(b) ** q).sum() + (np.abs(W) ** q * np.outer(n, n)).sum()
        # Conv has no float64 kernel in onnxruntime: float32 probes, so about 1e-7 relative.
        assert brute_force_path_norm(m, q) == pytest.approx(float(want), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# pooling by hand
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads", "ceil", "windows"),
    [
        # windows per axis (input indices), worked out by hand
        (6, 3, 2, [0, 0, 0, 0], 0, [3, 3]),  # {0,1,2} {2,3,4}
        (6, 3, 2, [0, 0, 0, 0], 1, [3, 3, 2]),  # + {4,5}
        (6, 3, 2, [1, 1, 1, 1], 1, [2, 3, 3, 1]),  # {0,1} {1,2,3} {3,4,5} {5}
        # the ceil window would start in the end padding: onnxruntime drops it
        (4, 2, 2, [0, 0, 1, 1], 1, [2, 2]),  # {0,1} {2,3}
        (5, 2, 2, [1, 1, 1, 1], 1, [1, 2, 2]),  # {0} {1,2} {3,4}
    ],
)
def test_maxpool_ceil_windows(size, kernel, stride, pads, ceil, windows) -> None:
    """x -> Mul(c) -> MaxPool -> Add(beta): |c|^q (sum of window sizes)^2 + n_out |beta|^q."""
    c, beta = -1.5, 0.25
    n_out = len(windows)
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["u"]),
        helper.make_node("MaxPool", ["u"], ["m"], kernel_shape=[kernel] * 2,
                         strides=[stride] * 2, pads=pads, ceil_mode=ceil),
        helper.make_node("Add", ["m", "beta"], ["y"]),
    ]
    m = make_model(nodes, [("x", [1, 1, size, size])], [("y", None)], {"c": np.float32(c), "beta": np.float32(beta)}, name="mp")
    G, outs = neuron_dag(m)
    assert len(outs) == n_out**2
    indeg = sorted(G.in_degree(("m", i)) for i in range(n_out**2))
    assert indeg == sorted(a * b for a in windows for b in windows)
    assert all(G.edges[e]["w"] == 1.0 for e in G.in_edges(("m", 0)))
    for q in QS:
        want = abs(c) ** q * sum(windows) ** 2 + n_out**2 * abs(beta) ** q
        assert path_norm_from_dag(G, outs, q) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool_divisors(include_pad: int) -> None:
    """AveragePool(3, stride 2, pad 1) on 4x4 -> 2x2, windows {0,1} {1,2,3} per axis:
    count_include_pad=0: sum_ij (r_i r_j)^(1-q);  =1: (sum_i r_i)^2 / 9^q."""
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1] * 4, count_include_pad=include_pad)
    m = _model([node], [("x", [1, 1, 4, 4])], [("y", [1, 1, 2, 2])], {})
    r = np.array([2.0, 3.0])
    for q in QS:
        rr = np.outer(r, r)
        want = (rr ** (1 - q)).sum() if include_pad == 0 else rr.sum() / 9**q
        assert brute_force_path_norm(m, q) == pytest.approx(float(want), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# the tiny nets: validity, rescaling invariance, internal consistency
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_tiny_net_rescaling_invariance(name: str) -> None:
    model, rescale = ALL_NETS[name](11)
    onnx.checker.check_model(model, full_check=True)
    rescaled = rescale(model, np.random.default_rng(12))
    onnx.checker.check_model(rescaled, full_check=True)
    p0 = inits(model)
    p1 = inits(rescaled)
    changed = [k for k in p0 if not np.array_equal(p0[k], p1[k])]
    assert changed, "the rescaling changed nothing"

    x = np.random.default_rng(13).normal(size=_input_shape(model))
    y0, y1 = _run(model, x), _run(rescaled, x)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5 * np.abs(y0).max())

    G0, o0 = neuron_dag(model)
    G1, o1 = neuron_dag(rescaled)
    assert G0.number_of_nodes() == G1.number_of_nodes()
    for q in (1.0, 2.0):
        a, b = path_norm_from_dag(G0, o0, q), path_norm_from_dag(G1, o1, q)
        assert b == pytest.approx(a, rel=1e-6)
        assert path_norm_from_dag(G1, o1, q, inputs_only=True) == pytest.approx(
            path_norm_from_dag(G0, o0, q, inputs_only=True), rel=1e-6
        )
        # explicit enumeration against the sum-product recursion
        assert dp_path_norm_from_dag(G0, o0, q) == pytest.approx(a, rel=1e-12)


@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_tiny_net_input_lipschitz_bound(name: str) -> None:
    """||R(x) - R(x')||_1 <= ||Phi_in||_1 ||x - x'||_inf, and the bias paths are counted too."""
    model, _ = ALL_NETS[name](5)
    lip = brute_force_path_norm_inputs_only(model, 1.0)
    assert 0 < lip < brute_force_path_norm(model, 1.0)
    rng = np.random.default_rng(6)
    for _ in range(20):
        x = rng.normal(size=_input_shape(model))
        x2 = x + rng.uniform(-0.3, 0.3, size=x.shape)
        lhs = np.abs(_run(model, x).astype(np.float64) - _run(model, x2)).sum()
        assert lhs <= lip * np.abs(x2.astype(np.float32) - x.astype(np.float32)).max() * (1 + 1e-5)


def test_batched_and_looped_probes_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = ALL_NETS["everything"](2)
    G0, o0 = neuron_dag(model)
    monkeypatch.setattr(oracle, "BATCH_PROBES", False)
    G1, o1 = neuron_dag(model)
    assert o0 == o1
    assert set(G0.edges) == set(G1.edges)
    for u, v, d in G0.edges(data=True):
        assert G1.edges[u, v]["w"] == pytest.approx(d["w"], rel=1e-6, abs=1e-12)
    for v, d in G0.nodes(data=True):
        assert G1.nodes[v]["b"] == pytest.approx(d["b"], rel=1e-6, abs=1e-12)


def test_tiny_net_path_counts_are_small() -> None:
    for name, build in ALL_NETS.items():
        G, outs = neuron_dag(build(0)[0])
        assert oracle.count_paths(G, outs, path_starts(G)) <= 150_000, name


# ---------------------------------------------------------------------------------------------
# structure and refusals
# ---------------------------------------------------------------------------------------------


def test_dag_structure_with_skip_add_and_transpose() -> None:
    """Add of two activations and a Transpose/Reshape are 0/1 edges; input neurons are flagged."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["a"]),
        helper.make_node("Add", ["a", "r"], ["y"]),
    ]
    m = _model(nodes, [("x", [1, 3, 2, 2])], [("y", [3, 4])], {"shape": np.array([3, 4])})
    G, outs = neuron_dag(m)
    assert all(G.nodes[("x", i)]["kind"] == "input" for i in range(12))
    assert all(G.nodes[o]["kind"] == "output" for o in outs)
    assert all(d["w"] == 1.0 for *_, d in G.edges(data=True))
    assert all(d["b"] == 0.0 for _, d in G.nodes(data=True))
    # each input reaches its output twice: directly and through the ReLU
    assert brute_force_path_norm(m, 3.0) == pytest.approx(24.0)


def test_non_affine_non_relu_op_is_refused() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["y"])]
    m = _model(nodes, [("x", [1, 3])], [("y", [1, 3])], {})
    with pytest.raises(OracleError, match="neither affine"):
        neuron_dag(m)


def test_too_many_paths_is_refused() -> None:
    model, _ = ALL_NETS["conv_bn_pool"](0)
    G, outs = neuron_dag(model)
    with pytest.raises(OracleError, match="paths"):
        path_terms(G, outs, 1.0, path_starts(G), max_paths=1000)


def test_terms_are_nonnegative_and_sum_with_fsum() -> None:
    model, _ = ALL_NETS["mlp"](0)
    G, outs = neuron_dag(model)
    terms = path_terms(G, outs, 2.0, path_starts(G))
    assert min(terms) >= 0.0
    assert math.fsum(terms) == path_norm_from_dag(G, outs, 2.0)


@pytest.mark.parametrize(
    ("op", "attrs"),
    [("Clip", {}), ("LeakyRelu", {"alpha": 0.1}), ("Tanh", {}), ("Abs", {})],
)
def test_other_nonlinearities_are_refused(op: str, attrs: dict) -> None:
    inputs = ["x", "lo", "hi"] if op == "Clip" else ["x"]
    params = {"lo": np.float32(-0.5), "hi": np.float32(0.5)} if op == "Clip" else {}
    nodes = [helper.make_node(op, inputs, ["y"], **attrs)]
    m = _model(nodes, [("x", [1, 3])], [("y", [1, 3])], params)
    with pytest.raises(OracleError, match="neither affine"):
        neuron_dag(m)


def test_constant_nodes_are_folded() -> None:
    """y = x * C1 + Neg(C2) with Constant nodes: per element |c1|^q + |c2|^q."""
    c1 = np.array([[0.5, -2.0, 3.0]], np.float32)
    c2 = np.array([[1.0, 0.0, -0.25]], np.float32)
    nodes = [
        helper.make_node("Constant", [], ["C1"], value=numpy_helper.from_array(c1)),
        helper.make_node("Constant", [], ["C2"], value=numpy_helper.from_array(c2)),
        helper.make_node("Neg", ["C2"], ["nC2"]),
        helper.make_node("Mul", ["x", "C1"], ["u"]),
        helper.make_node("Add", ["u", "nC2"], ["y"]),
    ]
    m = _model(nodes, [("x", [1, 3])], [("y", [1, 3])], {})
    G, outs = neuron_dag(m)
    assert set(G.nodes) == {(t, i) for t in ("x", "u", "y") for i in range(3)}
    for q in QS:
        want = float((np.abs(c1) ** q).sum() + (np.abs(c2) ** q).sum())
        assert path_norm_from_dag(G, outs, q) == pytest.approx(want, rel=1e-12)
