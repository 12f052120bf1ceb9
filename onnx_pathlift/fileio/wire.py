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

:func:`decoded_bytes` counts, from the wire format and before protobuf decodes anything, an upper bound
on the memory protobuf will take for the whole file, every nested message and repeated element included
(the reader refuses a file over 2× its size + 16 MiB: :func:`onnx_pathlift.fileio.read.parse_model`);
:func:`within_limit` tells, from the data's length or its bytes' values, when that count cannot reach its limit.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from onnx import ModelProto

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


def varint_bytes(value: int) -> bytes:
    """``value`` (≥ 0) as a protobuf varint: 7 bits per byte, low first, the top bit set on all but the last."""
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
    return [buf[:after_key], varint_bytes(sum(len(p) for p in inner)), *inner, buf[after:]], payloads


def _split_graph(buf: memoryview, begin: int, end: int) -> tuple[list, dict[int, np.ndarray]]:
    """The graph's pieces, with each initializer holding a large payload rewritten without it."""
    pieces, payloads, copied, index = [], {}, begin, 0
    for number, kind, _at, after_key, start, after in _fields(buf, begin, end):
        if number != _GRAPH_INITIALIZER or kind != _LEN:
            continue
        raw = _raw_data(buf, start, after) if after - start >= MIN_PAYLOAD else None  # a smaller one holds none
        if raw is not None:
            raw_at, raw_start, raw_after = raw
            out = np.empty(raw_after - raw_start, dtype=np.uint8)
            out[:] = buf[raw_start:raw_after]
            payloads[index] = out
            body = (raw_at - start) + (after - raw_after)
            pieces += [buf[copied:after_key], varint_bytes(body), buf[start:raw_at], buf[raw_after:after]]
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


#: upb's memory for what it decodes, bounded from above (protobuf 7.36; measured in docs/fuzzing.md): a
#: message takes at most a header and 8 bytes per declared field (16 per string field: a view); a string
#: or bytes value is copied; a repeated field's array doubles as it grows and the arena keeps the
#: outgrown ones, so it takes at most three times its elements' bytes (8 for a message pointer, 16 for a
#: string view; measured: 2**19 + 1 elements take 3×, 2**20 − 1 take 2×), except a first packed run of
#: fixed-width values, reserved exactly; an unknown field, and an enum value outside the enum, is copied
#: into a growing buffer: counted three times
_HEADER, _GROWTH, _POINTER, _VIEW = 24, 3, 8, 16
#: added once: upb's arena blocks and the pages they round up to
_ARENA = 1 << 20
#: upb's nesting limit: it refuses a file nested deeper, so nothing below is counted
_MAX_DEPTH = 100
_START_GROUP, _END_GROUP = 3, 4


class _Field(NamedTuple):
    wire: int  # the wire type protobuf expects
    element: int  # bytes of one decoded scalar element (0 for strings and messages)
    repeated: bool
    sub: object  # the message type's descriptor, or None
    enum: bool
    size: int  # bytes a decoded message of type ``sub`` takes, with its pointer in a repeated field


@functools.cache
def _plan(descriptor) -> dict[int, _Field]:
    """``{field number: _Field}`` of a message type."""
    fields = {}
    for f in descriptor.fields:
        repeated = _repeated(f)
        sub = f.message_type if f.type == f.TYPE_MESSAGE else None
        size = _struct(sub) + (_GROWTH * _POINTER if repeated else 0) if sub else 0
        fields[f.number] = _Field(_WIRE.get(f.type, _VARINT), _ELEMENT.get(f.cpp_type, 0), repeated, sub,
                                  f.cpp_type == f.CPPTYPE_ENUM, size)
    return fields


def _struct(descriptor) -> int:
    """Bytes of one decoded message of this type, its fields' values aside."""
    strings = sum(1 for f in descriptor.fields if f.type in (f.TYPE_STRING, f.TYPE_BYTES) and not _repeated(f))
    return _HEADER + _VIEW * strings + _POINTER * (len(descriptor.fields) - strings)


def _repeated(f) -> bool:
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED  # protobuf < 5.28


_FD = FieldDescriptor
_WIRE = {_FD.TYPE_DOUBLE: _FIXED64, _FD.TYPE_FIXED64: _FIXED64, _FD.TYPE_SFIXED64: _FIXED64, _FD.TYPE_FLOAT: _FIXED32,
         _FD.TYPE_FIXED32: _FIXED32, _FD.TYPE_SFIXED32: _FIXED32, _FD.TYPE_STRING: _LEN, _FD.TYPE_BYTES: _LEN,
         _FD.TYPE_MESSAGE: _LEN, _FD.TYPE_GROUP: _START_GROUP}
