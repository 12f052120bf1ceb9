"""Reading a file's large weights straight into arrays (onnx_pathlift.fileio.wire, load.load_split) against
protobuf's own reading of the whole file.

* on every model of the shipped set, the shared zoo and the onnx wheel's light models: the same
  initializers, bit for bit, in the same order, the other fields of each tensor unchanged;
* protobuf parses kilobytes, not the weights (counted: the bytes handed to it);
* hostile files (cut anywhere, lengths past their message, overlong varints, groups, a second graph
  or raw_data field, a payload that does not fit its shape, external data beside it): the same
  outcome as reading the file whole, the same arrays or the same error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import net
from conftest import LIGHT, MODELS, ZOO, load_tool, run_measured
from onnx import helper, numpy_helper

from onnx_pathlift.errors import PathliftError
from onnx_pathlift.fileio import load, wire
from onnx_pathlift.frontend.importer import import_model

EXTERNAL = "w.bin"


def _outcome(read, path: Path):
    """``("ok", initializer name -> (dtype, shape, bytes), the tensors without their data)`` or
    ``("error", class, message)``."""
    try:
        model, stored = read(path)
        arrays = {t.name: stored[i] if i in stored else numpy_helper.to_array(t) for i, t in enumerate(model.graph.initializer)}
    except (PathliftError, ValueError) as exc:  # to_array: a payload that does not fit its dims
        return "error", type(exc).__name__, str(exc)
    rest = []
    for t in model.graph.initializer:
        a = arrays[t.name]
        arrays[t.name] = (a.dtype.str, a.shape, a.tobytes())
        bare = onnx.TensorProto()
        bare.CopyFrom(t)
        bare.ClearField("raw_data")
        rest.append(bare.SerializeToString())
    return "ok", arrays, rest


def _whole(path: Path):
    return load.load_model(path), {}


def _files() -> list[Path]:
    found = sorted(MODELS.glob("*.onnx")) + sorted(LIGHT.glob("*.onnx")) + sorted(ZOO.rglob("*.onnx"))
    return [p for p in found if p.stat().st_size < 64 << 20]


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_the_same_initializers_as_protobuf_reads(path: Path) -> None:
    whole = _outcome(_whole, path)
    assert _outcome(load.load_split, path) == whole


def _big_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"])]
    return net([1, 256], nodes, [1, 10], {"W1": rng.normal(size=(256, 512)), "B1": rng.normal(size=512),
                                          "W2": rng.normal(size=(512, 10)), "B2": rng.normal(size=10)})


def test_protobuf_parses_the_structure_not_the_weights(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.onnx"
    path.write_bytes(_big_model().SerializeToString())
    parsed = []
    monkeypatch.setattr(load, "parse_model", lambda data, where: parsed.append(len(data)) or onnx.load_from_string(data))
    model, stored = load.load_split(path)
    assert sorted(a.size for a in stored.values()) == [512 * 10, 256 * 512]  # the biases are below MIN_PAYLOAD
    assert len(parsed) == 1 and parsed[0] < 8 << 10 and path.stat().st_size > 500 << 10
    assert all(not a.flags.writeable and a.ctypes.data % a.itemsize == 0 for a in stored.values())
    dag = import_model(path)
    assert dag.n_params == 256 * 512 + 512 + 512 * 10 + 10


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _hostile(base: bytes) -> dict[str, bytes]:
    """Variants of a valid file that the splitter must leave to protobuf, or read exactly as it does."""
    model = onnx.load_from_string(base)
    graph = model.graph.SerializeToString()
    head = model.SerializeToString().replace(_field(7, graph), b"")  # the model's fields but its graph
    tensor = model.graph.initializer[0]

    def extra(name: str) -> onnx.TensorProto:
        t = onnx.TensorProto()
        t.CopyFrom(tensor)
        t.name = name
        return t

    first, rest = onnx.GraphProto(), onnx.GraphProto()  # the initializers split between two graph fields
    first.initializer.extend(model.graph.initializer[:1])
    rest.CopyFrom(model.graph)
    del rest.initializer[:1]
    doubled_bytes = extra("doubled").SerializeToString() + _field(9, tensor.raw_data[::-1])  # a second raw_data: the last wins
    short = extra("short")
    short.raw_data = tensor.raw_data[:-4]  # one element fewer than the dims say
    external = extra("external")  # raw_data in the file, and external data in EXTERNAL (which wins)
    external.data_location = onnx.TensorProto.EXTERNAL
    external.external_data.add(key="location", value=EXTERNAL)
    return {
        **{f"cut_{n}": base[:n] for n in (1, 5, 17, len(base) // 3, len(base) // 2, len(base) - 1)},
        "two_graphs": head + _field(7, first.SerializeToString()) + _field(7, rest.SerializeToString()),  # merged
        "graph_past_end": head + _varint(7 << 3 | 2) + _varint(len(graph) + 10) + graph,
        "overlong_varint": head + _varint(7 << 3 | 2) + b"\xff" * 10 + b"\x01" + graph,
        "group": head + _varint(9 << 3 | 3) + _varint(9 << 3 | 4) + _field(7, graph),
        "second_raw_data": head + _field(7, graph + _field(5, doubled_bytes)),
        "short_payload": head + _field(7, graph + _field(5, short.SerializeToString())),
        "external_and_raw": head + _field(7, graph + _field(5, external.SerializeToString())),
        "empty": b"",
    }


@pytest.mark.parametrize("case", sorted(_hostile(_big_model().SerializeToString())))
def test_hostile_files_read_as_protobuf_reads_them(case: str, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_hostile(_big_model().SerializeToString())[case])
    (tmp_path / EXTERNAL).write_bytes(onnx.load_from_string(_big_model().SerializeToString()).graph.initializer[0].raw_data[::-1])
    assert _outcome(load.load_split, path) == _outcome(_whole, path)


def _widened(data: bytes, level: str, number: int, key_width: int | None = None, len_width: int | None = None) -> bytes:
    """``data`` with the first field ``number`` at ``level`` (model, graph, or tensor: the first
    initializer with a large payload) written with a key or length varint of the given width."""
    fuzz = load_tool("fuzz_wire")
    tree = fuzz.decode(data)
    graph = next(f for f in tree if f.number == 7).value
    where = {"model": tree, "graph": graph,
             "tensor": next(f.value for f in graph if f.number == 5 and len(f.value) > 4 and
                            any(g.number == 9 and len(g.value) >= wire.MIN_PAYLOAD for g in f.value))}[level]
    target = next(f for f in where if f.number == number)
    target.key_width, target.len_width = key_width, len_width
    return fuzz.encode(tree)


@pytest.mark.parametrize("width", [5, 6, 10, 11])
@pytest.mark.parametrize(("level", "number", "what"), [("model", 7, "key"), ("model", 7, "len"), ("graph", 5, "key"),
                                                       ("graph", 5, "len"), ("tensor", 9, "key"), ("tensor", 9, "len")])
def test_keys_and_lengths_as_long_as_protobuf_allows(tmp_path: Path, level: str, number: int, what: str, width: int) -> None:
    """protobuf reads a key or a length as a 32-bit varint of at most 5 bytes: a longer one makes the
    file corrupt, for every reader (it was read by the splitter, which drops or rewrites them)."""
    path = tmp_path / "m.onnx"
    data = _widened(_big_model().SerializeToString(), level, number, **{f"{what}_width": width})
    path.write_bytes(data)
    try:
        onnx.ModelProto().ParseFromString(data)
        accepted = True
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        accepted = False
    assert accepted == (width <= 5)
    split, whole = _outcome(load.load_split, path), _outcome(_whole, path)
    assert split == whole and (split[0] == "ok") == accepted


def test_differential_fuzz_against_protobuf(tmp_path: Path) -> None:
    """A fixed set of wire-level mutations (tools/fuzz_wire.py runs the long campaign): protobuf's
    accept or reject, and its weights bit for bit, on every one."""
    fuzz = load_tool("fuzz_wire")
    assert fuzz.run(400, 0, tmp_path) == []


def test_the_fuzzer_finds_a_reader_laxer_than_protobuf(tmp_path: Path, monkeypatch) -> None:
    """The property can fail: with the splitter reading keys and lengths of up to 10 bytes (as it
    once did), some mutation is accepted that protobuf rejects."""
    monkeypatch.setattr(wire, "_KEY_BYTES", 10)
    monkeypatch.setattr(wire, "_LENGTH_LIMIT", 1 << 64)
    monkeypatch.setattr(wire, "_KEY_LIMIT", 1 << 64)
    assert any("protobuf rejects" in problem for _, problem in load_tool("fuzz_wire").run(400, 0, tmp_path))


def test_a_tensor_segment_is_refused_by_every_reader(tmp_path: Path) -> None:
    """``TensorProto.segment`` (a piece of a larger tensor) on a large initializer: refused as on a small
    one, by the fast reader and the whole one alike (the splitter once ignored it)."""
    model = _big_model()
    for tensor in model.graph.initializer:
        tensor.segment.begin, tensor.segment.end = 0, 1
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    for read in (load.load_split, _whole):
        with pytest.raises(PathliftError, match="segment"):
            read(path)


def _padded(filler: bytes, size: int = 3 << 20) -> bytes:
    """A small valid model whose graph also holds ``size`` bytes of ``filler`` repeated (tiny fields)."""
    base = _big_model()
    graph = base.graph.SerializeToString()
    head = base.SerializeToString().replace(_field(7, graph), b"")
    return head + _field(7, graph + filler * (size // len(filler)))


#: layouts of 3 MiB of tiny fields: empty value_info messages (one protobuf object per 2 bytes: refused
#: by count), unknown varint fields (kept as unknown bytes), empty doc strings (the last one wins)
_TINY_LAYOUTS = {"value_info": _varint(13 << 3 | 2) + b"\x00", "unknown_varints": _varint(127 << 3) + b"\x00",
                 "doc_strings": _varint(10 << 3 | 2) + b"\x00"}


def test_messages_are_counted_before_decoding() -> None:
    data = _padded(_TINY_LAYOUTS["value_info"], 1 << 16)
    model = onnx.load_from_string(data)
    expected = len(model.graph.value_info) + len(model.graph.node) + sum(len(n.attribute) for n in model.graph.node) + \
        len(model.graph.initializer) + len(model.graph.input) + len(model.graph.output) + len(model.opset_import) + 1
    assert wire.message_count(data) == expected


@pytest.mark.slow
def test_reading_memory_is_bounded_by_the_file_size_for_any_layout(tmp_path: Path) -> None:
    """Peak resident memory of ``norm`` above a tiny model's, per file byte, at most 3, for 3 MiB of tiny
    fields in each layout (the reader once took 130 per byte: one Python object per field); the
    layout protobuf itself would decode into 40 bytes per file byte is refused by count (exit 4)."""
    _, baseline = run_measured("norm", MODELS / "digits_mlp_sklearn.onnx", "--json")
    for name, filler in _TINY_LAYOUTS.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(_padded(filler))
        proc, peak = run_measured("norm", path, "--json")
        assert proc.returncode == (4 if name == "value_info" else 0), proc.stdout[-2000:]
        assert (peak - baseline) / path.stat().st_size <= 3, (name, peak, baseline)
    assert "messages in" in json.loads(run_measured("norm", tmp_path / "value_info.onnx", "--json")[0].stdout)["message"]
