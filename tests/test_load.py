"""Loading models safely: model sources, external data confinement, malformed graphs, huge
constants and non-finite weights (API level, plus the CLI exit code each case maps to)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import W1, hand_mlp, make_model
from conftest import MODELS, run_main, traced_peak
from onnx import TensorProto, helper, numpy_helper

import onnx_pathlift
from onnx_pathlift import import_model, path_norm
from onnx_pathlift.errors import InvalidModelError, PathliftError, UnsupportedModelError
from onnx_pathlift.fileio.load import load_model

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


L1_EXPECTED = 49.0  # Σ_k Σ_j |W2_kj| (||W1_j||_1 + |b1_j|) + |b2_k|


# --------------------------------------------------------------------------------------------
# model sources
# --------------------------------------------------------------------------------------------


def test_sources_path_str_bytes_modelproto_agree(tmp_path):
    model = hand_mlp(out_shape=[1, 2])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    data = path.read_bytes()
    sources = {"str": str(path), "Path": path, "bytes": data, "bytearray": bytearray(data), "ModelProto": model}
    serialized = {k: load_model(v).SerializeToString() for k, v in sources.items()}
    assert len(set(serialized.values())) == 1, "every source must load to the same model"
    assert load_model(model) is model  # a ModelProto is used as it is
    for q in (1, 2):
        values = {k: path_norm(v, q).value for k, v in sources.items()}
        assert len(set(values.values())) == 1, values
    assert path_norm(path, 1).value == pytest.approx(L1_EXPECTED, rel=1e-9)
    dags = {k: import_model(v) for k, v in sources.items()}
    for dag in dags.values():
        assert dag.n_params == 23
        assert dag.input_shapes() == {"x": (1, 4)}
        assert list(dag.outputs) == ["y"]


def test_shipped_model_path_and_bytes_agree():
    path = MODELS / "digits_cnn_torch.onnx"
    a, b = path_norm(path, 2), path_norm(path.read_bytes(), 2)
    assert a.value == b.value and a.value > 0


@pytest.mark.parametrize("source, word", [(b"", "empty"), (b"\xff\xff\xff\xff", "not an ONNX model")])
def test_bad_bytes_raise_invalid_model(source, word):
    with pytest.raises(InvalidModelError, match=word):
        load_model(source)


def test_missing_path_raises_invalid_model(tmp_path):
    with pytest.raises(InvalidModelError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(InvalidModelError):
        load_model(tmp_path)  # a folder is not a model file either


# --------------------------------------------------------------------------------------------
# external data
# --------------------------------------------------------------------------------------------


@pytest.fixture
def external(tmp_path):
    """``model/m.onnx`` + ``model/weights.bin`` (every initializer external) and the raw proto."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(hand_mlp(out_shape=[1, 2]), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    raw = onnx.load(str(path), load_external_data=False)
    return folder, path, raw


def relocated(raw: onnx.ModelProto, location: str, dest: Path) -> Path:
    """A copy of ``raw`` with every initializer's external location set to ``location``."""
    m = onnx.ModelProto()
    m.CopyFrom(raw)
    for tensor in m.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    dest.write_bytes(m.SerializeToString())
    return dest


def test_external_data_roundtrip(external):
    folder, path, raw = external
    assert (folder / "weights.bin").is_file()
    assert all(t.data_location == TensorProto.EXTERNAL for t in raw.graph.initializer)  # really external
    assert path.stat().st_size < (folder / "weights.bin").stat().st_size + 1000
    loaded = load_model(path)
    assert all(t.data_location != TensorProto.EXTERNAL for t in loaded.graph.initializer)
    np.testing.assert_array_equal(
        numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == "W1")), W1
    )
    for q in (1, 2, 3):
        assert path_norm(path, q).value == path_norm(hand_mlp(out_shape=[1, 2]), q).value
    assert path_norm(str(path), 1).value == pytest.approx(L1_EXPECTED, rel=1e-9)


