"""An ONNX file's large initializer payloads read straight into arrays, the rest parsed by protobuf.

protobuf copies every byte of a model into its own memory, and reading a tensor's ``raw_data`` back
copies it once more: three copies of the weights (file, message, array) for one that the analyses
use. :func:`split_file` walks the protobuf wire format of ``ModelProto → graph → initializer →
raw_data`` (field numbers 7, 5, 9) in the file's bytes, copies each ``raw_data`` of at least
:data:`MIN_PAYLOAD` bytes into an aligned array of its own, and returns the file's other bytes, with
the lengths of the enclosing messages rewritten, for protobuf to parse (kilobytes instead of the
model's size).

It is exactly as strict as protobuf (upb, the parser behind ``ModelProto.ParseFromString``) where it
reads what protobuf will not see again (the keys and lengths it rewrites or drops), and stricter
elsewhere: a key or a length longer than 5 bytes, a key of 2**32 or more or of field number 0, a
length of 2**31 or more, a value over 10 bytes, a group, a wire type 6 or 7, a second ``graph`` or
``raw_data`` field, a length past its message's end: it returns None, and the caller parses the file
whole, which then gives protobuf's own answer. Everything it copies, protobuf parses. Memory: the
returned pieces are spans of the file's bytes, one per run between two rewritten fields (at most
three per payload of :data:`MIN_PAYLOAD` bytes), never one object per field.
"""

from __future__ import annotations

import numpy as np

#: a ``raw_data`` field from this size on is read into its own array (smaller ones stay in the message)
MIN_PAYLOAD = 4096
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
#: protobuf's limits: keys and lengths are 32-bit varints (at most 5 bytes), other varints 64-bit (10)
_KEY_BYTES, _VALUE_BYTES = 5, 10
_KEY_LIMIT, _LENGTH_LIMIT = 1 << 32, 1 << 31


class _NotSimple(Exception):
    """The file is laid out in a way :func:`split_file` leaves to protobuf."""


