"""The library function behind each command (``onnx_pathlift.api``, ``prune.prune_weights`` /
``prune_channel_groups``) and the command line's contract with it: the CLI's ``--json`` object is the
report's ``to_dict()``, compare pairs the layers once, docs/api.md is generated from the docstrings.

Numbers are checked against closed forms on ``y = W2 relu(W1 x + b1) + b2``, in float64.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model
from conftest import run_main
from onnx import helper

from onnx_pathlift import api, cli, path_norm
from onnx_pathlift.analyses import metric, quant_bound
from onnx_pathlift.backend.verify import same_function
from onnx_pathlift.errors import UsageError
from onnx_pathlift.pruning.prune import prune_weights

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
W1 = np.array([[1, -2, 0, 3], [2, 1, -1, 0], [0, 0, 1, 1]], np.float32)
B1 = np.array([1, -1, 2], np.float32)
W2 = np.array([[1, 2, -1], [-3, 0, 1]], np.float32)
B2 = np.array([1, -2], np.float32)


def mlp(w2: np.ndarray = W2) -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [("x", [1, 4])], [("y", None)], {"W1": W1, "b1": B1, "W2": w2, "b2": B2})


def closed_form(q: float) -> float:
    """(Σ_k [Σ_j |W2_kj|^q (‖W1_j‖_q^q + |b1_j|^q) + |b2_k|^q])^(1/q) in float64."""
    u, b, v, c = (np.abs(a.astype(np.float64)) for a in (W1, B1, W2, B2))
    total = sum(sum(v[k, j] ** q * ((u[j] ** q).sum() + b[j] ** q) for j in range(3)) + c[k] ** q for k in range(2))
    return float(total ** (1.0 / q))


def test_compute_norms_one_session_per_q_gives_the_same_certified_norms(tmp_path, monkeypatch) -> None:
    """Large models get one lifted session per q (less memory at once): same values and intervals,
    and both match the closed form."""
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    together = api.compute_norms(str(path), [1.0, 2.0, 3.0]).norms
    monkeypatch.setattr(api, "ONE_SESSION_BYTES", 0)
    apart = api.compute_norms(str(path), [1.0, 2.0, 3.0]).norms
    assert [n.q for n in apart] == [1.0, 2.0, 3.0]
    for a, b in zip(together, apart):
        assert (a.lower_log10, a.log10, a.upper_log10, a.certified) == (b.lower_log10, b.log10, b.upper_log10, b.certified)
        assert b.value == pytest.approx(closed_form(b.q), rel=1e-6)


def test_compute_norms_matches_the_closed_form_and_the_cli_json(tmp_path, capsys) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    report = api.compute_norms(str(path), [1.0, 2.0, 3.0], verify=True)
    assert report.passed and report.verify.trials == 3
    for n in report.norms:
        assert n.value == pytest.approx(closed_form(n.q), rel=1e-6)
    rc, out, err = run_main(capsys, "norm", path, "-q", 1, "-q", 2, "-q", 3, "--verify", "--json")
    assert rc == 0, err
    cli_json, lib_json = json.loads(out), report.to_dict()
    assert cli_json.pop("timings").keys() == lib_json.pop("timings").keys() == {"import_s", "session_s", "run_s"}
    assert cli_json == json.loads(json.dumps(lib_json))


def test_compare_pairs_the_layers_once(monkeypatch) -> None:
    calls = []
    real = metric.pair_layers

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(metric, "pair_layers", counted)
    monkeypatch.setattr(quant_bound, "pair_layers", counted)
    a, b = MODELS / "digits_cnn_torch_bn.onnx", MODELS / "digits_cnn_torch_bn_pruned50.onnx"
    result = api.compare_models(str(a), str(b), check=4)
    assert len(calls) == 1  # comparable() once; path_metric, certify and check_bound reuse its pairing
    assert result.violation is None and not result.check.violated
    # the same numbers as the stand-alone path_metric, which pairs by itself
    alone = metric.path_metric(str(a), str(b))
    assert len(calls) == 2
    assert (result.metric.lower_log10, result.metric.upper_log10) == (alone.lower_log10, alone.upper_log10)
    assert result.metric.exact


def test_same_function_measures_the_relative_output_change() -> None:
    dag = api.load(mlp()).dag
    assert same_function(mlp(), mlp(), dag, trials=3).max_rel_error == {"y": 0.0}
    # doubling W2 and b2 doubles y exactly: max|2y − y| / max|y| = 1
    doubled = make_model(mlp().graph.node, [("x", [1, 4])], [("y", None)],
                         {"W1": W1, "b1": B1, "W2": 2 * W2, "b2": 2 * B2})
    report = same_function(mlp(), doubled, dag, trials=2, seed=5)
    assert not report.passed and report.max_rel_error["y"] == pytest.approx(1.0, rel=1e-6)


def test_rescale_model_keeps_the_function_and_the_path_norm(tmp_path) -> None:
    out = tmp_path / "r.onnx"
    result = api.rescale_model(mlp().SerializeToString(), out, seed=2, low=1 / 64, high=64.0)
    assert result.neurons == 3 and result.layers == 1 and result.check.passed
    assert result.max_rel_output_change <= 1e-4
    rescaled = onnx.load(out)
    w1 = onnx.numpy_helper.to_array(next(t for t in rescaled.graph.initializer if t.name == "W1"))
    assert not np.allclose(w1, W1)  # other weights ...
    for q in (1.0, 2.0):  # ... same path-lifting
        assert path_norm(rescaled, q).value == pytest.approx(closed_form(q), rel=1e-5)
    with pytest.raises(UsageError):
        api.rescale_model(mlp(), None, low=2.0, high=1.0)


def test_write_lifted_names_the_sha256_of_bytes(tmp_path) -> None:
    data = mlp().SerializeToString()
    report = api.write_lifted(data, tmp_path / "l.onnx", q=2.0)
    props = {p.key: p.value for p in onnx.load(tmp_path / "l.onnx").metadata_props}
    assert props["onnx_pathlift.source_sha256"] == hashlib.sha256(data).hexdigest()
    assert report.norm.value == pytest.approx(closed_form(2.0), rel=1e-6)


def test_prune_weights_in_memory_data_and_the_exact_metric(tmp_path) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (20, 4)).astype(np.float32)
    y = np.argmax(np.maximum(x @ W1.T + B1, 0) @ W2.T + B2, axis=1)
    result = prune_weights(mlp(), 0.5, tmp_path / "p.onnx", criterion="magnitude", eval_data={"x": x, "y": y})
    assert result.accuracy[0] == 1.0  # the labels are the model's own
    assert result.report.total == 18 and sum(int(np.count_nonzero(~m)) for m in result.keep.values()) == 9
    pruned = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "p.onnx").graph.initializer}
    # |θ'| ≤ |θ| everywhere: d = ‖Φ(θ)‖_1 − ‖Φ(θ')‖_1, in closed form from both weight sets
    u, b, v, c = (np.abs(pruned[k].astype(np.float64)) for k in ("W1", "b1", "W2", "b2"))
    after = sum(sum(v[k, j] * (u[j].sum() + b[j]) for j in range(3)) + c[k] for k in range(2))
    assert result.metric.exact and result.metric.upper == pytest.approx(closed_form(1.0) - after, rel=1e-5)


def test_usage_errors_carry_no_state_between_calls(capsys, tmp_path) -> None:
    rc, out, _ = run_main(capsys, "norm", "--json")
    assert rc == 2 and json.loads(out)["exit_code"] == 2
    rc, out, err = run_main(capsys, "norm")
    assert rc == 2 and out == "" and "onnx-pathlift: error:" in err
    args = cli.build_parser().parse_args(["lipschitz", str(tmp_path / "m.onnx")])
    assert not hasattr(args, "q")  # only norm, lift and audit take -q


def test_no_function_over_60_lines() -> None:
    long = [(str(path.relative_to(ROOT)), node.name) for path in sorted((ROOT / "onnx_pathlift").rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long, long


def test_api_page_is_generated_from_the_docstrings() -> None:
    spec = importlib.util.spec_from_file_location("api_doc", ROOT / "tools" / "api_doc.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert (ROOT / "docs" / "api.md").read_text(encoding="utf-8") == tool.render(), "run python tools/api_doc.py"
    for _, module, names in tool.SECTIONS:  # each listed function documents itself
        for name in names:
            assert getattr(importlib.import_module(module), name).__doc__, (module, name)
