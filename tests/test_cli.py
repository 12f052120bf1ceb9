"""The ``onnx-pathlift`` command line: exit codes, JSON output, messages, and the numbers it prints.

Exit-code contract: 0 ok, 1 anything else, 2 usage, 3 unsupported operators (every offending node
listed), 4 unreadable or invalid model. The CLI runs both as a subprocess
(``python -m onnx_pathlift.cli``) and in-process through ``onnx_pathlift.cli.main``.

Every model except the two shipped ones is built here with ``onnx.helper`` (opset 17, float32).
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import B1, B2, W1, W2, hand_mlp, hand_norm, make_model, save
from conftest import MODELS, norms_by_q, run_cli, run_main
from onnx import helper
from oracle import log10_path_norm

import onnx_pathlift

CNN = MODELS / "digits_cnn_torch.onnx"
MLP = MODELS / "digits_mlp_sklearn.onnx"
SHIPPED = {"cnn": CNN, "mlp": MLP}

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def hidden_closed_form_qq(q: float) -> float:
    """||Φ||_q^q of the hidden pre-activation h = W1 x + b1 alone: Σ_j ||u_j||_q^q + |b_j|^q."""
    u, b = np.abs(W1.astype(np.float64)), np.abs(B1.astype(np.float64))
    return float((u ** q).sum() + (b ** q).sum())


@pytest.fixture
def hand_path(tmp_path) -> Path:
    return save(hand_mlp(), tmp_path / "hand.onnx")


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def test_module_entry_point_runs():
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"onnx-pathlift {onnx_pathlift.__version__}"


def test_in_process_and_subprocess_agree(capsys, hand_path):
    rc, out, err = run_main(capsys, "norm", hand_path, "-q", 1, "-q", 2, "--json")
    assert rc == 0, err
    proc = run_cli("norm", hand_path, "-q", 1, "-q", 2, "--json")
    assert proc.returncode == 0, proc.stderr
    assert norms_by_q(json.loads(out)) == norms_by_q(json.loads(proc.stdout))


def test_default_q_is_1_and_2(capsys, hand_path):
    rc, out, _ = run_main(capsys, "norm", hand_path, "--json")
    assert rc == 0
    assert [n["q"] for n in json.loads(out)["norms"]] == [1.0, 2.0]


# --------------------------------------------------------------------------------------------
# norm on the shipped models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(SHIPPED))
def test_norm_json_on_shipped_models(which):
    proc = run_cli("norm", SHIPPED[which], "-q", 1, "-q", 2, "-q", 4, "--json", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["provider"] == "cpu"
    norms = result["norms"]
    assert [n["q"] for n in norms] == [1.0, 2.0, 4.0]
    for n in norms:
        assert {"q", "value", "log10"} <= set(n)
        assert isinstance(n["value"], float) and math.isfinite(n["value"]) and n["value"] > 0
        assert math.isfinite(n["log10"])
        assert n["value"] == pytest.approx(10.0 ** n["log10"], rel=1e-12)
    l1, l2, l4 = (n["value"] for n in norms)
    # q-norms of one and the same vector (the path-lifting) decrease with q
    assert l1 >= l2 >= l4
    assert l1 > l4  # (strict: these networks have more than one nonzero path)
    assert result["verify"]["passed"] is True
    assert all(e <= result["verify"]["rtol"] for e in result["verify"]["max_rel_error"].values())
    if which == "mlp":  # symbolic batch only: batch 1 by default; Softmax head cut; int64 label dropped
        assert result["input_shapes"] == {"input": [1, 64]}
        assert "label" not in result["outputs"] and "probabilities" not in result["outputs"]
        assert any("Softmax" in note for note in result["notes"])
        assert result["parameters"] == 6570
    else:
        assert result["input_shapes"] == {"input": [1, 1, 8, 8]}
        assert result["outputs"] == ["logits"]
        assert result["parameters"] == 2586


def test_norm_text_output(capsys):
    rc, out, err = run_main(capsys, "norm", CNN, "-q", 1, "-q", 2)
    assert rc == 0, err
    assert "L1 path-norm = " in out and "L2 path-norm = " in out
    assert "2586 parameters" in out


# --------------------------------------------------------------------------------------------
# a hand-computable network
# --------------------------------------------------------------------------------------------


def test_hand_computable_closed_form(capsys, hand_path):
    assert hand_norm(1) == 49.0  # the arithmetic of the fixture itself
    rc, out, err = run_main(capsys, "norm", hand_path, "-q", 1, "-q", 2, "-q", 3, "--json")
    assert rc == 0, err
    result = json.loads(out)
    got = norms_by_q(result)
    for q in (1.0, 2.0, 3.0):
        assert got[q] == pytest.approx(hand_norm(q), rel=1e-6, abs=1e-6), q
    assert result["parameters"] == W1.size + B1.size + W2.size + B2.size
    assert result["outputs"] == ["y"]
    assert result["input_shapes"] == {"x": [1, 4]}


# --------------------------------------------------------------------------------------------
# lift
# --------------------------------------------------------------------------------------------


def _evaluate_lifted(path: Path, q: float) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones(i.shape, np.float32) for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    res = dict(zip(names, sess.run(None, feeds)))
    scales = [n for n in names if n.endswith("__log2_scale")]
    assert scales, names
    total = 0.0
    for s in scales:
        o = s[: -len("__log2_scale")]
        assert o in res
        k = np.asarray(res[s], dtype=np.float64)  # one exponent, or a map broadcastable to the output
        assert np.all(k[np.isfinite(k)] == np.round(k[np.isfinite(k)]))  # exact powers of two
        np.broadcast_shapes(k.shape, res[o].shape)
        total += float(np.sum(res[o].astype(np.float64) * np.exp2(k)))
    return total ** (1.0 / q)


@pytest.mark.parametrize("which", ["hand", "cnn", "mlp"])
@pytest.mark.parametrize("q", [1, 3])
def test_lift_matches_norm(capsys, tmp_path, which, q):
    src = save(hand_mlp(), tmp_path / "hand.onnx") if which == "hand" else SHIPPED[which]
    out = tmp_path / "out.onnx"
    rc, stdout, err = run_main(capsys, "lift", src, "-q", q, "-o", out, "--json")
    assert rc == 0, err
    info = json.loads(stdout)
    assert Path(info["written"]) == out and info["q"] == q
    assert all(pair[1] == pair[0] + "__log2_scale" for pair in info["outputs"])
    assert out.is_file()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    lifted = _evaluate_lifted(out, q)
    rc, stdout, err = run_main(capsys, "norm", src, "-q", q, "--json")
    assert rc == 0, err
    expected = norms_by_q(json.loads(stdout))[float(q)]
    assert lifted == pytest.approx(expected, rel=1e-5)
    if which == "hand":
        assert lifted == pytest.approx(hand_norm(q), rel=1e-6)


def test_lift_subprocess_text(tmp_path, hand_path):
    out = tmp_path / "lifted.onnx"
    proc = run_cli("lift", hand_path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and str(out) in proc.stdout
    assert _evaluate_lifted(out, 1.0) == pytest.approx(hand_norm(1), rel=1e-6)


# --------------------------------------------------------------------------------------------
# exit 4: unreadable or invalid model files
# --------------------------------------------------------------------------------------------


def _bad_file(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A bad model path and a word its error message must contain."""
    path = tmp_path / f"{kind}.onnx"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return path, "not an ONNX model"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind in ("truncated_cnn", "truncated_mlp"):
        data = (CNN if kind == "truncated_cnn" else MLP).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "not an ONNX model"
    if kind == "missing":
        return tmp_path / "does_not_exist.onnx", "no such file"
    raise AssertionError(kind)


