"""Hostile and broken models: the corpus of tools/make_hostile.py through the CLI, the limits,
external data with no folder to read it from, and fuzzing regressions (SECURITY.md is the policy
these tests hold us to).

Every corpus file runs as ``python -m onnx_pathlift.cli norm FILE --json`` in a subprocess capped at
2 GB of address space (``RLIMIT_AS``) and must answer with its expected exit code and message, as
one JSON document, never with a traceback or an internal error, and within a peak resident memory
far below what the hostile declarations ask for (a hang is caught at 60 s; there is no wall-clock
bound tighter than that: it would fail on a busy machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model
from conftest import ROOT, load_tool, run_measured, traced_peak
from onnx import TensorProto, helper, numpy_helper

from onnx_pathlift import import_model, path_norm
from onnx_pathlift.errors import InvalidModelError, PathliftError
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.fileio.read import DEFAULT_LIMITS, Limits

resource = pytest.importorskip("resource", reason="RLIMIT_AS needs a POSIX system")

make_hostile = load_tool("make_hostile")

MEMORY_CAP = 2 << 30  # bytes of address space for each CLI run
RSS_CAP_MB = 400  # peak resident memory of each CLI run (measured: 88-171 MB, long_chain the largest)
HANG_S = 60  # a CLI run still going after this long is a hang


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile.generate(root)


def run_capped(path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``norm`` on ``path`` under the address-space cap; the run and its peak resident memory in MB."""
    proc, peak = run_measured("norm", path, "--json", cap_bytes=MEMORY_CAP, cwd=path.parent, hang_s=HANG_S)
    return proc, peak / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(make_hostile.CASES))
def test_corpus_file_via_cli(corpus, name):
    root, expected = corpus
    rel = make_hostile.CASES[name].path(name)
    if rel not in expected:
        pytest.skip(f"{name} cannot be expressed on this platform (see the generator's stderr)")
    want = expected[rel]
    proc, peak_mb = run_capped(root / rel)
    where = f"{rel} ({want['why']}): rc={proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    assert proc.returncode != -signal.SIGKILL, f"{rel}: still running after {HANG_S} s (killed)"
    assert proc.returncode == want["exit_code"], where
    assert peak_mb < RSS_CAP_MB, f"{rel}: peak resident memory {peak_mb:.0f} MB"
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, where
    doc = json.loads(proc.stdout)  # exactly one JSON document, on success and on error
    if want["exit_code"]:
        assert doc["exit_code"] == want["exit_code"] and want["message"] in doc["message"], where
    else:
        assert want["message"] in proc.stdout and doc["norms"][0]["value"] > 0, where


def test_corpus_api_agrees_with_cli(corpus):
    """In process, import_model + path_norm raise the PathliftError of the same exit code."""
    root, expected = corpus
    for rel, want in expected.items():
        try:
            path_norm(import_model(root / rel), 1)
            code = 0
        except PathliftError as err:
            code = err.exit_code
            assert want["exit_code"] == 0 or want["message"] in str(err), (rel, str(err))
        assert code == want["exit_code"], (rel, code)


def test_corpus_covers_the_issue(corpus):
    """The cases the issue names are all there, and the escaping locations point at real weights."""
    _, expected = corpus
    names = {rel.split("/")[0].removesuffix(".onnx") for rel in expected}
    for must in ["ext_parent", "ext_absolute", "ext_missing", "ext_short", "ext_constant_attribute", "ext_sparse_initializer",
                 "huge_initializer_header", "truncated", "random_bytes", "empty_graph", "cycle", "dangling_input",
                 "duplicate_producer", "if_subgraph", "loop_subgraph", "scan_subgraph", "conv_one_input",
                 "gemm_five_inputs", "conv_int64_weight", "string_initializer", "nan_weight", "zero_channel_conv",
                 "zero_size_input"]:
        assert must in names, must
    if os.name == "posix":
        assert "ext_symlink" in names
    assert {e["exit_code"] for e in expected.values()} == {0, 2, 3, 4}


def test_tool_command_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_hostile.py"), str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    expected = json.loads((tmp_path / "c" / "expected.json").read_text())
    assert len(expected) >= 60 and all((tmp_path / "c" / rel).is_file() for rel in expected)
    usage = subprocess.run([sys.executable, str(ROOT / "tools" / "make_hostile.py")], capture_output=True, check=False)
    assert usage.returncode == 2


# --------------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------------


def mlp() -> onnx.ModelProto:
    return make_hostile.mlp()


def test_default_limits():
    assert DEFAULT_LIMITS == Limits()
    assert DEFAULT_LIMITS.max_tensor_elements == 1 << 31 and DEFAULT_LIMITS.max_total_bytes == 1 << 33
    assert DEFAULT_LIMITS.max_activation_elements == 1 << 28 and DEFAULT_LIMITS.max_nodes == 1 << 15