_ELEMENT = {_FD.CPPTYPE_INT32: 4, _FD.CPPTYPE_UINT32: 4, _FD.CPPTYPE_ENUM: 4, _FD.CPPTYPE_FLOAT: 4, _FD.CPPTYPE_INT64: 8,
            _FD.CPPTYPE_UINT64: 8, _FD.CPPTYPE_DOUBLE: 8, _FD.CPPTYPE_BOOL: 1}


class _OverLimit(Exception):
    """The count passed its limit."""


def decoded_bytes(data: bytes | memoryview, limit: int) -> int:
    """An upper bound on the memory protobuf (upb) takes to decode ``data`` as a ``ModelProto``, counted
    from the wire format before protobuf allocates anything, every nested message, string and repeated
    element included; the count stops once it passes ``limit`` (the bound returned is then over it), and
    at the first part that is not wire format protobuf accepts (protobuf then refuses the file there,
    having decoded only what was counted before it)."""
    buf = memoryview(data).cast("B")
    count = _Count(buf, limit)
    try:
        count.message(ModelProto.DESCRIPTOR, 0, len(buf), 0)
    except (_NotSimple, _OverLimit):
        pass
    return count.total


class _Count:
    """The running bound of :func:`decoded_bytes` over the file ``buf``."""

    def __init__(self, buf: memoryview, limit: int) -> None:
        self.buf, self.bytes, self.limit, self.total = buf, np.frombuffer(buf, dtype=np.uint8), limit, _ARENA

    def message(self, descriptor, pos: int, end: int, depth: int) -> None:
        """Add the fields of the message of type ``descriptor`` in ``buf[pos:end]`` (one-byte keys and
        lengths, nearly every field, decoded inline: this loop runs once per field of the file)."""
        if depth > _MAX_DEPTH:
            raise _NotSimple
        buf, fields, packed = self.buf, _plan(descriptor), set()
        while pos < end:
            key = buf[pos]
            if 8 <= key < 0x80:
                number, kind, after_key = key >> 3, key & 7, pos + 1
            else:
                number, kind, after_key = _key(buf, pos, end)
            if kind == _LEN and after_key < end and buf[after_key] < 0x80:
                start, after = after_key + 1, after_key + 1 + buf[after_key]
                if after > end:
                    raise _NotSimple
            elif kind == _VARINT and after_key < end and buf[after_key] < 0x80:
                start, after = after_key, after_key + 1
            elif kind == _START_GROUP:  # only ever an unknown field in ONNX, which protobuf keeps
                start, after = pos, _skip_group(buf, number, after_key, end, depth + 1)
            else:
                start, after = _skip(buf, kind, after_key, end)
            f = fields.get(number)
            if f is None or not (kind == f.wire or (kind == _LEN and f.repeated and f.element)):
                self.total += _GROWTH * (after - pos)  # an unknown field (or a known one of another wire type)
            elif f.sub is not None:
                self.total += f.size
                self.message(f.sub, start, after, depth + 1)
            elif f.element and kind != _LEN and not f.repeated and not f.enum:
                pass  # a singular number: in its message's own bytes
            else:
                self.total += self._value(f, kind, pos, start, after, number in packed)
                packed.add(number)
            if self.total > self.limit:
                raise _OverLimit
            pos = after

    def _value(self, f: _Field, kind: int, at: int, start: int, after: int, again: bool) -> int:
        """The bytes a scalar, string or packed field's value at ``buf[at:after]`` takes decoded (``again``:
        the field occurred before in this message)."""
        if not f.element:  # a string or bytes value, copied
            return (after - start) + (_GROWTH * _VIEW if f.repeated else 0)
        if kind == _LEN and f.wire != _VARINT:  # packed fixed-width values: reserved exactly, unless appended
            return (after - start) * f.element // (8 if f.wire == _FIXED64 else 4) * (_GROWTH if again else 1)
        # packed varints (one per byte under 0x80, grown one at a time), or one value
        n = int(np.count_nonzero(self.bytes[start:after] < 0x80)) if kind == _LEN else int(f.repeated)
        return _GROWTH * (f.element * n + (after - at if f.enum else 0))


