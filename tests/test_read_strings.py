"""Invalid UTF-8 in string fields: ``parse_model`` refuses a file exactly when ``read._bad_string`` (the walk
of protobuf's decoded message, the oracle) finds an invalid string in it, with the same message, while
checking valid files by a second decode in C (``read._valid_utf8``) instead of that walk.

Files: invalid and valid UTF-8 in every string field of every message type a ``ModelProto`` reaches, in the
main graph, in graphs nested in attributes, in functions and training graphs; a singular string given twice
(protobuf keeps the last), a oneof's string replaced by its other member, a message given twice (merged).
"""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import load_tool
from google.protobuf.descriptor import FieldDescriptor
from onnx import GraphProto, ModelProto

from onnx_pathlift.errors import InvalidModelError
from onnx_pathlift.fileio import read

field = load_tool("memory_layouts").field
BAD = [b"\xff", b"a\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"ok\x80"]
GOOD = [b"", b"ok", b"\xc3\xa9\x00", b"\xef\xbf\xbe", b"\xf4\x8f\xbf\xbf"]


def _paths(root) -> dict[str, tuple[object, list[FieldDescriptor]]]:
    """Each message type reachable from ``root``: its descriptor and the shortest path of fields there."""
    paths, todo = {root.full_name: (root, [])}, [root]
    while todo:
        descriptor = todo.pop(0)
        for f in descriptor.fields:
            if f.message_type is not None and f.message_type.full_name not in paths:
                paths[f.message_type.full_name] = (f.message_type, paths[descriptor.full_name][1] + [f])
                todo.append(f.message_type)
    return paths


def _string_fields() -> list[tuple[list[int], list[FieldDescriptor], FieldDescriptor]]:
    """(field numbers from the model down to the message, the fields on the way, the string field) for every
    string field of every message type, from the model itself, from a graph in a node's attribute (``g``
    and ``graphs``), from a function and from a training graph."""
    model = _paths(ModelProto.DESCRIPTOR)
    attribute = [f.number for f in model["onnx.AttributeProto"][1]]
    roots = [([], ModelProto.DESCRIPTOR), (attribute + [6], GraphProto.DESCRIPTOR), (attribute + [11], GraphProto.DESCRIPTOR),
             ([25], model["onnx.FunctionProto"][0]), ([20, 1], GraphProto.DESCRIPTOR)]
    found = []
    for prefix, root in roots:
        for descriptor, path in _paths(root).values():
            found += [(prefix + [g.number for g in path], path, f) for f in descriptor.fields if f.type == f.TYPE_STRING]
    return found


def _other(f: FieldDescriptor) -> bytes:
    """An empty value of another member of ``f``'s oneof."""
    other = next(g for g in f.containing_oneof.fields if g is not f)
    return field(other.number, b"") if other.message_type else bytes([other.number << 3, 1])


def _wrap(path: list[int], inner: bytes) -> bytes:
    """``inner`` (a message's fields) nested down ``path``; a model always with a graph."""
    for number in reversed(path):
        inner = field(number, inner)
    return inner if path[:1] == [7] else field(7, b"") + inner


def _outcome(data: bytes) -> str:
    try:
        read.parse_model(data, "m.onnx")
    except InvalidModelError as exc:
        return str(exc)
    return "ok"


def _oracle(data: bytes) -> str:
    """The outcome before this check existed: protobuf's decode, then ``_bad_string`` on the message."""
    model = ModelProto()
    model.ParseFromString(data)
    bad = read._bad_string(model)
    return "ok" if bad is None else f"m.onnx: not an ONNX model (a string field holds invalid UTF-8: {bad!r})"


def _files() -> list[bytes]:
    """Models with each string field given invalid or valid values, once or twice, alone or replaced."""
    files = []
    for path, fields, f in _string_fields():
        for bad, good in zip(BAD, GOOD, strict=False):
            for values in ([bad], [good], [bad, good], [good, bad], [good, good]):
                files.append(_wrap(path, b"".join(field(f.number, v) for v in values)))
        if f.containing_oneof is not None:  # another member after it clears it
            files.append(_wrap(path, field(f.number, BAD[0]) + _other(f)))
        if path:  # the message given twice: merged, the singular string of the second kept
            inner = field(path[-1], field(f.number, BAD[0])) + field(path[-1], field(f.number, b"ok"))
            if fields and fields[-1].containing_oneof is not None:  # or the message cleared by another member
                inner = field(path[-1], field(f.number, BAD[0])) + _other(fields[-1])
            files.append(_wrap(path[:-1], inner))
    return files


def test_invalid_utf8_refused_exactly_as_the_walk_of_the_message_refuses_it() -> None:
    files = _files()
    outcomes = [(_outcome(data), _oracle(data)) for data in files]
    assert [i for i, (got, want) in enumerate(outcomes) if got != want] == []
    kinds = Counter((read._valid_utf8(data), want == "ok") for data, (_, want) in zip(files, outcomes, strict=True))
    assert kinds[(True, False)] == 0  # the second decode never accepts what the walk refuses
    # valid files, invalid ones, and files whose invalid value protobuf drops (the walk decides those)
    assert len(_string_fields()) > 150 and min(kinds[(True, True)], kinds[(False, False)], kinds[(False, True)]) > 500


def test_the_comparison_catches_a_check_that_misses_a_string(monkeypatch) -> None:
    """The property can fail: with the walk left out where the second decode accepted, a check that accepts
    all (or one that reads no nested graph) lets invalid strings through."""
    monkeypatch.setattr(read, "_valid_utf8", lambda data: True)
    assert any(_outcome(data) != _oracle(data) for data in _files())


@pytest.mark.parametrize("threshold", [0, read.CHECKED_DECODE_BYTES])
def test_both_ways_of_checking_give_the_oracles_answer(monkeypatch, threshold: int) -> None:
    """Data over ``CHECKED_DECODE_BYTES`` is checked by the walk alone: the same outcomes."""
    monkeypatch.setattr(read, "CHECKED_DECODE_BYTES", threshold)
    files = _files()[::7]
    assert [_outcome(data) for data in files] == [_oracle(data) for data in files]