@pytest.mark.parametrize("limits, message", [
    (Limits(max_nodes=2), "the model has 3 nodes (limit 2)"),
    (Limits(max_tensor_elements=11), "tensor 'W1' declares 12 elements (3, 4) (limit 11)"),
    (Limits(max_total_bytes=80), "declare more than 80 bytes (limit reached at tensor 'W2')"),
    (Limits(max_activation_elements=2), "tensor 'x' has 4 elements (1, 4) (limit 2)"),
])
def test_limits_are_configurable(tmp_path, limits, message):
    path = tmp_path / "m.onnx"
    onnx.save(mlp(), str(path))
    assert path_norm(import_model(path), 1).value == pytest.approx(49.0)  # fine under the defaults
    for source in (path, path.read_bytes(), mlp()):
        with pytest.raises(InvalidModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
            import_model(source, limits=limits)


def test_limit_on_folded_constants():
    """A constant subgraph whose result exceeds the limit is refused before it is computed (shape
    inference sizes it), and the running total of folded bytes is bounded too."""
    nodes = [helper.make_node("Expand", ["one", "shape"], ["big"], name="expand"),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
             helper.make_node("Mul", ["x", "s"], ["y"], name="mul")]
    model = make_model(nodes, [("x", [1, 4])], [("y", None)],
                       {"one": np.ones(1, np.float32), "shape": np.array([1000, 1000], np.int64)})
    assert path_norm(import_model(model), 1).value == pytest.approx(4e6)
    with pytest.raises(InvalidModelError, match=r"node 'expand' \(Expand\) would allocate 1000000 elements"):
        import_model(model, limits=Limits(max_tensor_elements=999_999))
    with pytest.raises(InvalidModelError, match=r"node 'expand' \(Expand\): the constants exceed 100000 bytes"):
        import_model(model, limits=Limits(max_total_bytes=100_000))


def test_huge_header_refused_without_allocating():
    model = mlp()
    t = next(t for t in model.graph.initializer if t.name == "W1")
    del t.dims[:]
    t.dims.extend([10**6, 10**6])
    with traced_peak() as peak, pytest.raises(InvalidModelError, match="declares 1000000000000 elements"):
        import_model(model.SerializeToString())
    assert peak[0] < 16 << 20  # refused from the header: the declared 4 TB are never allocated


# --------------------------------------------------------------------------------------------
# external data needs the model's folder
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False])
def test_external_data_without_a_folder_is_refused(tmp_path, monkeypatch, as_bytes):
    """Bytes and ModelProto sources have no folder: their external tensors are never read (not even
    relative to the working directory, where the file sits here)."""
    (tmp_path / "w.bin").write_bytes(make_hostile.W1.tobytes())
    model = make_hostile.mlp_external("w.bin")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidModelError, match=r"tensor 'W1' keeps its data in the external file 'w.bin'"):
        import_model(model.SerializeToString() if as_bytes else model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert path_norm(import_model(tmp_path / "m.onnx"), 1).value == pytest.approx(49.0)  # by path it loads


def test_external_data_in_a_function_body_is_checked(tmp_path):
    """Tensors in model-local functions are walked too (onnx's own loader reads them)."""
    model = mlp()
    const = helper.make_node("Constant", [], ["k"], value=make_hostile.external(numpy_helper.from_array(make_hostile.W1, "fw"),
                                                                                "../secret.bin"))
    model.functions.append(helper.make_function("local", "F", ["a"], ["k"], [const], [helper.make_opsetid("", 17)]))
    (tmp_path / "secret.bin").write_bytes(make_hostile.W1.tobytes())
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    with pytest.raises(InvalidModelError, match=r"tensor 'fw': external data location '../secret.bin' escapes"):
        load_model(tmp_path / "m" / "model.onnx")


def test_loaded_model_holds_no_external_reference(tmp_path):
    """After load_model every tensor is in memory, so nothing later reads a file."""
    folder = tmp_path / "ok"
    folder.mkdir()
    (folder / "w.bin").write_bytes(make_hostile.W1.tobytes())
    onnx.save(make_hostile.mlp_external("w.bin"), str(folder / "m.onnx"))
    model = load_model(folder / "m.onnx")
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    (folder / "w.bin").unlink()
    assert path_norm(import_model(model), 1).value == pytest.approx(49.0)


# --------------------------------------------------------------------------------------------
# regressions found by tests/test_fuzz.py
# --------------------------------------------------------------------------------------------


def test_activation_broadcast_after_conv():
    """A Mul that widens a 1-channel conv output to 2 channels: its scale is not folded into the conv."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("y", None)],
                       {"W": np.ones((1, 1, 1, 1), np.float32), "s": np.array([2, 3], np.float32).reshape(1, 2, 1, 1)})
    assert path_norm(model, 1).value == pytest.approx(80.0)  # 16 input neurons, each to 2 outputs of weight 2 and 3


@pytest.mark.slow
def test_audit_of_corpus_mixed_with_real_models(corpus, tmp_path):
    """An audit over the hostile corpus plus real models completes: each hostile file is reported
    (not ok) and every real model is analysed."""
    from conftest import MODELS

    from onnx_pathlift.audit import Settings, audit

    root, expected = corpus
    real = [str(MODELS / "digits_cnn_torch_bn.onnx"), str(MODELS / "digits_mlp_sklearn.onnx")]
    result = audit([str(root), *real], Settings(q=(1.0,)), jobs=2, timeout=30, db=str(tmp_path / "audit.sqlite"))
    status = {str(Path(r.path).resolve()): r.status for r in result.results}
    assert all(status[str(Path(p).resolve())] == "ok" for p in real), status
    want = {0: "ok", 3: "unsupported", 4: "invalid"}  # exit 2 (the user must say more): reported as an error
    for name, case in expected.items():
        got = status.get(str((root / name).resolve()))
        assert got == want.get(case["exit_code"], "error"), (name, got, case)