def _skip_group(buf: memoryview, number: int, pos: int, end: int, depth: int) -> int:
    """Past the end of the group of field ``number`` whose fields start at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _NotSimple
    while pos < end:
        inner, kind, pos = _key(buf, pos, end)
        if kind == _END_GROUP:
            if inner != number:
                raise _NotSimple
            return pos
        pos = _skip_group(buf, inner, pos, end, depth + 1) if kind == _START_GROUP else _skip(buf, kind, pos, end)[1]
    raise _NotSimple


def _charge_ratio(number: int, f: _Field) -> int:
    """The most :class:`_Count` charges field ``number`` (plan ``f``, given its own wire type: another one is
    charged as unknown, ``_GROWTH`` per byte) per byte it occupies on the wire: its key (k ≥ the fewest
    bytes of ``number << 3``), its length (≥ 1 byte) and a value that is not a message. A message: its
    ``size`` for k + 1 bytes or more. A string, bytes (or a group, ≥ 2k bytes): p + 3·16·[repeated] for
    k + 1 + p. Numbers, e bytes each decoded (c = ``_GROWTH``): packed varints c·e per byte (a value per
    byte under 0x80 at most), packed fixed ones of w bytes c·e/w per byte; one value c·e·[repeated] for
    k + 1 bytes (varint) or k + w; an enum value also c per byte of its whole field. Rounded up."""
    k, c, e = len(varint_bytes(number << 3)), _GROWTH, f.element
    if f.sub is not None:
        return _ceil(f.size, k + 1)
    if not e:
        return max(1, _ceil(c * _VIEW * f.repeated, k + 1))
    width = {_VARINT: 1, _FIXED64: 8, _FIXED32: 4}[f.wire]
    return max(_ceil(c * e, width) * f.repeated, _ceil(c * e * f.repeated, k + width)) + c * f.enum


def _ceil(a: int, b: int) -> int:
    """⌈a / b⌉."""
    return -(-a // b)


def _message_types() -> list:
    """Every message type a ``ModelProto`` reaches, ``ModelProto`` first."""
    found, todo = {}, [ModelProto.DESCRIPTOR]
    while todo:
        descriptor = todo.pop()
        if descriptor.full_name not in found:
            found[descriptor.full_name] = descriptor
            todo += [f.sub for f in _plan(descriptor).values() if f.sub is not None]
    return list(found.values())


@functools.cache
def charge_ratio(messages: bool = True) -> int:
    """R: the most :func:`decoded_bytes` counts per byte of the data, beyond ``_ARENA``, the maximum of
    ``_GROWTH`` (an unknown field) and :func:`_charge_ratio` over every field of every message type a
    ``ModelProto`` reaches (derived from the descriptors and :func:`_plan`: 112 with onnx 1.23, for an
    empty ``NodeProto.attribute``); without ``messages``, over the fields that are not messages (24)."""
    return max([_GROWTH] + [_charge_ratio(number, f) for descriptor in _message_types()
                            for number, f in _plan(descriptor).items() if messages or f.sub is None])


@functools.cache
def _byte_weights() -> np.ndarray:
    """w[v], per byte value v: r = R without messages, and for a value that can open the key of a message
    field (``key & 0x7F | 0x80`` for any key, ``key`` itself under 0x80), the largest ``size − r`` of
    such a field if more. A message field's own bytes are its key, whose first byte has that value, and a
    length of at least one byte (weight ≥ r): they weigh at least its ``size``; any other field weighs
    at least r per byte of its own, what it is charged at most."""
    r = charge_ratio(messages=False)
    weights = np.full(256, r, dtype=np.int64)
    for descriptor in _message_types():
        for number, f in _plan(descriptor).items():
            key = number << 3 | _LEN
            for first in ({key & 0x7F | 0x80, key} if key < 0x80 else {key & 0x7F | 0x80}) if f.sub else ():
                weights[first] = max(weights[first], f.size - r)
    return weights


def within_limit(data: bytes | memoryview, limit: int) -> bool:
    """Whether ``decoded_bytes(data, limit) ≤ limit`` holds without counting: ``_ARENA + R·len(data) ≤ limit``
    (R: :func:`charge_ratio`), or ``_ARENA + Σ w[b] ≤ limit`` over the bytes b of ``data`` (w:
    :func:`_byte_weights`; summed only where it can pass, ``_ARENA + r·len(data) ≤ limit``).

    Proof: each field :meth:`_Count.message` charges is charged at most R per byte of its own on the
    wire (key, length, a value that is not a message; an unknown field or group whole), and at most what
    these bytes weigh by w; the bytes of different fields are disjoint (a message's value is its
    fields, charged on their own), and the count starts at ``_ARENA``: so it never passes either bound,
    stopped early or not."""
    if _ARENA + charge_ratio() * len(data) <= limit:
        return True
    weights = _byte_weights()
    if _ARENA + int(weights.min()) * len(data) > limit:
        return False
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    return _ARENA + int(counts @ weights) <= limit
