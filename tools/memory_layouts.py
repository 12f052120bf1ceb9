"""Model files whose fields are laid out to cost protobuf the most memory per file byte, and the peak
resident memory of ``norm`` on each.

Each layout pads a small valid model (a Gemm and a Relu) with ``n`` repetitions of one tiny field, at
the model's top (``functions``), in its graph (empty nodes, ``value_info``, sparse initializers), or
nested below the node level (an attribute's tensors, graphs, strings, packed ints; a tensor's int64
data packed or not, its string data, a value_info's dims; unknown fields and groups inside an
attribute). Decoded by protobuf (upb), these take from 1 to 100 bytes per file byte (measured:
``--decode``); :func:`onnx_pathlift.fileio.wire.decoded_bytes` counts that before decoding, and the
reader refuses a file whose count passes 2× its size + 16 MiB.

    python tools/memory_layouts.py --size-mb 8          # norm's peak RSS above a tiny model's, per layout
    python tools/memory_layouts.py --edge               # the same at the largest n each layout is read at (≤ 8 MiB)
    python tools/memory_layouts.py --decode --size-mb 8 # protobuf's own memory for each, against the count

tests/test_wire.py runs the same measurements on smaller files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from onnx_pathlift.fileio import read, wire

varint = wire.varint_bytes


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _node(attribute: bytes) -> bytes:
    """A node (graph field 1) holding one attribute (node field 5) whose fields are ``attribute``."""
    return field(1, field(5, field(1, b"a") + attribute))


def _tensor(n: int, data: bytes, data_type: int = TensorProto.INT64) -> bytes:
    """An initializer (graph field 5) named ``unused`` of ``n`` elements holding ``data``."""
    return field(5, field(1, varint(n)) + varint(2 << 3) + varint(data_type) + field(8, b"unused") + data)


_ONES = b"\x01"
#: layout -> (where its fields go: "model" or "graph", the fields for n repetitions)
LAYOUTS: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "functions": ("model", lambda n: field(25, b"") * n),
    "nodes": ("graph", lambda n: field(1, b"") * n),
    "value_info": ("graph", lambda n: field(13, b"") * n),
    "sparse_initializers": ("graph", lambda n: field(15, b"") * n),
    "value_info_dims": ("graph", lambda n: field(13, field(1, b"v") + field(2, field(1, field(2, field(1, b"") * n))))),
    "attribute_tensors": ("graph", lambda n: _node(field(10, b"") * n)),
    "attribute_graphs": ("graph", lambda n: _node(field(11, b"") * n)),
    "attribute_strings": ("graph", lambda n: _node(field(9, b"") * n)),
    "attribute_ints_packed": ("graph", lambda n: _node(field(8, _ONES * n))),
    "tensor_int64_packed": ("graph", lambda n: _tensor(n, field(7, _ONES * n))),
    "tensor_int64_unpacked": ("graph", lambda n: _tensor(n, (varint(7 << 3) + _ONES) * n)),
    "tensor_dims_packed": ("graph", lambda n: field(5, field(1, _ONES * n))),
    "tensor_string_data": ("graph", lambda n: _tensor(n, field(6, b"") * n, TensorProto.STRING)),
    "tensor_float_data": ("graph", lambda n: _tensor(n, field(4, b"\0" * 4 * n), TensorProto.FLOAT)),
    "attribute_unknown_varints": ("graph", lambda n: _node((varint(100 << 3) + b"\0") * n)),
    "attribute_unknown_groups": ("graph", lambda n: _node((varint(100 << 3 | 3) + varint(100 << 3 | 4)) * n)),
    "graph_doc_strings": ("graph", lambda n: field(10, b"") * n),
}


def base_model() -> onnx.ModelProto:
    """x (1×4) → Gemm → Relu → y (1×3): a model ``norm`` analyses."""
    weights = [helper.make_tensor("W", TensorProto.FLOAT, [3, 4], [0.5] * 12),
               helper.make_tensor("B", TensorProto.FLOAT, [3], [0.1] * 3)]
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def layout_file(name: str, n: int) -> bytes:
    """The base model with ``n`` repetitions of the layout's field (a valid protobuf message)."""
    where, make = LAYOUTS[name]
    model = base_model()
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    head = model.SerializeToString()
    return head + field(7, graph + make(n)) if where == "graph" else head + field(7, graph) + make(n)


def sized(name: str, size: int) -> bytes:
    """The layout's file of about ``size`` bytes."""
    unit = len(layout_file(name, 2)) - len(layout_file(name, 1))
    return layout_file(name, max(1, (size - len(layout_file(name, 0))) // unit))


def edge(name: str, size: int = 8 << 20) -> bytes:
    """The layout's file with the largest ``n`` the reader accepts by count (bisection), at most about
    ``size`` bytes."""
    def accepted(n: int) -> bool:
        data = layout_file(name, n)
        limit = read.LAYOUT_FACTOR * len(data) + read.LAYOUT_SLACK
        return wire.decoded_bytes(data, limit) <= limit

    lo, hi = 0, (size - len(layout_file(name, 0))) // (len(layout_file(name, 2)) - len(layout_file(name, 1)))
    if accepted(hi):
        return layout_file(name, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if accepted(mid) else (lo, mid)
    return layout_file(name, lo)


_MEASURE = ("import json, resource, subprocess, sys; p = subprocess.run([sys.executable, '-m', 'onnx_pathlift.cli', "
            "'norm', sys.argv[1], '--json'], capture_output=True, text=True); "
            "print(json.dumps([p.returncode, p.stdout, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024]))")
_DECODE = ("import resource, sys, onnx; data = open(sys.argv[1], 'rb').read(); "
           "r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; m = onnx.ModelProto(); m.ParseFromString(data); "
           "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r) * 1024)")


def peak_rss(path: Path) -> tuple[int, str, int]:
    """``norm PATH --json`` run from a fresh wrapper process: (exit code, stdout, its peak RSS in bytes)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout))


def decode_rss(path: Path) -> int:
    """protobuf's own memory to decode the file (peak RSS growth of ``ParseFromString``, in a fresh process
    started from a small one: a child forked from a large process inherits its peak RSS)."""
    wrap = "import subprocess, sys; print(subprocess.run([sys.executable, *sys.argv[1:]], text=True, check=True).returncode)"
    out = subprocess.run([sys.executable, "-c", wrap, "-c", _DECODE, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=3.0, help="file size per layout (default 3)")
    ap.add_argument("--edge", action="store_true", help="each layout at the largest n accepted instead")
    ap.add_argument("--decode", action="store_true", help="protobuf's memory and the count, not norm's peak")
    ap.add_argument("layouts", nargs="*", default=sorted(LAYOUTS))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        path.write_bytes(layout_file("nodes", 0))
        baseline = None if args.decode else peak_rss(path)[2]
        for name in args.layouts:
            data = edge(name) if args.edge else sized(name, int(args.size_mb * (1 << 20)))
            path.write_bytes(data)
            mib = len(data) / (1 << 20)
            if args.decode:
                counted = wire.decoded_bytes(data, 1 << 62)
                used = decode_rss(path)
                print(f"{name:28s} {mib:7.2f} MiB  protobuf {used / len(data):6.1f} B/B  counted {counted / len(data):6.1f} B/B")
                continue
            rc, out, peak = peak_rss(path)
            print(f"{name:28s} {mib:7.2f} MiB  exit {rc}  peak {(peak - baseline) / (1 << 20):7.1f} MiB above the "
                  f"baseline: {(peak - baseline) / len(data):5.2f} per file byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