def test_external_data_other_in_folder_file_is_fine(external):
    """Control for the hostile cases: same bytes, a different file name inside the folder."""
    folder, _, raw = external
    shutil.copy(folder / "weights.bin", folder / "other.bin")
    path = relocated(raw, "other.bin", folder / "other.onnx")
    assert path_norm(path, 1).value == pytest.approx(L1_EXPECTED, rel=1e-9)


def _hostile_location(kind: str, folder: Path) -> str:
    outside = folder.parent / "outside.bin"
    shutil.copy(folder / "weights.bin", outside)  # valid bytes: only the location is wrong
    if kind == "parent":
        return "../outside.bin"
    if kind == "absolute":
        return str(outside.resolve())
    if kind == "symlink":
        link = folder / "link.bin"
        try:
            os.symlink(outside.resolve(), link)
        except (OSError, NotImplementedError):
            pytest.skip("symlinks are not available here")
        return "link.bin"
    if kind == "nested_parent":
        (folder / "sub").mkdir()
        return "sub/../../outside.bin"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "nested_parent"])
def test_external_data_escaping_the_folder_is_refused(capsys, external, kind):
    folder, _, raw = external
    location = _hostile_location(kind, folder)
    path = relocated(raw, location, folder / f"hostile_{kind}.onnx")
    with pytest.raises(InvalidModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert "'W1'" in msg  # names the tensor
    assert "escapes" in msg and location in msg
    for fn in (path_norm, import_model):
        with pytest.raises(InvalidModelError):
            fn(path)
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 4
    assert err.startswith("onnx-pathlift: error:") and "'W1'" in err and "Traceback" not in err


def test_external_data_missing_file(capsys, external):
    folder, _, raw = external
    path = relocated(raw, "gone.bin", folder / "missing.onnx")
    with pytest.raises(InvalidModelError, match=r"'W1'.*'gone\.bin'.*not found"):
        load_model(path)
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 4 and "gone.bin" in err


def test_external_data_file_too_short(capsys, external):
    folder, _, raw = external
    (folder / "short.bin").write_bytes(b"\0" * 8)  # W1 alone needs 48 bytes
    path = relocated(raw, "short.bin", folder / "short.onnx")
    with pytest.raises(InvalidModelError, match=r"'W1'.*8 bytes, needs 48"):
        load_model(path)
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 4 and "short.bin" in err


def test_external_data_location_is_a_folder(external):
    folder, _, raw = external
    (folder / "adir").mkdir()
    path = relocated(raw, "adir", folder / "dir.onnx")
    with pytest.raises(InvalidModelError, match="'W1'"):
        load_model(path)


def test_external_data_nul_byte_location(external):
    folder, _, raw = external
    path = relocated(raw, "weights\0.bin", folder / "nul.onnx")
    with pytest.raises(InvalidModelError):
        load_model(path)


# --------------------------------------------------------------------------------------------
# malformed graphs
# --------------------------------------------------------------------------------------------


def cyclic() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["x", "c"], ["a"], name="cyc_a"),
        helper.make_node("Relu", ["a"], ["c"], name="cyc_b"),
        helper.make_node("Relu", ["a"], ["y"], name="out"),
    ]
    return make_model(nodes, [("x", [1, 4])], [("y", None)])


def dangling() -> onnx.ModelProto:
    return make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="dangle_add")], [("x", [1, 4])], [("y", None)])


def duplicate_producer() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="dup1"),
        helper.make_node("Relu", ["x"], ["h"], name="dup2"),
        helper.make_node("Relu", ["h"], ["y"], name="o"),
    ]
    return make_model(nodes, [("x", [1, 4])], [("y", None)])


def overwrites_input() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["x"], name="self_loop"), helper.make_node("Relu", ["x"], ["y"], name="o")]
    return make_model(nodes, [("x", [1, 4])], [("y", None)])