def _varint(buf: memoryview, pos: int, end: int, width: int) -> tuple[int, int]:
    """The varint at ``pos`` (at most ``width`` bytes, ending before ``end``): its value and the
    position after it."""
    value = shift = 0
    for i in range(pos, min(pos + width, end)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise _NotSimple


def _key(buf: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """The field number, the wire type and the position after the key at ``pos``."""
    key, pos = _varint(buf, pos, end, _KEY_BYTES)
    if key >= _KEY_LIMIT or key >> 3 == 0:
        raise _NotSimple
    return key >> 3, key & 7, pos


def _skip(buf: memoryview, kind: int, pos: int, end: int) -> tuple[int, int]:
    """Past the value of wire type ``kind`` at ``pos``: (where its payload starts, where it ends)."""
    if kind == _VARINT:
        return pos, _varint(buf, pos, end, _VALUE_BYTES)[1]
    if kind in (_FIXED64, _FIXED32):
        after = pos + (8 if kind == _FIXED64 else 4)
    elif kind == _LEN:
        length, pos = _varint(buf, pos, end, _KEY_BYTES)
        if length >= _LENGTH_LIMIT:
            raise _NotSimple
        after = pos + length
    else:  # groups (deprecated) and invalid wire types
        raise _NotSimple
    if after > end:
        raise _NotSimple
    return pos, after


def _fields(buf: memoryview, pos: int, end: int):
    """Each field of the message in ``buf[pos:end]``: (field number, wire type, where it starts, where
    its key ends, where its payload starts, where it ends)."""
    while pos < end:
        number, kind, after_key = _key(buf, pos, end)
        start, after = _skip(buf, kind, after_key, end)
        yield number, kind, pos, after_key, start, after
        pos = after


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def split_file(data: bytes | memoryview) -> tuple[bytes, dict[int, np.ndarray]] | None:
    """The model file's bytes ``data`` without the payloads of its main graph's large initializers,
    and those payloads as byte arrays by initializer index; None where the file is not laid out
    simply (see the module's docstring)."""
    buf = memoryview(data).cast("B")
    try:
        pieces, payloads = _split_model(buf)
    except _NotSimple:
        return None
    return b"".join(pieces), payloads


def _split_model(buf: memoryview) -> tuple[list, dict[int, np.ndarray]]:
    """The model's pieces (spans of ``buf`` and rewritten headers) and the payloads."""
    graph = None
    for number, kind, _at, after_key, start, after in _fields(buf, 0, len(buf)):
        if number == _MODEL_GRAPH and kind == _LEN:
            if graph is not None:  # protobuf merges repeated occurrences of a message field
                raise _NotSimple
            graph = after_key, start, after
    if graph is None:
        return [buf], {}
    after_key, start, after = graph
    inner, payloads = _split_graph(buf, start, after)
    return [buf[:after_key], _varint_bytes(sum(len(p) for p in inner)), *inner, buf[after:]], payloads


def _split_graph(buf: memoryview, begin: int, end: int) -> tuple[list, dict[int, np.ndarray]]:
    """The graph's pieces, with each initializer holding a large payload rewritten without it."""
    pieces, payloads, copied, index = [], {}, begin, 0
    for number, kind, _at, after_key, start, after in _fields(buf, begin, end):
        if number != _GRAPH_INITIALIZER or kind != _LEN:
            continue
        raw = _raw_data(buf, start, after)
        if raw is not None:
            raw_at, raw_start, raw_after = raw
            out = np.empty(raw_after - raw_start, dtype=np.uint8)
            out[:] = buf[raw_start:raw_after]
            payloads[index] = out
            body = (raw_at - start) + (after - raw_after)
            pieces += [buf[copied:after_key], _varint_bytes(body), buf[start:raw_at], buf[raw_after:after]]
            copied = after
        index += 1
    pieces.append(buf[copied:end])
    return pieces, payloads


def _raw_data(buf: memoryview, begin: int, end: int) -> tuple[int, int, int] | None:
    """The tensor's one ``raw_data`` field of at least :data:`MIN_PAYLOAD` bytes (where it starts, where
    its payload starts, where it ends), or None."""
    found = None
    for number, kind, at, _key_end, start, after in _fields(buf, begin, end):
        if number == _TENSOR_RAW_DATA and kind == _LEN:
            if found is not None:  # a second raw_data: protobuf keeps the last; leave that to it
                raise _NotSimple
            found = at, start, after
    return found if found is not None and found[2] - found[1] >= MIN_PAYLOAD else None


#: protobuf's (upb's) memory for one decoded sub-message, in bytes (measured: 1.5 million empty
#: ``value_info`` entries of 2 file bytes each take 114 MB, 76 bytes each)
MESSAGE_BYTES = 72
#: the length-delimited fields that are strings, not messages, at each level :func:`message_count` walks
_STRINGS = {"model": {2, 3, 4, 6}, "graph": {2, 10}, "node": {1, 2, 3, 4, 6, 7, 8}}
_LEVELS = {("model", _MODEL_GRAPH): "graph", ("graph", 1): "node"}


def message_count(data: bytes | memoryview) -> int:
    """The sub-messages of the model's top levels (the model, its graphs and their nodes), counted from
    the wire format before protobuf allocates one object each; a part that is not plain wire format
    (which protobuf then refuses, or a group it keeps as an unknown field) is not counted."""
    buf = memoryview(data).cast("B")
    return _count(buf, 0, len(buf), "model")


def _count(buf: memoryview, begin: int, end: int, level: str) -> int:
    n = 0
    try:
        for number, kind, _at, _key_end, start, after in _fields(buf, begin, end):
            if kind == _LEN and number not in _STRINGS[level]:
                n += 1
                inner = _LEVELS.get((level, number))
                n += _count(buf, start, after, inner) if inner else 0
    except _NotSimple:
        pass
    return n
