"""Fixed-batch models: one sample stands for N copies only when no layer mixes samples.

Oracles: the brute-force path enumeration over the whole batch network, and the same computation
with the per-sample shortcut switched off."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import make_model, weight_stream, zeroed
from checks import sample, scored_initializers
from onnx import helper, numpy_helper
from oracle import brute_force_path_norm, brute_force_path_norm_inputs_only

import onnx_pathlift as pl
from onnx_pathlift.backend.samples import one_sample

N = 3
w = weight_stream(7)


def _mlp():
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["m"]), helper.make_node("Add", ["m", "b2"], ["y"])]
    return make_model(nodes, [("x", [N, 4])], [("y", [N, 2])], {"W1": w(5, 4), "b1": w(5), "W2": w(5, 2), "b2": w(2)})


def _conv():
    """Conv, max-pool, a batch-keeping Transpose and Reshape, and a skip."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["s"]),
             helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["f"]), helper.make_node("MatMul", ["f", "W2"], ["y"])]
    return make_model(nodes, [("x", [N, 2, 4, 4])], [("y", [N, 3])],
                      {"W": w(3, 2, 3, 3), "B": w(3), "shape": np.array([N, 12]), "W2": w(12, 3)})


def _contracts_batch():
    """``W @ x``: every output neuron sums over the samples."""
    nodes = [helper.make_node("MatMul", ["W", "x"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    return make_model(nodes, [("x", [N, 4])], [("y", [N, 4])], {"W": w(N, N)})


def _moves_batch_axis():
    """A Transpose swapping the batch axis with another axis of the same size."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("MatMul", ["t", "W"], ["y"])]
    return make_model(nodes, [("x", [N, N])], [("y", [N, 2])], {"W": w(N, 2)})


def _batch_bias():
    """A bias with a batch axis: the samples are different networks."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    return make_model(nodes, [("x", [N, 4])], [("y", [N, 2])], {"W": w(4, 2), "b": w(N, 2)})


def _reduces_batch():
    """A sum over the batch axis (keepdims) followed by a bias."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=1),
             helper.make_node("Add", ["s", "b"], ["y"])]
    return make_model(nodes, [("x", [N, 4])], [("y", [1, 2])], {"W": w(4, 2), "axes": np.array([0]), "b": w(2)})


STACKED = {"mlp": _mlp, "conv": _conv}
MIXED = {"contracts_batch": _contracts_batch, "moves_batch_axis": _moves_batch_axis, "batch_bias": _batch_bias,
         "reduces_batch": _reduces_batch}


@pytest.mark.parametrize("name", sorted(STACKED))
@pytest.mark.parametrize("q", [1.0, 2.0, 4.0])
def test_stacked_samples_use_one_sample(name: str, q: float) -> None:
    model = STACKED[name]()
    dag = pl.import_model(model)
    twin, copies = one_sample(dag)
    assert copies == N and all(layer.shape[0] == 1 for layer in twin.layers())
    expected = brute_force_path_norm(model, q) ** (1 / q)
    fast = pl.PathNormSession(dag, q).run()
    full = pl.PathNormSession(dag, q, per_sample=False).run()
    assert fast.value == pytest.approx(expected, rel=1e-6)
    assert fast.value == pytest.approx(full.value, rel=1e-9)
    assert fast.per_output_log10 == pytest.approx(full.per_output_log10, rel=1e-9)


@pytest.mark.parametrize("name", sorted(MIXED))
def test_networks_mixing_samples_are_run_whole(name: str) -> None:
    model = MIXED[name]()
    dag = pl.import_model(model)
    assert one_sample(dag)[1] == 1
    for q in (1.0, 2.0):
        assert pl.path_norm(dag, q).value == pytest.approx(brute_force_path_norm(model, q) ** (1 / q), rel=1e-6)


def test_lipschitz_and_metric_use_the_shortcut_consistently() -> None:
    """Input path-norm (biases removed) and the two-stream metric to a pruned copy, against the
    whole-batch brute force (pruning: d = ‖Φ(θ)‖_1 − ‖Φ(θ')‖_1 exactly)."""
    model = _mlp()
    assert pl.lipschitz(model).estimate_log10 == pytest.approx(np.log10(brute_force_path_norm_inputs_only(model, 1.0)),
                                                               abs=1e-7)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    w1 = next(t for t in pruned.graph.initializer if t.name == "W1")
    values = numpy_helper.to_array(w1).copy()
    values[0, :2] = 0.0
    w1.CopyFrom(numpy_helper.from_array(values, "W1"))
    metric = pl.path_metric(model, pruned)
    d = brute_force_path_norm(model, 1.0) - brute_force_path_norm(pruned, 1.0)
    assert metric.exact and 10 ** metric.estimate_log10 == pytest.approx(d, rel=1e-6)
    assert d * (1 - 1e-9) <= 10 ** metric.upper_log10 <= d * (1 + 1e-4)


@pytest.mark.parametrize("name", sorted(STACKED))
def test_scores_of_stacked_samples_are_the_brute_force_drops(name: str) -> None:
    """Scores of a fixed-batch network (one sample analysed): each equals the drop of the
    whole-batch ‖Φ‖_1 when that weight is zeroed, as a fraction of ‖Φ‖_1."""
    model = STACKED[name]()
    scores = pl.path_magnitude(model)
    total = brute_force_path_norm(model, 1.0)
    assert scores.log10_norm == pytest.approx(np.log10(total), abs=1e-7)
    rng = np.random.default_rng(0)
    for init, w_values in scored_initializers(model).items():
        for index in sample(w_values, 6, rng):
            drop = (total - brute_force_path_norm(zeroed(model, init, index), 1.0)) / total
            assert scores.fraction[init][index] == pytest.approx(drop, rel=1e-5, abs=1e-9)


def test_scores_refuse_conv_when_the_batch_mixes() -> None:
    """A conv net whose batch cannot be split (a bias with a batch axis): a clear error, not a wrong score."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])]
    model = make_model(nodes, [("x", [N, 1, 3, 3])], [("y", [N, 2, 2, 2])], {"W": w(2, 1, 2, 2), "b": w(N, 2, 1, 1)})
    with pytest.raises(pl.PathliftError, match="pass --input-shape with batch 1"):
        pl.path_magnitude(model)
