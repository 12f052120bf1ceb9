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

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import net
from conftest import LIGHT, MODELS, ZOO, load_tool
from onnx import helper, numpy_helper

from onnx_pathlift.errors import PathliftError
from onnx_pathlift.fileio import load, wire
from onnx_pathlift.fileio import read as reader
from onnx_pathlift.fileio.read import LAYOUT_FACTOR, LAYOUT_SLACK
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
    monkeypatch.setattr(load, "parse_model", lambda data, *where: parsed.append(len(data)) or onnx.load_from_string(data))
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


def _group(number: int, inner: bytes = b"") -> bytes:
    return _varint(number << 3 | 3) + inner + _varint(number << 3 | 4)


def test_the_count_follows_protobuf_past_groups_and_to_its_nesting_limit() -> None:
    """Unknown groups (which protobuf keeps) do not stop the count: the empty nodes after one are counted
    (the count of issue 27's first fix stopped there); nesting is counted down to upb's limit of 100
    levels, where protobuf refuses the file."""
    nodes = _field(1, b"") * 1000
    limit = 1 << 40
    assert wire.decoded_bytes(_field(7, _group(100) + nodes), limit) >= wire.decoded_bytes(_field(7, nodes), limit) > 100_000
    onnx.ModelProto().ParseFromString(_field(7, _group(100, _group(5)) + nodes))  # protobuf accepts it
    for depth, accepted in ((100, True), (101, False)):
        chain = b""
        for number in reversed(([7] + [1, 5, 6] * 40)[:depth]):  # graph, node, attribute, graph, ...
            chain = _field(number, chain)
        try:
            onnx.ModelProto().ParseFromString(chain)
            parsed = True
        except Exception:  # protobuf's DecodeError
            parsed = False
        assert parsed == accepted
    counted = [wire.decoded_bytes(_field(7, _field(1, _field(5, _field(6, b"" if d else _field(1, b"") * 100)))), limit)
               for d in (0, 1)]
    assert counted[0] > counted[1]  # the nodes at the deepest level are counted


@pytest.mark.slow
def test_the_count_bounds_protobufs_memory_for_every_message_type(tmp_path: Path) -> None:
    """For every message type a model can hold: 2**20 empty ones in a repeated field, counted at least
    what protobuf's decoding of them takes (peak RSS growth in a fresh process) and at most 2.5 times it."""
    layouts = load_tool("memory_layouts")
    n = 1 << 20
    for name, path in _repeated_paths().items():
        data = b""
        for number in reversed(path[:-1]):
            data = _field(number, data) if data else _field(number, _field(path[-1], b"") * n)
        data = data or _field(path[-1], b"") * n
        (tmp_path / "m.pb").write_bytes(data)
        used, counted = layouts.decode_rss(tmp_path / "m.pb"), wire.decoded_bytes(data, 1 << 62)
        assert used <= counted, (name, used / n, counted / n)
        assert counted <= 2.5 * used, (name, used / n, counted / n)


def _repeated_paths() -> dict[str, list[int]]:
    """Each message type reachable from ``ModelProto`` in a repeated field: the field numbers leading there."""
    paths, todo, found = {"onnx.ModelProto": []}, [onnx.ModelProto.DESCRIPTOR], {}
    while todo:
        descriptor = todo.pop(0)
        for f in descriptor.fields:
            if f.message_type is None:
                continue
            name, path = f.message_type.full_name, paths[descriptor.full_name] + [f.number]
            if wire._repeated(f):
                found.setdefault(name, path)
            if name not in paths:
                paths[name] = path
                todo.append(f.message_type)
    return found


@pytest.mark.slow
def test_the_count_bounds_protobufs_memory_for_every_layout(tmp_path: Path) -> None:
    """tools/memory_layouts.py's layouts at 2 MiB (tiny fields nested below the node level, packed int64
    values, unknown groups, ...): counted at least what protobuf's decoding takes."""
    layouts = load_tool("memory_layouts")
    for name in layouts.LAYOUTS:
        data = layouts.sized(name, 2 << 20)
        (tmp_path / "m.onnx").write_bytes(data)
        assert layouts.decode_rss(tmp_path / "m.onnx") <= wire.decoded_bytes(data, 1 << 62), name


