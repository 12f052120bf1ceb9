"""Differential fuzzer of the model reader against protobuf: mutations at the wire level.

Each case takes a valid seed model, decodes its wire format into a tree of fields (``ModelProto →
graph → initializer``, the levels :mod:`onnx_pathlift.fileio.wire` walks; deeper messages stay bytes),
mutates it and writes it back: keys and lengths as varints of any width from 1 to 11 bytes, field
numbers 0 and 2**29 − 1, wire types changed (groups and the invalid 6 and 7 included), fields
duplicated, dropped or moved, unknown fields inserted, lengths off by a few bytes, the file cut
anywhere, single bytes flipped. The property, on every case:

* ``ModelProto.ParseFromString`` rejects the bytes ⇒ both readers refuse the file (an
  :class:`~onnx_pathlift.errors.InvalidModelError`: exit 4);
* it accepts them ⇒ :func:`~onnx_pathlift.fileio.load.load_split` (the fast reader) and
  :func:`~onnx_pathlift.fileio.load.load_model` (protobuf on the whole file) give the same outcome: the
  same weights bit for bit as protobuf's message holds (``numpy_helper.to_array``), or the same error.

``python tools/fuzz_wire.py --cases 100000 --seed 7`` runs a long campaign (docs/fuzzing.md);
tests/test_wire.py runs a fixed subset.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_pathlift.errors import InvalidModelError, PathliftError
from onnx_pathlift.fileio import load

#: the message-typed fields followed: (level, field number) -> the next level
_NESTED = {("model", 7): "graph", ("graph", 5): "tensor"}


@dataclass
class Field:
    """One field as written: number, wire type, value (bytes, or the nested fields), the widths of
    its key and length varints (None: minimal)."""

    number: int
    kind: int
    value: bytes | list[Field]
    key_width: int | None = None
    len_width: int | None = None
    extra: dict = field(default_factory=dict)


def varint(value: int, width: int | None = None) -> bytes:
    """``value`` as a varint of ``width`` bytes (padded with continuation bytes; None: minimal); a
    negative one as its 64-bit two's complement, as protobuf writes it."""
    value &= (1 << 64) - 1 if value < 0 else -1
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value and (width is None or len(out) >= width):
            break
        out[-1] |= 0x80
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def decode(data: bytes, level: str = "model") -> list[Field]:
    """The fields of a valid message (as protobuf writes them: no groups)."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            _, end = _read_varint(data, pos)
            value = data[pos:end]
        elif kind in (1, 5):
            end = pos + (8 if kind == 1 else 4)
            value = data[pos:end]
        else:
            length, pos = _read_varint(data, pos)
            end = pos + length
            value = data[pos:end]
            nested = _NESTED.get((level, number))
            value = decode(value, nested) if nested else value
        fields.append(Field(number, kind, value))
        pos = end
    return fields


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        out += varint(f.number << 3 | f.kind, f.key_width)
        body = encode(f.value) if isinstance(f.value, list) else f.value
        if f.kind == 2:
            out += varint(len(body) + f.extra.get("len_delta", 0), f.len_width)
        out += body
    return bytes(out)


def _messages(fields: list[Field]) -> list[list[Field]]:
    """Every field list in the tree (the model's, the graph's, each initializer's)."""
    found = [fields]
    for f in fields:
        if isinstance(f.value, list):
            found += _messages(f.value)
    return found


def _unknown(rng: random.Random) -> Field:
    kind = rng.choice([0, 1, 2, 5])
    value = {0: varint(rng.getrandbits(rng.choice([7, 32, 64]))), 1: rng.randbytes(8), 5: rng.randbytes(4),
             2: rng.randbytes(rng.choice([0, 3, 5000]))}[kind]
    return Field(rng.choice([1, 9, 15, 100, 1000, (1 << 29) - 1]), kind, value)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three wire-level mutations of the valid model ``data``."""
    tree = decode(data)
    for _ in range(rng.randint(1, 3)):
        fields = rng.choice(_messages(tree))
        if not fields:
            fields.append(_unknown(rng))
            continue
        i = rng.randrange(len(fields))
        f = fields[i]
        op = rng.randrange(9)
        if op == 0:
            f.key_width = rng.randint(1, 11)
        elif op == 1 and f.kind == 2:
            f.len_width = rng.randint(1, 11)
        elif op == 2:
            f.kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
        elif op == 3:
            fields.insert(rng.randrange(len(fields) + 1), Field(f.number, f.kind, f.value))  # duplicated
        elif op == 4:
            fields.pop(i)
        elif op == 5:
            fields.insert(rng.randrange(len(fields) + 1), _unknown(rng))
        elif op == 6 and f.kind == 2:
            f.extra["len_delta"] = rng.choice([-5, -1, 1, 2, 1 << 31, (1 << 32) - 1])
        elif op == 7:
            f.number = rng.choice([0, (1 << 29) - 1, 1 << 29, f.number])
        else:
            fields.insert(rng.randrange(len(fields) + 1), fields.pop(i))  # moved
    out = encode(tree)
    if rng.random() < 0.15:
        out = out[:rng.randrange(len(out) + 1)]
    if rng.random() < 0.1 and out:
        at = rng.randrange(len(out))
        out = out[:at] + bytes([out[at] ^ (1 << rng.randrange(8))]) + out[at + 1:]
    return out


def _weights(model: onnx.ModelProto, stored: dict) -> list:
    """Each initializer as (name, dtype, shape, bytes), or the error its payload gives."""
    out = []
    for i, t in enumerate(model.graph.initializer):
        try:
            a = stored[i] if i in stored else numpy_helper.to_array(t)
            out.append((t.name, a.dtype.str, a.shape, a.tobytes()))
        except (ValueError, TypeError) as exc:
            out.append((t.name, "error", type(exc).__name__))
    return out


def _outcome(read, path: Path):
    try:
        model, stored = read(path)
    except PathliftError as exc:
        return "error", type(exc).__name__
    return "ok", _weights(model, stored)


def check(data: bytes, path: Path) -> str | None:
    """A disagreement between the readers and protobuf on the file ``data`` (written at ``path``), or None."""
    path.write_bytes(data)
    reference = onnx.ModelProto()
    try:
        reference.ParseFromString(data)
        accepted = True
    except Exception:  # noqa: BLE001 - protobuf's DecodeError or a RuntimeWarning-like error
        accepted = False
    split, whole = _outcome(load.load_split, path), _outcome(lambda p: (load.load_model(p), {}), path)
    if not accepted:
        if split != ("error", InvalidModelError.__name__) or whole != split:
            return f"protobuf rejects the file; load_split: {split[0]} {split[1] if split[0] == 'error' else ''}, load_model: {whole[0]}"
        return None
    if split != whole:
        return f"protobuf accepts the file; load_split and load_model disagree: {split[0]} vs {whole[0]}"
    if split[0] == "ok" and split[1] != _weights(reference, {}):
        return "the weights read differ from protobuf's"
    return None


def seeds() -> list[bytes]:
    """Small valid models whose weights the fast reader splits off (float32 and float64 payloads of at
    least MIN_PAYLOAD bytes) beside small ones that stay in the message."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(32, 48)).astype(np.float32), rng.normal(size=(48, 4)).astype(np.float64)
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(rng.normal(size=48).astype(np.float32), "B1"),
             numpy_helper.from_array(w2, "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "B1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Cast", ["r"], ["c"], to=onnx.TensorProto.DOUBLE),
             helper.make_node("MatMul", ["c", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return [model.SerializeToString()]


def run(cases: int, seed: int, folder: Path, budget_s: float | None = None) -> list[tuple[int, str]]:
    """``cases`` mutated files (or as many as fit in ``budget_s``): the disagreements, by case number."""
    rng, found, start = random.Random(seed), [], time.monotonic()
    bases = seeds()
    for n in range(cases):
        if budget_s is not None and time.monotonic() - start > budget_s:
            break
        data = mutate(rng, rng.choice(bases))
        problem = check(data, folder / "m.onnx")
        if problem:
            (folder / f"disagreement_{n}.onnx").write_bytes(data)
            found.append((n, problem))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--keep", help="folder for the files on which the readers disagree (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        found = run(args.cases, args.seed, folder, args.seconds)
    for n, problem in found:
        print(f"case {n}: {problem}")
    print(f"{len(found)} disagreement(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