MALFORMED = {
    "cycle": (cyclic, [r"cycle", r"cyc_a", r"cyc_b"]),
    "dangling": (dangling, [r"dangle_add", r"'ghost'", r"nothing produces"]),
    "duplicate": (duplicate_producer, [r"'h'", r"produced twice", r"dup2"]),
    "overwrites_input": (overwrites_input, [r"'x'", r"produced twice"]),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_graph_raises_invalid_model(capsys, tmp_path, kind):
    build, words = MALFORMED[kind]
    model = build()
    with pytest.raises(InvalidModelError) as info:
        import_model(model)
    for word in words:
        assert re.search(word, str(info.value)), (word, str(info.value))
    with pytest.raises(InvalidModelError):
        path_norm(model.SerializeToString(), 1)
    path = tmp_path / f"{kind}.onnx"
    path.write_bytes(model.SerializeToString())
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 4
    assert err.startswith("onnx-pathlift: error:") and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# huge constants
# --------------------------------------------------------------------------------------------


def huge_constant_of_shape(via_constant_node: bool) -> onnx.ModelProto:
    shape = np.array([1_000_000, 1_000_000], np.int64)  # 1e12 elements
    nodes, inits = [], {}
    if via_constant_node:
        nodes.append(helper.make_node("Constant", [], ["shp"], name="shape_const", value=numpy_helper.from_array(shape)))
    else:
        inits["shp"] = shape
    nodes += [
        helper.make_node("ConstantOfShape", ["shp"], ["big"], name="huge_cos",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["s"], name="rs", keepdims=0),
        helper.make_node("Mul", ["x", "s"], ["y"], name="mul"),
    ]
    return make_model(nodes, [("x", [1, 4])], [("y", None)], inits)


@pytest.mark.parametrize("via_constant_node", [False, True])
def test_huge_constant_of_shape_refused_without_allocating(capsys, tmp_path, via_constant_node):
    model = huge_constant_of_shape(via_constant_node)
    with traced_peak() as peak, pytest.raises(InvalidModelError) as info:
        import_model(model)
    assert peak[0] < 32 << 20  # refused from the declared shape: nothing near 1e12 elements is allocated
    assert "huge_cos" in str(info.value) and "1000000000000" in str(info.value)
    path = tmp_path / "huge.onnx"
    path.write_bytes(model.SerializeToString())
    with traced_peak() as peak:
        rc, _, err = run_main(capsys, "norm", path)
    assert peak[0] < 64 << 20
    assert rc == 4 and "huge_cos" in err


# --------------------------------------------------------------------------------------------
# non-finite weights
# --------------------------------------------------------------------------------------------


def gemm_with(bad: float) -> onnx.ModelProto:
    w = np.eye(4, dtype=np.float32)
    w[1, 2] = bad
    nodes = [
        helper.make_node("Gemm", ["x", "Wbad", "bias"], ["h"], name="nan_gemm"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    return make_model(nodes, [("x", [1, 4])], [("y", None)], {"Wbad": w, "bias": np.zeros(4, np.float32)})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gemm_weight_refused(capsys, tmp_path, bad):
    model = gemm_with(bad)
    with pytest.raises(UnsupportedModelError) as info:
        import_model(model)
    (refusal,) = info.value.refusals
    assert refusal.node == "nan_gemm" and refusal.op_type == "Gemm"
    assert "NaN" in refusal.reason and "'Wbad'" in refusal.reason
    assert info.value.exit_code == 3
    path = tmp_path / "nan.onnx"
    path.write_bytes(model.SerializeToString())
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 3
    assert "nan_gemm" in err and "NaN" in err and "Traceback" not in err


def test_nan_bias_refused():
    model = gemm_with(0.0)
    for t in model.graph.initializer:
        if t.name == "bias":
            t.CopyFrom(numpy_helper.from_array(np.array([0, np.nan, 0, 0], np.float32), "bias"))
    with pytest.raises(UnsupportedModelError) as info:
        import_model(model)
    assert [r.node for r in info.value.refusals] == ["nan_gemm"]
    assert "NaN" in info.value.refusals[0].reason and "bias" in info.value.refusals[0].reason


def test_errors_are_pathlift_errors():
    assert issubclass(InvalidModelError, PathliftError) and InvalidModelError.exit_code == 4
    assert issubclass(UnsupportedModelError, PathliftError) and UnsupportedModelError.exit_code == 3
    assert onnx_pathlift.InvalidModelError is InvalidModelError