BAD_FILES = ["random", "empty", "truncated_cnn", "truncated_mlp", "missing"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unreadable_model_exits_4(tmp_path, kind):
    path, word = _bad_file(kind, tmp_path)
    proc = run_cli("norm", path)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("onnx-pathlift: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert word in proc.stderr
    assert path.name in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unreadable_model_exits_4_json_and_lift(capsys, tmp_path, kind):
    path, word = _bad_file(kind, tmp_path)
    rc, out, err = run_main(capsys, "norm", path, "--json")
    assert rc == 4
    payload = json.loads(out)
    assert payload["exit_code"] == 4 and payload["error"] == "InvalidModelError"
    assert word in payload["message"]
    assert "norms" not in payload
    rc, out, err = run_main(capsys, "lift", path, "-o", tmp_path / "never.onnx")
    assert rc == 4
    assert err.startswith("onnx-pathlift: error:") and "Traceback" not in err
    assert not (tmp_path / "never.onnx").exists()


# --------------------------------------------------------------------------------------------
# exit 3: unsupported operators, every offending node listed
# --------------------------------------------------------------------------------------------


def two_unsupported_branches() -> onnx.ModelProto:
    """x → MatMul → {Sigmoid, Tanh} → Add: two independent refusals."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
        helper.make_node("Sigmoid", ["h"], ["a"], name="bad_sigmoid"),
        helper.make_node("Tanh", ["h"], ["b"], name="bad_tanh"),
        helper.make_node("Add", ["a", "b"], ["y"], name="sum"),
    ]
    return make_model(nodes, [("x", [1, 4])], [("y", None)], {"W": np.eye(4, dtype=np.float32)})


def sigmoid_then_lrn() -> onnx.ModelProto:
    """x → Sigmoid → Reshape → LRN → Flatten: two unsupported nodes in a chain."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"], name="sig_node"),
        helper.make_node("Reshape", ["a", "shp"], ["a4"], name="resh"),
        helper.make_node("LRN", ["a4"], ["b"], name="lrn_node", size=3),
        helper.make_node("Flatten", ["b"], ["y"], name="flat"),
    ]
    return make_model(nodes, [("x", [1, 4])], [("y", None)], {"shp": np.array([1, 4, 1, 1], np.int64)})


