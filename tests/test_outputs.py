"""``onnx-pathlift outputs``: per-output path-norms ``‖Φ_k‖_q`` against brute-force path enumeration
(``oracle.log10_output_path_norms``: every path that ends at output neuron k, enumerated in float64's log domain)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from builders import hand_mlp, hand_norm, make_model, save
from conftest import run_main
from onnx import helper
from oracle import log10_output_path_norms
from tiny_nets import ALL_NETS

from onnx_pathlift import api
from onnx_pathlift.backend import exact
from onnx_pathlift.backend.exact import exact_logs
from onnx_pathlift.frontend.importer import import_model

#: log10 agreement: float32 lifted runs (relative ~1e-6) against an oracle whose Conv and pooling probes run in float32
TOL = 3e-6


def _ours(model: onnx.ModelProto, q: float) -> dict[tuple[str, int], tuple[float, float, float, bool]]:
    """Neuron ``(output, flat index)`` → ``(log10, lower_log10, upper_log10, certified)``."""
    report = api.output_norms(model, [q])
    return {(n.output, i): (float(n.log10[i]), float(n.lower_log10[i]), float(n.upper_log10[i]), bool(n.certified[i]))
            for n in report.norms for i in range(n.log10.size)}


def _assert_matches(model: onnx.ModelProto, q: float) -> dict:
    """Every output neuron certified, at the oracle's value, the oracle inside its certified interval."""
    oracle, ours = log10_output_path_norms(model, q), _ours(model, q)
    assert set(ours) == set(oracle)
    for neuron, truth in oracle.items():
        log10, lower, upper, certified = ours[neuron]
        assert certified, neuron
        assert log10 == pytest.approx(truth, abs=TOL), (neuron, log10, truth)
        assert lower - TOL <= truth <= upper + TOL, (neuron, lower, truth, upper)
    return ours


@pytest.mark.parametrize("q", [1.0, 2.0, 3.5, math.inf])
@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_each_output_neuron_is_the_paths_that_end_there(name: str, q: float) -> None:
    """Tiny random DAG-ReLU nets (residual Add, Concat, max and average pooling, BatchNorm, MatMul): each
    neuron's ‖Φ_k‖_q is brute-force enumeration over its own paths, and they add up to ``norm``'s ‖Φ‖_q."""
    model, _ = ALL_NETS[name](7)
    ours = _assert_matches(model, q)
    total = api.compute_norms(model, [q]).norms[0]
    logs = [v[0] for v in ours.values()]
    whole = max(logs) if math.isinf(q) else (max(logs) + math.log10(sum(10 ** (q * (v - max(logs))) for v in logs)) / q)
    assert whole == pytest.approx(total.log10, abs=TOL)


@pytest.mark.parametrize("name", ["mlp", "conv_bn_pool", "matmul_net"])
def test_extreme_rescaling_changes_no_output_norm(name: str) -> None:
    """Hidden neurons rescaled by factors up to 2**±40 (the function and Φ kept): every ‖Φ_k‖_q unchanged and
    certified (the originals match the oracle above; the oracle's float32 probes cannot follow such weights)."""
    model, _ = ALL_NETS[name](11)
    rescaled = api.rescale_model(model, seed=5, low=2.0**-40, high=2.0**40)
    assert rescaled.neurons > 0
    for q in (1.0, 2.0, math.inf):
        before, after = _ours(model, q), _ours(rescaled.model, q)
        assert before.keys() == after.keys()
        for neuron, (log10, *_rest) in before.items():
            assert after[neuron][3] and after[neuron][0] == pytest.approx(log10, abs=TOL), neuron


