"""Command-line conventions: ``python -m onnx_pathlift``, the ``--input-shape`` forms other tools
write, ``--help`` with defaults and examples, the ``scores`` table, and the lifted model's metadata."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import hand_mlp, hand_norm, save
from conftest import MODELS, norms_by_q, run_main
from onnx import helper

from onnx_pathlift import cli

FORMS = ["1x4", "1,4", "[1,4]", "x=1x4", "x=[1,4]", "x:1,4", "x:[1,4]", "x:(1,4)"]


def test_python_dash_m_is_the_cli(tmp_path):
    path = save(hand_mlp(), tmp_path / "mlp.onnx")
    proc = subprocess.run([sys.executable, "-m", "onnx_pathlift", "norm", str(path), "-q", "1", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert norms_by_q(json.loads(proc.stdout))[1.0] == pytest.approx(hand_norm(1), rel=1e-6)
    usage = subprocess.run([sys.executable, "-m", "onnx_pathlift"], capture_output=True, text=True, timeout=120, check=False)
    assert usage.returncode == 2 and "usage: onnx-pathlift" in usage.stderr


@pytest.mark.parametrize("form", FORMS)
def test_input_shape_forms(capsys, tmp_path, form):
    """Every form fixes the symbolic feature dimension (which has no default) to the same network."""
    path = save(hand_mlp(input_shape=["N", "C"]), tmp_path / "sym.onnx")
    rc, out, err = run_main(capsys, "norm", path, "--input-shape", form, "-q", 1, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["input_shapes"] == {"x": [1, 4]} and norms_by_q(result)[1.0] == pytest.approx(hand_norm(1), rel=1e-6)


def test_input_shape_name_with_a_colon(capsys, tmp_path):
    model = hand_mlp(input_shape=["N", "C"])
    for node in model.graph.node:
        node.input[:] = ["input:0" if i == "x" else i for i in node.input]
    model.graph.input[0].name = "input:0"
    path = save(model, tmp_path / "tf_named.onnx")
    for form in ("input:0:1,4", "input:0=[1,4]"):
        rc, out, err = run_main(capsys, "norm", path, "--input-shape", form, "-q", 1, "--json")
        assert rc == 0 and json.loads(out)["input_shapes"] == {"input:0": [1, 4]}, (form, err)


@pytest.mark.parametrize("bad", ["x:1,y", "1xfoo", "[1,4", "x=", ":1,4"])
def test_input_shape_error_names_every_form(capsys, tmp_path, bad):
    path = save(hand_mlp(input_shape=["N", "C"]), tmp_path / "sym.onnx")
    rc, _, err = run_main(capsys, "norm", path, "--input-shape", bad)
    assert rc == 2 and "Traceback" not in err
    for form in ("1x3x224x224", "1,3,224,224", "[1,3,224,224]", "NAME=SHAPE", "NAME:SHAPE", "NAME:[1,3,224,224]"):
        assert form in err, (bad, err)


def test_help_shows_defaults_and_an_example_per_command(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(cli.EXAMPLES)
    for name, sub in commands.items():
        text = sub.format_help()
        assert f"example:\n  onnx-pathlift {name} " in text, name
    prune, rescale = (" ".join(commands[c].format_help().split()) for c in ("prune", "rescale"))  # unwrapped
    assert "path-magnitude (default)" in prune and "(default: global)" in prune and "path-mass (default)" in prune
    assert "same fraction in each tensor" in prune
    assert "(default: 0)" in rescale and "(default: [0.125, 8.0])" in rescale and "log-uniformly in [LO, HI]" in rescale
    assert "(default: cpu)" in " ".join(commands["norm"].format_help().split()) and "(default: None)" not in prune + rescale
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "onnx-pathlift COMMAND --help" in capsys.readouterr().out


def test_every_declared_command_is_its_modules_declaration() -> None:
    """Each row of the analyses' command table names the module that declares that command (its ``COMMAND``),
    ``onnx_pathlift.api`` finds the library function by its name, and scores' help names the registry's weights."""
    from onnx_pathlift import api
    from onnx_pathlift.analyses import TABLE, declared
    from onnx_pathlift.ops.registry import weight_op_types

    assert {"lipschitz", "scores", "rescale"} <= set(TABLE)
    for name, row in TABLE.items():
        command = declared(name)
        assert command.name == name and command.function.__name__ == row.function, name
        assert command.function.__module__ == f"onnx_pathlift.analyses.{row.module}"
        assert getattr(api, row.function) is command.function and row.function in dir(api)
    assert f"every {'/'.join(weight_op_types())} weight" in TABLE["scores"].help
    with pytest.raises(AttributeError):
        api.no_such_function  # noqa: B018


def test_scores_table_has_headers_and_shares_that_sum_to_one(capsys, tmp_path):
    path = save(hand_mlp(), tmp_path / "mlp.onnx")
    rc, out, err = run_main(capsys, "scores", path, "--json")
    assert rc == 0, err
    rows = json.loads(out)["tensors"]
    assert {r["initializer"] for r in rows} == {"W1", "W2"}
    assert sum(r["share_of_scores"] for r in rows) == pytest.approx(1.0, abs=1e-12)
    for r in rows:
        assert r["share_of_scores"] == pytest.approx(r["share"] / sum(s["share"] for s in rows), rel=1e-12)
    rc, out, err = run_main(capsys, "scores", path)
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "paths", "share"])
    table = [line.split() for line in lines[head + 1:]]
    assert sorted(t[0] for t in table) == ["W1", "W2"]
    assert sum(float(t[2]) for t in table) == pytest.approx(1.0, abs=1e-3)
    assert {t[0]: float(t[1]) for t in table} == pytest.approx({r["initializer"]: r["share"] for r in rows}, rel=1e-3)


def test_lifted_model_metadata_says_what_it_is(capsys, tmp_path):
    """The metadata's recipe, followed literally on the written model, gives the closed-form norm."""
    src = save(hand_mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "lifted.onnx"
    rc, _, err = run_main(capsys, "lift", src, "-q", 2, "-o", out)
    assert rc == 0, err
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnx_pathlift.q"] == "2" and meta["onnx_pathlift.scales"] == "static"
    assert meta["onnx_pathlift.source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert "all-ones" in meta["onnx_pathlift.how_to_read"] and "sum(o * 2**o__log2_scale)" in meta["onnx_pathlift.how_to_read"]
    pairs = json.loads(meta["onnx_pathlift.outputs"])
    assert pairs == [["y", "y__log2_scale"]]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {i.name: np.ones(i.shape, np.float32) for i in session.get_inputs()})))
    total = sum(float((got[o].astype(np.float64) * np.exp2(got[e].astype(np.float64))).sum()) for o, e in pairs)
    assert total ** 0.5 == pytest.approx(hand_norm(2), rel=1e-6)
    assert helper.printable_graph(model.graph)  # a well-formed model, with its metadata


def test_help_examples_on_shipped_models_run(capsys, tmp_path, monkeypatch):
    """Every --help example that names only shipped files runs as written (from the repository root;
    here from a scratch folder where models/ points at the shipped models)."""
    (tmp_path / "models").symlink_to(MODELS)
    monkeypatch.chdir(tmp_path)
    ran = []
    for example in cli.EXAMPLES.values():
        for line in example.splitlines():
            for command in line.split("#")[0].split("&&"):
                argv = shlex.split(command)[1:]
                files = [a for a in argv if a.endswith((".onnx", ".npz")) and a.startswith("models/")]
                if any(a.startswith("..") or a == "model.onnx" for a in argv) or (not files and "rescaled.onnx" not in argv):
                    continue  # names files that are not shipped (the zoo, a placeholder)
                rc, _, err = run_main(capsys, *argv)
                assert rc == 0, (command, err)
                ran.append(argv[0])
    assert {"norm", "lift", "compare", "lipschitz", "scores", "prune", "rescale", "inspect"} <= set(ran)
