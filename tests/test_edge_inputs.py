"""Valid inputs that used to crash: ``compare --check`` on models whose float32 outputs overflow, and
``rescale`` on a model with an initializer that feeds two nodes; and no RuntimeWarning on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import inits, make_model, random_mlp, replace_inits
from conftest import MODELS, run_cli, run_main
from onnx import helper
from oracle import log10_path_norm

from onnx_pathlift import api, path_norm


def _overflowing(tmp_path, factor: float) -> tuple[str, str]:
    """A random MLP with its weights times ``factor`` and a copy with them 1% larger, saved."""
    model = random_mlp(0)
    p = {k: v for k, v in inits(model).items() if v.ndim == 2}
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(replace_inits(model, {k: v * factor for k, v in p.items()}), a)
    onnx.save(replace_inits(model, {k: v * factor * 1.01 for k, v in p.items()}), b)
    return str(a), str(b)


def test_check_says_when_float32_outputs_overflow(tmp_path, capsys) -> None:
    """Outputs of 1e40 (two layers of 1e20 weights) are inf in float32: the check says it is impossible
    (no largest change, every evaluation counted unevaluated), and never "not violated" silently."""
    a, b = _overflowing(tmp_path, 1e20)
    c = api.compare_models(a, b, check=10)
    assert c.check.max_observed is None and c.check.ratio is None and not c.check.violated
    assert c.check.unevaluated == c.check.evaluations == 21 and "impossible" in c.check.note
    rc, out, err = run_main(capsys, "compare", a, b, "--check", 10)
    assert rc == 0 and "check: NOT done" in out and "overflowed float32" in out, err
    rc, out, _ = run_main(capsys, "compare", a, b, "--check", 10, "--json")
    assert rc == 0 and json.loads(out)["check"]["max_observed"] is None


def test_check_counts_the_overflowing_evaluations_and_checks_the_others(tmp_path) -> None:
    """At 1e19 some inputs overflow and some do not: the finite ones are checked against the bound."""
    a, b = _overflowing(tmp_path, 1e19)
    check = api.compare_models(a, b, check=10).check
    assert 0 < check.unevaluated < check.evaluations and "not checked" in check.note
    assert 0 < check.max_observed <= check.bound and not check.violated


def _shared_net() -> onnx.ModelProto:
    """x → Wa → Relu → Wb → Relu → Ws → Relu → Ws → Relu → Wc: ``Ws`` feeds two MatMuls."""
    rng = np.random.default_rng(0)
    shapes = {"Wa": (4, 5), "Wb": (5, 6), "Ws": (6, 6), "Wc": (6, 3)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    nodes, x = [], "x"
    for i, w in enumerate(["Wa", "Wb", "Ws", "Ws", "Wc"]):
        nodes.append(helper.make_node("MatMul", [x, w], [f"m{i}"]))
        x = f"m{i}"
        if w != "Wc":
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return make_model(nodes, [("x", [1, 4])], [("y", [1, 3])], params)


def test_rescale_leaves_shared_initializers_alone_and_says_so(tmp_path, capsys) -> None:
    model = _shared_net()
    result = api.rescale_model(model, tmp_path / "r.onnx", seed=1)
    assert (result.neurons, result.shared) == (5, 18) and result.check.passed
    assert "18 channel(s) left alone" in result.note
    before, after = inits(model), inits(onnx.load(tmp_path / "r.onnx"))
    assert np.array_equal(before["Ws"], after["Ws"]) and not np.array_equal(before["Wa"], after["Wa"])
    onnx.save(model, tmp_path / "m.onnx")
    rc, out, err = run_main(capsys, "rescale", tmp_path / "m.onnx", "-o", tmp_path / "r2.onnx", "--json")
    assert rc == 0 and json.loads(out)["shared"] == 18, err


def test_rescale_says_when_it_rescaled_nothing(tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m0"]), helper.make_node("Relu", ["m0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "W"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], {"W": rng.normal(size=(4, 4))}), path)
    rc, out, err = run_main(capsys, "rescale", path, "-o", tmp_path / "r.onnx")
    assert rc == 0, err
    assert "rescaled 0 neurons" in out and "note: rescaled nothing: the output is an unchanged copy (4 channel(s)" in out


def test_no_runtime_warning_on_stderr(tmp_path) -> None:
    """norm and compare of the shipped CNN and a rescaled copy with RuntimeWarnings made errors."""
    other = tmp_path / "r.onnx"
    cnn = MODELS / "digits_cnn_torch_bn.onnx"
    assert run_cli("rescale", cnn, "--range", 1e-6, 1e6, "-o", other).returncode == 0
    for args in (["norm", cnn, "-q", 1, "-q", 2, "-q", "inf"], ["compare", cnn, other], ["lipschitz", cnn]):
        proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "onnx_pathlift.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0 and "RuntimeWarning" not in proc.stderr, proc.stderr


def test_a_corner_pixel_far_below_its_channel_keeps_a_sound_interval() -> None:
    """A model built against per-channel exponent maps (issue 26): a conv whose corner output is 1e60
    below the rest of its channel (the corner reads only the 1e-30 taps), then a per-pixel Mul that
    amplifies the corner by 1e76 and damps the rest: the corner's paths carry the norm. Whatever is
    computed, the certified interval holds the log-domain brute force; a certified value equals it."""
    k = np.full((1, 1, 3, 3), 1e30, np.float32)
    k[0, 0, 1:, 1:] = 1e-30
    d = np.full((1, 1, 3, 3), 1e-38, np.float32)
    d[0, 0, 0, 0] = 1e38
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Mul", ["r", "d"], ["y"])]
    model = make_model(nodes, [("x", [1, 1, 3, 3])], [("y", [1, 1, 3, 3])], {"k": k, "d": d})
    for q in (1.0, 2.0, 4.0):
        got, want = path_norm(model, q), log10_path_norm(model, q)
        assert got.lower_log10 <= want + 1e-9 and want <= got.upper_log10 + 1e-9, (q, got, want)
        assert got.lower_log10 <= got.log10 <= got.upper_log10  # the estimate never outside (it was -inf)
        if got.certified:
            assert got.log10 == pytest.approx(want, abs=1e-6)


def test_rescale_says_why_it_rescaled_nothing_when_a_bias_is_a_constant_node(tmp_path, capsys) -> None:
    """The chain's bias comes from a Constant node, not an initializer: nothing to write it back to."""
    rng = np.random.default_rng(2)
    bias = helper.make_tensor("b", onnx.TensorProto.FLOAT, [4], rng.normal(size=4).tolist())
    nodes = [helper.make_node("Constant", [], ["b"], value=bias), helper.make_node("MatMul", ["x", "W1"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("x", [1, 3])], [("y", [1, 2])], {"W1": rng.normal(size=(3, 4)), "W2": rng.normal(size=(4, 2))}),
              path)
    rc, out, err = run_main(capsys, "rescale", path, "-o", tmp_path / "r.onnx")
    assert rc == 0, err
    assert "rescaled 0 neurons" in out and "whose weights and biases are all initializers" in out