def _towers(scale_log2: int, depth: int = 3) -> onnx.ModelProto:
    """Two dense towers into one output tensor ``y[1, 2]``: every weight of tower 0 is ~2**scale_log2, of
    tower 1 ~2**-scale_log2, so ``‖Φ_0‖ / ‖Φ_1‖`` is about ``2**(2·(depth + 1)·scale_log2)``: far past float32's
    range within one tensor (the case where one exponent per tensor loses the small neuron)."""
    rng = np.random.default_rng(scale_log2)
    width, nodes, params, x = 3, [], {}, "x"
    for layer in range(depth):
        w = np.zeros((2 * width, 2 * width if layer else 4))
        half = w.shape[1] // 2
        w[:width, :half] = rng.uniform(0.5, 1.5, (width, half)) * 2.0**scale_log2
        w[width:, half:] = rng.uniform(0.5, 1.5, (width, half)) * 2.0**-scale_log2
        params[f"W{layer}"] = w
        nodes += [helper.make_node("Gemm", [x, f"W{layer}"], [f"h{layer}"], transB=1),
                  helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"])]
        x = f"r{layer}"
    head = np.zeros((2, 2 * width))
    head[0, :width], head[1, width:] = 2.0**scale_log2, 2.0**-scale_log2
    params["Wo"] = head
    nodes.append(helper.make_node("Gemm", [x, "Wo"], ["y"], transB=1))
    return make_model(nodes, [("x", [1, 4])], [("y", [1, 2])], params)


@pytest.mark.parametrize("scale_log2", [10, 30])
@pytest.mark.parametrize("q", [1.0, 2.0, math.inf])
def test_outputs_far_apart_in_one_tensor_are_each_exact(scale_log2: int, q: float) -> None:
    """A model built to defeat one scale per tensor: the small neuron is about 2**-80 (2**-240) of the large one
    at q = ∞, its q-th power 2**-80q (2**-240q) at q."""
    truth = log10_output_path_norms(_towers(scale_log2), q)
    assert max(truth.values()) - min(truth.values()) > 8 * scale_log2 * math.log10(2) - 2
    _assert_matches(_towers(scale_log2), q)


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_a_fixed_batch_reports_one_samples_neurons(q: float) -> None:
    """``y[2, 3]`` from ``x[2, 4]``: the report has shape ``[1, 3]``, and each neuron is what the oracle finds for
    that neuron in every sample (the samples share no path)."""
    rng = np.random.default_rng(0)
    params = {"W1": rng.normal(size=(5, 4)), "b1": rng.normal(size=5), "W2": rng.normal(size=(3, 5)), "b2": rng.normal(size=3)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    model = make_model(nodes, [("x", [2, 4])], [("y", [2, 3])], params)
    (norms,) = api.output_norms(model, [q]).norms
    assert norms.shape == (1, 3) and norms.certified.all()
    for (_, i), want in log10_output_path_norms(model, q).items():
        assert norms.log10[i % 3] == pytest.approx(want, abs=TOL), i


def test_a_refused_fallback_leaves_no_value_and_a_sound_interval(monkeypatch, capsys, tmp_path) -> None:
    """Above the fallback's work limit, the neurons float32 did not certify have no value (JSON null) and the
    reason, their interval still holding the truth; the certified ones keep theirs; the text says so."""
    model = _towers(30)
    truth = log10_output_path_norms(model, 2.0)
    monkeypatch.setattr(exact, "WORK_LIMIT", 10)
    (norms,) = api.output_norms(model, [2.0]).norms
    assert norms.fallback is None and "above its limit" in norms.reason and not norms.certified.all()
    values = norms.values()
    for (_, i), want in truth.items():
        assert norms.lower_log10[i] - TOL <= want <= norms.upper_log10[i] + TOL, i
        assert values[i] is None if not norms.certified[i] else values[i] == pytest.approx(10**want, rel=1e-5), i
    path = save(model, tmp_path / "towers.onnx")
    rc, out, err = run_main(capsys, "outputs", path, "-q", 2, "--json")
    (d,) = json.loads(out)["outputs"]
    assert rc == 0 and None in d["value"] and "above its limit" in d["reason"], err
    rc, out, err = run_main(capsys, "outputs", path, "-q", 2)
    assert rc == 0 and "without a value: float32 did not certify every neuron, and the exact float64 fallback" in out


@pytest.mark.parametrize("q", [1.0, 3.0, math.inf])
@pytest.mark.parametrize("name", sorted(ALL_NETS))
def test_exact_fallback_neuron_by_neuron(name: str, q: float) -> None:
    """The float64 fallback's per-neuron logs (what pins down the neurons float32 leaves uncertified)."""
    model, _ = ALL_NETS[name](3)
    dag = import_model(model)
    _, logs = exact_logs(dag, q)
    oracle = log10_output_path_norms(model, q)
    scale = math.log10(2) if math.isinf(q) else math.log10(2) / q
    for (output, i), truth in oracle.items():
        values, err = logs[output]
        assert err < 1e-9
        assert float(values.reshape(-1)[i]) * scale == pytest.approx(truth, abs=TOL), (output, i)


def test_outputs_command(capsys, tmp_path) -> None:
    """JSON: one object, every neuron listed, their q-th powers summing to the hand network's closed form;
    text: the largest neuron named; a bad q: exit 2 with one line."""
    path = save(hand_mlp(), tmp_path / "hand.onnx")
    rc, out, err = run_main(capsys, "outputs", path, "-q", 1, "-q", 2, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert [(o["output"], o["q"], o["shape"]) for o in d["outputs"]] == [("y", 1.0, [1, 2]), ("y", 2.0, [1, 2])]
    for o in d["outputs"]:
        assert all(o["certified"]) and o["fallback"] is None
        assert sum(v ** o["q"] for v in o["value"]) == pytest.approx(hand_norm(o["q"]) ** o["q"], rel=1e-6)
    rc, out, err = run_main(capsys, "outputs", path)
    assert rc == 0 and "'y' [1, 2], L1: largest" in out and "L2: largest" in out, (out, err)
    rc, out, err = run_main(capsys, "outputs", path, "-q", "0.5")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "q must be a number ≥ 1" in err