@pytest.mark.slow
def test_reading_memory_is_bounded_by_the_file_size_for_any_layout(tmp_path: Path) -> None:
    """Peak resident memory of ``norm`` above a tiny model's, per file byte, at most 3, for 3 MiB of each
    layout of tools/memory_layouts.py (the reader once took 130 per byte: one Python object per field;
    then 16 for packed int64 values and 80 for tensors nested in an attribute): those protobuf would
    decode into more than 2× the file's size + 16 MiB are refused by count (exit 4); and at most 3× the
    size + 2 × 16 MiB at the largest size each layout is read at (the count's slack is 16 MiB; tensors
    decoded to arrays take as much again)."""
    layouts = load_tool("memory_layouts")
    path = tmp_path / "m.onnx"
    path.write_bytes(layouts.layout_file("nodes", 0))
    rc, _, baseline = layouts.peak_rss(path)
    assert rc == 0
    refused = set()
    for name in layouts.LAYOUTS:
        for edge in (False, True):
            if edge and name not in refused:  # read whole at 3 MiB already
                continue
            data = layouts.edge(name, 2 << 20) if edge else layouts.sized(name, 3 << 20)
            path.write_bytes(data)
            rc, out, peak = layouts.peak_rss(path)
            assert rc in (0, 3, 4) and "internal error" not in out, (name, edge, out[-2000:])
            assert peak - baseline <= 3 * len(data) + (2 * LAYOUT_SLACK if edge else 0), (name, edge, peak - baseline)
            refused |= {name} if "to decode" in out else set()
    assert {"nodes", "value_info", "attribute_tensors", "tensor_int64_packed", "value_info_dims"} <= refused, refused


def _bounds(data: bytes) -> tuple[int, int]:
    """The bounds of ``wire.within_limit`` on ``data``: ``_ARENA + R·len(data)`` and ``_ARENA + Σ w[b]``."""
    weights = wire._byte_weights()
    return wire._ARENA + wire.charge_ratio() * len(data), wire._ARENA + int(weights[np.frombuffer(data, np.uint8)].sum())


def _within(data: bytes) -> bool:
    """The theorem of ``wire.within_limit``: the count, run to the end or stopped at any limit, stays within
    both bounds."""
    bound = min(_bounds(data))
    return all(wire.decoded_bytes(data, limit) <= bound for limit in (1 << 62, len(data), wire._ARENA + 1))


def _random_message(rng: random.Random, descriptor, depth: int) -> bytes:
    """A random message of type ``descriptor``: known fields with their own wire type or another, empty or
    nested messages, strings, packed runs of any bytes, overlong keys, unknown fields and groups."""
    out = bytearray()
    for _ in range(rng.randint(0, 5 if depth > 1 else 2)):
        f = rng.choice(descriptor.fields)
        number = f.number if rng.random() < 0.85 else rng.choice([99, 1000, (1 << 29) - 1])
        kind = wire._WIRE.get(f.type, wire._VARINT) if rng.random() < 0.8 else rng.choice([0, 1, 2, 5])
        key = _varint(number << 3 | kind)
        if rng.random() < 0.1:  # the same key, one byte longer
            key = key[:-1] + bytes([key[-1] | 0x80, 0])
        if kind == wire._LEN:  # a message field: nested, else mostly empty; any other: any bytes
            message, draw = f.message_type is not None and number == f.number, rng.random()
            payload = (_random_message(rng, f.message_type, depth - 1) if message and depth > 0 and draw < 0.6 else
                       b"" if message and draw < 0.9 else rng.randbytes(rng.choice([0, 0, 1, 3, 9, 40])))
            out += key + _varint(len(payload)) + payload
        elif kind == wire._VARINT:
            out += key + _varint(rng.getrandbits(rng.choice([1, 7, 35, 64])))
        else:
            out += key + rng.randbytes(8 if kind == wire._FIXED64 else 4)
        if rng.random() < 0.05:
            out += _group(number, _field(1, b""))
    return bytes(out)


