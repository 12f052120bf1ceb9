"""An ONNX file's large initializer payloads read straight into arrays, the rest parsed by protobuf.

protobuf copies every byte of a model into its own memory, and reading a tensor's ``raw_data`` back
copies it once more: three copies of the weights (file, message, array) for one that the analyses
use. :func:`split_file` walks the protobuf wire format of ``ModelProto → graph → initializer →
raw_data`` (field numbers 7, 5, 9) from the file, reads each ``raw_data`` of at least
:data:`MIN_PAYLOAD` bytes into an aligned array of its own, and returns the file's other bytes, with
the lengths of the enclosing messages rewritten, for protobuf to parse (kilobytes instead of the
model's size). Anything it does not follow simply (a second ``graph`` or ``raw_data`` field, a
group, a length past its message's end, a varint over ten bytes) makes it return None, and the
caller parses the file whole, which then reports whatever is wrong with it.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

#: a ``raw_data`` field from this size on is read into its own array (smaller ones stay in the message)
MIN_PAYLOAD = 4096
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class _NotSimple(Exception):
    """The file is laid out in a way :func:`split_file` leaves to protobuf."""


class _Reader:
    """Bounded reads from a file: never past ``end`` (the file's size, or the current message's end)."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.pos, self.end = f, 0, size

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _NotSimple
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while read
            raise _NotSimple
        self.pos += n
        return data

    def array(self, n: int) -> np.ndarray:
        """The next ``n`` bytes as a new (aligned) array, allocated only once they are known to be there."""
        if self.pos + n > self.end:
            raise _NotSimple
        out = np.empty(n, dtype=np.uint8)
        if self.f.readinto(memoryview(out).cast("B")) != n:
            raise _NotSimple
        self.pos += n
        return out

    def varint(self) -> tuple[int, bytes]:
        """A varint's value and its bytes as read."""
        raw = bytearray()
        while True:
            byte = self.take(1)[0]
            raw.append(byte)
            if byte < 0x80:
                break
            if len(raw) == 10:
                raise _NotSimple
        return sum((b & 0x7F) << (7 * i) for i, b in enumerate(raw)), bytes(raw)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(r: _Reader, length: int, on_len) -> list[bytes]:
    """The message of ``length`` bytes at the reader's position, field by field, as byte pieces: every
    field copied as read, except length-delimited ones, which ``on_len(field number, key bytes,
    length)`` turns into pieces (it reads the field's bytes, or returns None to have them copied)."""
    end, outer = r.pos + length, r.end
    if end > outer:
        raise _NotSimple
    r.end, pieces = end, []
    while r.pos < end:
        key, key_bytes = r.varint()
        number, kind = key >> 3, key & 7
        if kind == _VARINT:
            pieces += [key_bytes, r.varint()[1]]
        elif kind in (_FIXED64, _FIXED32):
            pieces += [key_bytes, r.take(8 if kind == _FIXED64 else 4)]
        elif kind == _LEN:
            size, size_bytes = r.varint()
            own = on_len(number, key_bytes, size)
            pieces += own if own is not None else [key_bytes, size_bytes, r.take(size)]
        else:  # groups (deprecated) and invalid wire types
            raise _NotSimple
    r.end = outer
    return pieces


def _message(key_bytes: bytes, pieces: list[bytes]) -> list[bytes]:
    """A length-delimited field holding the message made of ``pieces``."""
    return [key_bytes, _varint_bytes(sum(map(len, pieces)))] + pieces


def split_file(f: BinaryIO, size: int) -> tuple[bytes, dict[int, np.ndarray]] | None:
    """The model file ``f`` (``size`` bytes) without the payloads of its main graph's large
    initializers, and those payloads as byte arrays by initializer index; None where the file is
    not laid out simply (see the module's docstring)."""
    splitter = _Splitter(_Reader(f, size))
    try:
        return b"".join(_fields(splitter.r, size, splitter.graph)), splitter.payloads
    except _NotSimple:
        return None


class _Splitter:
    """The ``on_len`` handlers of :func:`_fields` at each level, ``ModelProto`` → graph → initializer
    → raw_data, and what they collect."""

    def __init__(self, r: _Reader):
        self.r, self.graphs, self.initializers = r, 0, 0
        self.payloads: dict[int, np.ndarray] = {}
        self.raw_found = False

    def graph(self, number: int, key_bytes: bytes, length: int) -> list[bytes] | None:
        if number != _MODEL_GRAPH:
            return None
        self.graphs += 1
        if self.graphs > 1:  # protobuf merges repeated occurrences of a message field
            raise _NotSimple
        return _message(key_bytes, _fields(self.r, length, self.initializer))

    def initializer(self, number: int, key_bytes: bytes, length: int) -> list[bytes] | None:
        if number != _GRAPH_INITIALIZER:
            return None
        self.initializers += 1
        self.raw_found = False
        return _message(key_bytes, _fields(self.r, length, self.raw_data))

    def raw_data(self, number: int, _key: bytes, n: int) -> list[bytes] | None:
        if number != _TENSOR_RAW_DATA:
            return None
        if self.raw_found:  # a second raw_data: protobuf keeps the last; leave that to it
            raise _NotSimple
        self.raw_found = True
        if n < MIN_PAYLOAD:
            return None
        self.payloads[self.initializers - 1] = self.r.array(n)
        return []
