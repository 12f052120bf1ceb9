"""Path-norms against independent oracles: brute-force path enumeration, closed forms, rescaling."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import make_model
from checks import outputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from oracle import brute_force_path_norm
from tiny_nets import ALL_NETS

import onnx_pathlift as pl
from onnx_pathlift.backend.verify import verify


@pytest.mark.parametrize("name", sorted(ALL_NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_enumeration(name: str, seed: int) -> None:
    model, _ = ALL_NETS[name](seed)
    dag = pl.import_model(model)
    for q in (1.0, 2.0, 4.0):
        want = brute_force_path_norm(model, q)  # Σ_p |Φ_p|^q, float64, every path enumerated
        got = pl.path_norm(dag, q=q)
        assert got.log10 * q == pytest.approx(math.log10(want), abs=1e-6 / math.log(10))
        assert got.value == pytest.approx(want ** (1 / q), rel=1e-6)


def _one_hidden(u, b, v, c) -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "U", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "V", "c"], ["y"], transB=1)]
    inits = {"U": np.asarray(u, np.float32), "b": np.asarray(b, np.float32), "V": np.asarray(v, np.float32),
             "c": np.asarray(c, np.float32)}
    return make_model(nodes, [("x", [1, u.shape[1]])], [("y", [1, v.shape[0]])], inits)


@pytest.mark.parametrize("q", [1.0, 2.0, 3.0, 4.0])
def test_one_hidden_layer_closed_form(q: float) -> None:
    rng = np.random.default_rng(7)
    u, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    v, c = rng.normal(size=(2, 5)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    u64, b64, v64, c64 = (a.astype(np.float64) for a in (u, b, v, c))
    # Σ_k Σ_j |v_kj|^q (‖u_j‖_q^q + |b_j|^q) + |c_k|^q
    closed = sum(np.sum(np.abs(v64[k]) ** q * (np.sum(np.abs(u64) ** q, axis=1) + np.abs(b64) ** q)) + abs(c64[k]) ** q
                 for k in range(2))
    got = pl.path_norm(_one_hidden(u, b, v, c), q=q)
    assert got.value == pytest.approx(closed ** (1 / q), rel=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(ALL_NETS)), seed=st.integers(0, 2**16), rseed=st.integers(0, 2**16),
       q=st.sampled_from([1.0, 2.0]))
def test_rescaling_invariance(name: str, seed: int, rseed: int, q: float) -> None:
    """A neuron-wise rescaling of the ONNX initializers (through BN, across skips) keeps the function
    (checked by re-emission in onnxruntime) and the path-norm; the weights themselves change."""
    model, rescale = ALL_NETS[name](seed)
    scaled = rescale(model, np.random.default_rng(rseed))
    x = np.random.default_rng(seed).uniform(-1, 1, pl.import_model(model).input_shapes()[model.graph.input[0].name])
    x = x.astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    a, b = outputs(model, feeds)[0], outputs(pl.emit_model(pl.import_model(scaled)), feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert pl.path_norm(scaled, q=q).log10 == pytest.approx(pl.path_norm(model, q=q).log10, abs=1e-6)
    w0 = np.concatenate([numpy_helper.to_array(t).ravel() for t in model.graph.initializer])
    w1 = np.concatenate([numpy_helper.to_array(t).ravel() for t in scaled.graph.initializer])
    assert not np.allclose(w0, w1)  # the rescaling really changed the parameters


@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_reemission_reproduces_model(name: str) -> None:
    model, _ = ALL_NETS[name](3)
    dag = pl.import_model(model)
    onnx.checker.check_model(pl.emit_model(dag), full_check=True)
    onnx.checker.check_model(pl.lift_model(dag, 2.0), full_check=True)
    report = verify(model, dag, trials=4)
    assert report.passed and max(report.max_rel_error.values()) < 1e-5


def test_reemission_check_can_fail() -> None:
    """The check is not vacuous: flipping the sign of one weight in the DAG is detected."""
    model, _ = ALL_NETS["conv_bn_pool"](0)
    dag = pl.import_model(model)
    conv = next(layer for layer in dag.layers() if layer.op == "conv")
    w = conv.params["W"].copy()  # imported weights are read-only views of the model's tensors
    w.flat[0] *= -1
    conv.params["W"] = w
    report = verify(model, dag, raise_on_failure=False)
    assert not report.passed
    with pytest.raises(pl.PathliftError):
        verify(model, dag)


def test_lifted_model_runs_standalone() -> None:
    """The lifted ONNX file alone gives the norm: Σ_o sum(o·2**k_o) with all-ones inputs, in both
    scale modes (static: k_o is a float64 map broadcastable to o)."""
    model, _ = ALL_NETS["everything"](1)
    dag = pl.import_model(model)
    for q in (1.0, 3.0):
        for static in (True, False):
            lifted = pl.lift_model(dag, q, static=static)
            sess = ort.InferenceSession(lifted.SerializeToString(), providers=["CPUExecutionProvider"])
            res = dict(zip([o.name for o in sess.get_outputs()],
                           sess.run(None, {i.name: np.ones(i.shape, np.float32) for i in sess.get_inputs()})))
            assert set(res) == set(dag.outputs) | {o + "__log2_scale" for o in dag.outputs}
            total = sum(float((res[o].astype(np.float64) * np.exp2(res[o + "__log2_scale"])).sum()) for o in dag.outputs)
            assert total ** (1 / q) == pytest.approx(brute_force_path_norm(model, q) ** (1 / q), rel=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_static_and_dynamic_scales_agree(name: str) -> None:
    model, _ = ALL_NETS[name](2)
    dag = pl.import_model(model)
    for q in (1.0, 2.0, 4.0):
        static = pl.PathNormSession(dag, q, scales="static").run()
        dynamic = pl.PathNormSession(dag, q, scales="dynamic").run()
        assert static.log10 == pytest.approx(dynamic.log10, abs=1e-7)


@pytest.mark.parametrize("scales", ["static", "dynamic"])
def test_tensors_of_rank_six_are_scaled_and_checked(scales: str) -> None:
    """Per-channel max (GlobalMaxPool) covers ranks 3-5 only: a rank-6 tensor between layers must
    still be renormalised and health-checked (a GatherND of torch's dynamo exporter makes one)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Reshape", ["c", "s6"], ["r6"]),
             helper.make_node("ReduceSum", ["r6", "ax"], ["a"], keepdims=1), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Reshape", ["ra", "s2"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"])]
    inits = {"W": rng.normal(size=(3, 2, 1, 1)), "s6": np.array([1, 3, 2, 2, 2, 2]), "ax": np.array([5]),
             "s2": np.array([1, 24]), "G": rng.normal(size=(24, 2))}
    model = make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 2])], inits, name="r6")
    dag = pl.import_model(model)
    got = pl.PathNormSession(dag, 1.0, scales=scales).run().value
    assert got == pytest.approx(brute_force_path_norm(model, 1.0), rel=1e-6)