def test_the_count_never_passes_arena_plus_r_bytes_per_byte(tmp_path: Path) -> None:
    """``decoded_bytes(data) ≤ _ARENA + R·len(data)`` (R: ``wire.charge_ratio``, derived from the count's own
    accounting) and ``≤ _ARENA + Σ w[b]`` over its bytes (``wire._byte_weights``) on every hostile layout,
    hostile file, fuzzed file, split file and random wire data; both are tight: a node of empty attributes
    (the field R comes from) is counted above ``_ARENA + (R − 1)·len``, and within 1000 bytes of the second."""
    layouts, fuzz = load_tool("memory_layouts"), load_tool("fuzz_wire")
    files = [layouts.layout_file(name, n) for name in layouts.LAYOUTS for n in (0, 1, 7, 300)]
    base = _big_model().SerializeToString()
    files += list(_hostile(base).values()) + [split[0] for split in [wire.split_file(base)]]
    files += [_field(7, _group(100, _group(5)) + _field(1, b"") * 50), _field(7, _field(1, _field(5, _field(6, b""))))]
    rng = random.Random(5)
    files += [fuzz.mutate(rng, rng.choice(fuzz.seeds() + [(LIGHT / "light_resnet50.onnx").read_bytes()])) for _ in range(200)]
    files += [_random_message(rng, onnx.ModelProto.DESCRIPTOR, 6) for _ in range(1500)] + [rng.randbytes(n) for n in range(200)]
    assert len(wire.split_file(base)[0]) < len(base) // 50
    bad = [i for i, data in enumerate(files) if not _within(data)]
    assert not bad, bad
    worst = _field(7, _field(1, _field(5, b"") * 5000))
    counted, (by_length, by_bytes) = wire.decoded_bytes(worst, 1 << 62), _bounds(worst)
    assert wire._ARENA + (wire.charge_ratio() - 1) * len(worst) < counted <= by_length and by_bytes - counted < 1000
    light = (LIGHT / "light_densenet121.onnx").read_bytes()  # far under the bounds, but the second one passes
    limit = LAYOUT_FACTOR * len(light) + LAYOUT_SLACK
    assert _bounds(light)[0] > limit >= _bounds(light)[1] >= wire.decoded_bytes(light, limit) and wire.within_limit(light, limit)


def test_a_file_the_count_may_refuse_is_counted_and_refused(monkeypatch) -> None:
    """Where both bounds of ``within_limit`` pass the limit the count runs and refuses what it refused before (3 MiB
    of empty nodes: 2× the file + 16 MiB passed), and on a whole file of 0.5 MiB of weights too (R per
    byte is far from what its payloads take); where it cannot pass it (the same file split: 4 KiB
    decoded for a limit from the whole file's size; or alone, small), the count does not run."""
    counted = []
    real = wire.decoded_bytes
    monkeypatch.setattr(reader, "decoded_bytes", lambda data, limit: counted.append(len(data)) or real(data, limit))
    data = load_tool("memory_layouts").sized("nodes", 3 << 20)
    assert not wire.within_limit(data, LAYOUT_FACTOR * len(data) + LAYOUT_SLACK)
    with pytest.raises(PathliftError, match="to decode"):
        reader.parse_model(data, "m.onnx")
    assert counted == [len(data)]
    base = _big_model().SerializeToString()
    small = wire.split_file(base)[0]
    for data, size, count in ((small, len(base), []), (base, None, [len(base)]), (small, None, [])):
        counted.clear()
        assert reader.parse_model(data, "m.onnx", size).graph.node and counted == count
    unknown = small + _field(1000, b"*" * (LAYOUT_SLACK // 100))  # charged 3 per byte; each "*" could open an attribute
    counted.clear()
    assert reader.parse_model(unknown, "m.onnx").graph.node and counted == [len(unknown)]