def test_two_unsupported_nodes_exit_3(tmp_path):
    path = save(two_unsupported_branches(), tmp_path / "two_bad.onnx")
    proc = run_cli("norm", path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("onnx-pathlift: error:") and "Traceback" not in proc.stderr
    assert "bad_sigmoid" in proc.stderr and "bad_tanh" in proc.stderr
    assert "Sigmoid" in proc.stderr and "Tanh" in proc.stderr
    assert "2 node(s)" in proc.stderr
    assert "'sum'" not in proc.stderr  # the Add downstream is supported: not a refusal


def test_two_unsupported_nodes_json_refusals(capsys, tmp_path):
    path = save(two_unsupported_branches(), tmp_path / "two_bad.onnx")
    for cmd in (["norm", path, "--json"], ["lift", path, "-o", tmp_path / "x.onnx", "--json"]):
        rc, out, _ = run_main(capsys, *cmd)
        assert rc == 3
        payload = json.loads(out)
        assert payload["exit_code"] == 3 and payload["error"] == "UnsupportedModelError"
        refusals = payload["refusals"]
        assert len(refusals) == 2
        assert {r["node"]: r["op_type"] for r in refusals} == {"bad_sigmoid": "Sigmoid", "bad_tanh": "Tanh"}
        for r in refusals:
            assert set(r) >= {"node", "op_type", "reason"}
            assert "piecewise-linear" in r["reason"]


def test_chained_unsupported_nodes_all_listed(capsys, tmp_path):
    path = save(sigmoid_then_lrn(), tmp_path / "sig_lrn.onnx")
    rc, out, _ = run_main(capsys, "norm", path, "--json")
    assert rc == 3
    names = {r["node"] for r in json.loads(out)["refusals"]}
    assert names == {"sig_node", "lrn_node"}


# --------------------------------------------------------------------------------------------
# exit 2: usage errors, symbolic dimensions
# --------------------------------------------------------------------------------------------


def test_norm_without_model_exits_2():
    proc = run_cli("norm")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_norm_without_model_exits_2_in_process(capsys):
    rc, _, err = run_main(capsys, "norm")
    assert rc == 2
    assert "onnx-pathlift: error:" in err and "required" in err


@pytest.mark.parametrize(
    "args, word",
    [
        (["-q", "0.5"], "q must be"),
        (["-q", "0"], "q must be"),
        (["-q", "nan"], "q must be"),
        (["-q", "abc"], "invalid float value"),
        (["--input-shape", "1xfoo"], "1xfoo"),
        (["--input-shape", "0x4"], "positive"),
        (["--input-shape", "2x4"], "contradicts"),
        (["--input-shape", "1x4x1"], "rank"),
        (["--provider", "tpu"], "invalid choice"),
        (["--output", "no_such_tensor"], "no_such_tensor"),
    ],
)
def test_bad_arguments_exit_2(capsys, hand_path, args, word):
    rc, out, err = run_main(capsys, "norm", hand_path, *args)
    assert rc == 2, (out, err)
    assert "onnx-pathlift: error:" in err and word in err
    assert "Traceback" not in err and "internal error" not in err


def test_bad_q_exits_2_subprocess(hand_path):
    proc = run_cli("norm", hand_path, "-q", "0.5")
    assert proc.returncode == 2
    assert proc.stderr.startswith("onnx-pathlift: error:") and "0.5" in proc.stderr


def test_lift_bad_q_exits_2(capsys, tmp_path, hand_path):
    rc, _, err = run_main(capsys, "lift", hand_path, "-q", "0.5", "-o", tmp_path / "o.onnx")
    assert rc == 2, err
    rc, _, err = run_main(capsys, "lift", hand_path, "-q", "2", "-q", "1", "-o", tmp_path / "o.onnx")
    assert rc == 2 and "give one -q (got 2, 1" in err and not (tmp_path / "o.onnx").exists()


def _run_recipe(stdout: str) -> float:
    """Run the ``python -c`` line that ``lift`` prints, as a shell would split it; its printed number."""
    line = next(x for x in stdout.splitlines() if x.startswith("e.g.  python -c "))
    argv = shlex.split(line[len("e.g.  "):])
    proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return float(proc.stdout)


@pytest.mark.parametrize("which", ["hand", "cnn"])
@pytest.mark.parametrize("q", ["1", "3", "inf"])
def test_lift_prints_a_recipe_that_runs(capsys, tmp_path, which, q):
    """The printed recipe, executed, gives the norm (q = inf: the largest path product, by the log-domain
    oracle); the value beside the formula is its value (‖Φ‖_q^q), not a log."""
    src = save(hand_mlp(), tmp_path / "hand.onnx") if which == "hand" else SHIPPED[which]
    rc, out, err = run_main(capsys, "lift", src, "-q", q, "-o", tmp_path / "it's lifted.onnx")
    assert rc == 0, err
    got = _run_recipe(out)
    expected = 10 ** log10_path_norm(onnx.load(str(src)), float(q)) if which == "hand" else None
    rc, norm_out, _ = run_main(capsys, "norm", src, "-q", q, "--json")
    value = json.loads(norm_out)["norms"][0]["value"]
    assert got == pytest.approx(value, rel=1e-6)
    if expected is not None:
        assert got == pytest.approx(expected, rel=1e-6)
    here = out[out.index("(here: ") + 7:].split(")")[0]
    if q == "inf":
        assert float(here) == pytest.approx(value, rel=1e-5)
    else:
        total, norm = here.split(", so ||Phi||_q = ")
        assert float(total) == pytest.approx(value ** float(q), rel=1e-5) and float(norm) == pytest.approx(value, rel=1e-5)


def test_q_inf_is_not_an_internal_error(capsys, hand_path):
    rc, _, err = run_main(capsys, "norm", hand_path, "-q", "inf")
    assert rc in (0, 2), err
    assert "internal error" not in err


def _assert_hand_norms_batch_1(capsys, path, *extra) -> None:
    rc, out, err = run_main(capsys, "norm", path, *extra, "-q", 1, "-q", 2, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["input_shapes"] == {"x": [1, 4]}
    got = norms_by_q(result)
    assert got[1.0] == pytest.approx(hand_norm(1), rel=1e-6)
    assert got[2.0] == pytest.approx(hand_norm(2), rel=1e-6)


def test_symbolic_feature_dim_needs_input_shape(capsys, tmp_path):
    path = save(hand_mlp(input_shape=["N", "C"]), tmp_path / "sym.onnx")
    proc = run_cli("norm", path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("onnx-pathlift: error:")
    assert "--input-shape" in proc.stderr and "'x'" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_hand_norms_batch_1(capsys, path, "--input-shape", "1x4")
    # the NAME=SHAPE form works too
    rc, out, err = run_main(capsys, "norm", path, "--input-shape", "x=1x4", "-q", 1, "--json")
    assert rc == 0, err
    assert norms_by_q(json.loads(out))[1.0] == pytest.approx(hand_norm(1), rel=1e-6)
    rc, out, err = run_main(capsys, "norm", path, "--input-shape", "nope=1x4")
    assert rc == 2 and "nope" in err


def test_symbolic_batch_only_defaults_to_batch_1(capsys, tmp_path):
    path = save(hand_mlp(input_shape=["N", 4]), tmp_path / "batch.onnx")
    _assert_hand_norms_batch_1(capsys, path)


# --------------------------------------------------------------------------------------------
# --provider cuda without CUDA: exit 1, never a silent CPU run
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_provider_cuda_unavailable_exits_1(capsys, hand_path):
    proc = run_cli("norm", hand_path, "--provider", "cuda")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("onnx-pathlift: error:") and "Traceback" not in proc.stderr
    assert "CUDAExecutionProvider" in proc.stderr
    assert "pip install" in proc.stderr and "onnxruntime-gpu" in proc.stderr
    assert "path-norm" not in proc.stdout  # no number computed on the CPU instead
    rc, out, _ = run_main(capsys, "norm", hand_path, "--provider", "cuda", "--json")
    assert rc == 1
    payload = json.loads(out)
    assert payload["exit_code"] == 1 and "CUDAExecutionProvider" in payload["message"]
    assert "norms" not in payload


# --------------------------------------------------------------------------------------------
# output selection: trailing Softmax cut, --output NAME
# --------------------------------------------------------------------------------------------


def test_trailing_softmax_is_cut(capsys, tmp_path):
    with_sm = save(hand_mlp(softmax=True), tmp_path / "softmax.onnx")
    without = save(hand_mlp(), tmp_path / "plain.onnx")
    rc, out, err = run_main(capsys, "norm", with_sm, "-q", 1, "-q", 2, "--json")
    assert rc == 0, err
    res_sm = json.loads(out)
    rc, out, err = run_main(capsys, "norm", without, "-q", 1, "-q", 2, "--json")
    assert rc == 0, err
    res_plain = json.loads(out)
    assert any("Softmax" in n and "head_softmax" in n for n in res_sm["notes"]), res_sm["notes"]
    assert not any("Softmax" in n for n in res_plain["notes"])
    assert res_sm["outputs"] == ["y"]
    for q in (1.0, 2.0):
        assert norms_by_q(res_sm)[q] == pytest.approx(norms_by_q(res_plain)[q], rel=1e-12)
    assert norms_by_q(res_sm)[1.0] == pytest.approx(hand_norm(1), rel=1e-6)


def test_output_selects_intermediate_tensor(capsys, hand_path):
    for name in ("h", "r"):  # pre- and post-ReLU: same paths, same norm
        rc, out, err = run_main(capsys, "norm", hand_path, "--output", name, "-q", 1, "-q", 2, "--json")
        assert rc == 0, err
        result = json.loads(out)
        assert result["outputs"] == [name]
        assert result["parameters"] == W1.size + B1.size
        got = norms_by_q(result)
        assert got[1.0] == pytest.approx(hidden_closed_form_qq(1), rel=1e-6)  # = 16
        assert got[2.0] == pytest.approx(hidden_closed_form_qq(2) ** 0.5, rel=1e-6)


def test_several_outputs_add_their_qth_powers(capsys, hand_path):
    rc, out, err = run_main(capsys, "norm", hand_path, "--output", "h", "--output", "y", "-q", 1, "-q", 2, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["outputs"] == ["h", "y"]
    got = norms_by_q(result)
    for q in (1.0, 2.0):
        want = (hidden_closed_form_qq(q) + hand_norm(q) ** q) ** (1 / q)
        assert got[q] == pytest.approx(want, rel=1e-6)
    per = result["norms"][0]["per_output_log10"]
    assert per["h"] == pytest.approx(math.log10(16.0), rel=1e-9)
    assert per["y"] == pytest.approx(math.log10(49.0), rel=1e-9)


def test_output_naming_the_input_is_not_an_internal_error(capsys, hand_path):
    rc, _, err = run_main(capsys, "norm", hand_path, "--output", "x")
    assert rc in (0, 2), err
    assert "internal error" not in err


def test_in_process_usage_error_honours_json(capsys):
    rc, out, _ = run_main(capsys, "norm", "--json")
    assert rc == 2
    assert json.loads(out)["exit_code"] == 2


# --------------------------------------------------------------------------------------------
# exit 1: anything else (unexpected errors, a failed re-emission check)
# --------------------------------------------------------------------------------------------


def test_unexpected_error_exits_1_without_traceback(capsys, monkeypatch, hand_path):
    def boom(*args, **kwargs):
        raise RuntimeError("boom from a test")

    monkeypatch.setattr("onnx_pathlift.backend.norm.LiftedSession", boom)
    rc, _, err = run_main(capsys, "norm", hand_path)
    assert rc == 1
    assert err.startswith("onnx-pathlift: internal error: RuntimeError: boom from a test")
    assert "Traceback" not in err


def test_failed_verification_exits_1(capsys, monkeypatch, hand_path):
    import onnx_pathlift.backend.verify as verify_mod

    failing = verify_mod.VerifyReport(False, {"y": 0.5}, 3, 1e-4)
    monkeypatch.setattr(verify_mod, "verify", lambda *a, **k: failing)
    rc, out, err = run_main(capsys, "norm", hand_path, "--verify", "--json")
    assert rc == 1, err
    result = json.loads(out)
    assert result["verify"]["passed"] is False
    assert norms_by_q(result)[1.0] == pytest.approx(hand_norm(1), rel=1e-6)  # the numbers still come out
