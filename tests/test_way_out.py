"""Refusals that show the way out: a refused model names the nearest tensors that do import and the exact
command that analyses them (which then runs, and its path-norm is the brute-force one of the network cut
there); ``inspect`` lists them; the model's own Softmax output analyses the logits before it; unknown
``--output`` / ``--input-shape`` names list the valid ones; a folder given to ``norm`` says so."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from builders import make_model
from conftest import run_main
from onnx import TensorProto, helper
from oracle import brute_force_path_norm

RNG = np.random.default_rng(28)
W1, B1 = RNG.normal(size=(3, 4)), RNG.normal(size=4)
W2, B2 = RNG.normal(size=(4, 2)), RNG.normal(size=2)
W3, B3 = RNG.normal(size=(4, 3)), RNG.normal(size=3)


def gemm(x: str, w: str, b: str, y: str) -> helper.NodeProto:
    return helper.make_node("Gemm", [x, w, b], [y], name=f"gemm_{y}")


def hidden() -> list:
    """x[1, 3] → Gemm → Relu = h[1, 4]."""
    return [gemm("x", "W1", "B1", "g"), helper.make_node("Relu", ["g"], ["h"], name="relu")]


def face_detector():
    """Like a face detector: scores (ok) from h, and boxes = Gemm(Exp(h)) behind a refused Exp in the middle."""
    nodes = [*hidden(), gemm("h", "W3", "B3", "scores"), helper.make_node("Exp", ["h"], ["e"], name="exp_459"),
             gemm("e", "W2", "B2", "boxes")]
    return make_model(nodes, [("x", [1, 3])], [("scores", [1, 3]), ("boxes", [1, 2])],
                      {"W1": W1, "B1": B1, "W2": W2, "B2": B2, "W3": W3, "B3": B3})


def unet():
    """Like a UNet: a float mask behind Greater → Cast, so that no float output is left."""
    nodes = [*hidden(), gemm("h", "W2", "B2", "out_mask"), helper.make_node("Greater", ["out_mask", "zero"], ["above"]),
             helper.make_node("Cast", ["above"], ["mask"], to=TensorProto.UINT8)]
    return make_model(nodes, [("x", [1, 3])], [("mask", [1, 2], TensorProto.UINT8)],
                      {"W1": W1, "B1": B1, "W2": W2, "B2": B2, "zero": np.zeros(1)})


def classifier():
    """logits → Softmax = probabilities, the graph output."""
    nodes = [*hidden(), gemm("h", "W2", "B2", "logits"), helper.make_node("Softmax", ["logits"], ["probabilities"])]
    return make_model(nodes, [("x", [1, 3])], [("probabilities", [1, 2])], {"W1": W1, "B1": B1, "W2": W2, "B2": B2})


def truncated(outputs: dict[str, list]) -> float:
    """The brute-force ‖Φ‖_1 of the network cut at ``outputs`` (h, scores, out_mask), built by hand."""
    nodes = [*hidden(), gemm("h", "W3", "B3", "scores"), gemm("h", "W2", "B2", "out_mask")]
    model = make_model(nodes, [("x", [1, 3])], [(o, s) for o, s in outputs.items()],
                       {"W1": W1, "B1": B1, "W2": W2, "B2": B2, "W3": W3, "B3": B3})
    return brute_force_path_norm(model, 1.0)


def run_suggested(capsys, err: str) -> dict:
    """Run the ``try:`` line of a refusal; return its JSON result."""
    line = next(x for x in err.splitlines() if x.strip().startswith("try: "))
    argv = shlex.split(line.strip()[len("try: "):])
    assert argv[0] == "onnx-pathlift"
    rc, out, err = run_main(capsys, *argv[1:], "--json")
    assert rc == 0, err
    return json.loads(out)


def test_refused_exp_in_the_middle_names_the_way_out_and_it_works(tmp_path, capsys):
    path = tmp_path / "face.onnx"
    path.write_bytes(face_detector().SerializeToString())
    rc, out, err = run_main(capsys, "norm", path, "-q", "1")
    assert rc == 3 and "exp_459 (Exp)" in err
    assert "analysable instead (the nearest tensors before the refusal): --output scores --output h" in err
    assert f"try: onnx-pathlift norm {path} -q 1 --output scores --output h" in err
    result = run_suggested(capsys, err)
    assert result["norms"][0]["value"] == pytest.approx(truncated({"scores": [1, 3], "h": [1, 4]}), rel=1e-6)

    rc, out, _ = run_main(capsys, "norm", path, "--output", "boxes", "--json")  # the user's --output is replaced
    assert rc == 3 and json.loads(out)["analysable_outputs"] == ["h"]
    assert json.loads(out)["command"] == f"onnx-pathlift norm {path} --json --output h"

    rc, out, err = run_main(capsys, "inspect", path)
    assert rc == 3 and "analysable instead (the nearest tensors before the refusal): --output scores --output h" in out
    assert f"try: onnx-pathlift norm {path} --output scores --output h" in err
    rc, out, _ = run_main(capsys, "inspect", path, "--json")
    assert json.loads(out)["analysable_outputs"] == ["scores", "h"]


def test_unet_without_float_output_names_its_mask(tmp_path, capsys):
    path = tmp_path / "unet.onnx"
    path.write_bytes(unet().SerializeToString())
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 3 and "no float output tensor left" in err and "--output out_mask" in err
    result = run_suggested(capsys, err)
    assert result["outputs"] == ["out_mask"]
    assert result["norms"][0]["value"] == pytest.approx(truncated({"out_mask": [1, 2]}), rel=1e-6)
    rc, _, err = run_main(capsys, "norm", path, "--output", "mask")  # naming the integer output itself
    assert rc == 2 and "the nearest float tensors before them: ['out_mask']" in err


def test_softmax_output_analyses_the_logits_with_a_note(tmp_path, capsys):
    path = tmp_path / "cls.onnx"
    path.write_bytes(classifier().SerializeToString())
    rc, out, err = run_main(capsys, "norm", path, "--output", "probabilities", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["outputs"] == ["logits"]
    assert any("Softmax" in n and "'logits'" in n for n in result["notes"])
    rc, out, _ = run_main(capsys, "norm", path, "--output", "logits", "--json")
    assert rc == 0 and json.loads(out)["norms"] == result["norms"]


def test_unknown_names_list_the_valid_ones_and_a_folder_says_so(tmp_path, capsys):
    path = tmp_path / "face.onnx"
    path.write_bytes(face_detector().SerializeToString())
    rc, _, err = run_main(capsys, "norm", path, "--output", "score")
    assert rc == 2 and "the graph outputs are ['scores', 'boxes']" in err and "near names: ['scores']" in err
    rc, _, err = run_main(capsys, "norm", path, "--input-shape", "input=1x3")
    assert rc == 2 and "the model's inputs are ['x']" in err
    rc, _, err = run_main(capsys, "norm", tmp_path)
    assert rc == 2 and "is a folder" in err and f"onnx-pathlift audit {tmp_path}" in err
    rc, _, err = run_main(capsys, "compare", path, tmp_path)
    assert rc == 2 and "is a folder" in err
