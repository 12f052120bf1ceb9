#!/usr/bin/env python
"""Rebuild an ONNX CNN as a torch module, to fine-tune a model that only exists as ONNX (a slim model of
``prune --structure channel``, or another tool's export).

:class:`OnnxModule` interprets the graph node by node in topological order. The float weights read by
Conv (W, B), Gemm (B, C), MatMul (a constant operand) and BatchNormalization (scale, B) become
``nn.Parameter``s; every other constant (BN mean and variance, Clip bounds, Reshape shapes, constant
Add/Mul operands) is a buffer or a Python constant, not trained. A BatchNormalization is always the
inference formula ``scale·(x − mean)/√(var + ε) + B`` (its statistics stay fixed while training).

Ops: Conv, Gemm, MatMul, Add, Mul, Relu, Clip, BatchNormalization, MaxPool, AveragePool,
GlobalAveragePool, Flatten, Reshape (constant shape), Identity, Concat, and Constant nodes as constants.
Anything else (or an attribute we do not implement: ``auto_pad`` SAME_*, asymmetric average-pool padding,
MaxPool indices, a BN in training mode) raises :class:`UnsupportedOnnx` naming the node. Nothing is
written back: :func:`max_abs_error` checks the rebuild against onnxruntime before it is trusted.

``bn_after_conv=True`` inserts a trainable ``nn.BatchNorm2d`` after every 2-D conv (for fine-tuning a model
whose BatchNorm was folded by the exporter); :meth:`OnnxModule.calibrate` makes them the identity on data
first, so the rebuilt function is unchanged until training moves them.

Usage::

    python tools/onnx_torch.py MODEL.onnx DATA.npz    # prints the max |torch - onnxruntime| on DATA's x
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

PARAM_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "BatchNormalization": (1, 2)}


class UnsupportedOnnx(ValueError):
    """The graph uses an op or attribute the rebuild does not implement."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs: dict, dims: int, node: onnx.NodeProto) -> tuple[list[int], list[int]]:
    """(begin, end) pads of a conv/pool; ``auto_pad`` other than NOTSET/VALID is refused."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise UnsupportedOnnx(f"node {node.name!r} ({node.op_type}): auto_pad={auto} is not supported")
    pads = list(attrs.get("pads", [0] * (2 * dims))) if auto == "NOTSET" else [0] * (2 * dims)
    return pads[:dims], pads[dims:]


def _pad_input(x: torch.Tensor, begin: list[int], end: list[int], value: float) -> torch.Tensor:
    """Explicit padding (F.pad wants the last axis first)."""
    flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    return F.pad(x, flat, value=value)


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict, node: onnx.NodeProto) -> torch.Tensor:
    dims = w.dim() - 2
    begin, end = _pads(a, dims, node)
    if begin != end:
        x, begin = _pad_input(x, begin, end, 0.0), [0] * dims
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return fn(x, w, b, stride=a.get("strides", [1] * dims), padding=begin, dilation=a.get("dilations", [1] * dims),
              groups=a.get("group", 1))


def _max_pool(x: torch.Tensor, a: dict, node: onnx.NodeProto) -> torch.Tensor:
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOnnx(f"node {node.name!r} (MaxPool): the indices output is not supported")
    k = list(a["kernel_shape"])
    begin, end = _pads(a, len(k), node)
    if begin != end or any(2 * p > kk for p, kk in zip(begin, k)):
        x, begin = _pad_input(x, begin, end, -math.inf), [0] * len(k)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(k)]
    return fn(x, k, stride=a.get("strides", [1] * len(k)), padding=begin, dilation=a.get("dilations", [1] * len(k)),
              ceil_mode=bool(a.get("ceil_mode", 0)))


def _avg_pool(x: torch.Tensor, a: dict, node: onnx.NodeProto) -> torch.Tensor:
    k = list(a["kernel_shape"])
    begin, end = _pads(a, len(k), node)
    if begin != end or any(2 * p > kk for p, kk in zip(begin, k)) or a.get("dilations", [1] * len(k)) != [1] * len(k):
        raise UnsupportedOnnx(f"node {node.name!r} (AveragePool): asymmetric or large pads or dilations are not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(k)]
    return fn(x, k, stride=a.get("strides", [1] * len(k)), padding=begin, ceil_mode=bool(a.get("ceil_mode", 0)),
              count_include_pad=bool(a.get("count_include_pad", 0)))


def _gemm(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, a: dict) -> torch.Tensor:
    """alpha·A'·B' + beta·C (A', B' transposed when transA / transB)."""
    x = x.t() if a.get("transA", 0) else x
    b = b.t() if a.get("transB", 0) else b
    y = a.get("alpha", 1.0) * (x @ b)
    return y if c is None else y + a.get("beta", 1.0) * c


def _batch_norm(v: list, a: dict, node: onnx.NodeProto) -> torch.Tensor:
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise UnsupportedOnnx(f"node {node.name!r} (BatchNormalization): training mode is not supported")
    return F.batch_norm(v[0], v[3], v[4], v[1], v[2], training=False, eps=a.get("epsilon", 1e-5))


def _clip(v: list, a: dict) -> torch.Tensor:
    """Bounds from the inputs (opset ≥ 11) or the attributes (older opsets); a missing bound is none."""
    lo = v[1] if len(v) > 1 and v[1] is not None else a.get("min")
    hi = v[2] if len(v) > 2 and v[2] is not None else a.get("max")
    return torch.clamp(v[0], min=lo, max=hi)


def _reshape(x: torch.Tensor, shape, a: dict, node: onnx.NodeProto) -> torch.Tensor:
    if not isinstance(shape, np.ndarray):
        raise UnsupportedOnnx(f"node {node.name!r} (Reshape): the target shape must be a constant")
    target = [int(d) for d in shape]
    if not a.get("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    """2-D: the axes before ``axis`` merged, then those from it (trace-safe: no Python int of a batch size)."""
    axis = axis % x.dim() if axis else 0
    return x.reshape(1, -1) if axis == 0 else x.flatten(axis).flatten(0, axis - 1)


OPS: dict[str, Callable] = {
    "Conv": lambda v, a, n: _conv(v[0], v[1], v[2] if len(v) > 2 else None, a, n),
    "Gemm": lambda v, a, n: _gemm(v[0], v[1], v[2] if len(v) > 2 else None, a),
    "MatMul": lambda v, a, n: torch.matmul(v[0], v[1]),
    "Add": lambda v, a, n: v[0] + v[1],
    "Mul": lambda v, a, n: v[0] * v[1],
    "Relu": lambda v, a, n: F.relu(v[0]),
    "Clip": lambda v, a, n: _clip(v, a),
    "BatchNormalization": _batch_norm,
    "MaxPool": lambda v, a, n: _max_pool(v[0], a, n),
    "AveragePool": lambda v, a, n: _avg_pool(v[0], a, n),
    "GlobalAveragePool": lambda v, a, n: v[0].mean(dim=tuple(range(2, v[0].dim())), keepdim=True),
    "Flatten": lambda v, a, n: _flatten(v[0], a.get("axis", 1)),
    "Reshape": lambda v, a, n: _reshape(v[0], v[1], a, n),
    "Identity": lambda v, a, n: v[0],
    "Concat": lambda v, a, n: torch.cat(v, dim=a["axis"]),
}


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and the values of Constant nodes (``value`` attribute only)."""
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            a = _attrs(node)
            if "value" not in a:
                raise UnsupportedOnnx(f"node {node.name!r} (Constant): only the 'value' attribute is supported")
            consts[node.output[0]] = numpy_helper.to_array(a["value"])
    return consts


class OnnxModule(nn.Module):
    """A torch module computing an ONNX graph; weights of Conv/Gemm/MatMul/BatchNormalization are parameters."""

    def __init__(self, model: onnx.ModelProto, bn_after_conv: bool = False) -> None:
        super().__init__()
        graph = model.graph
        consts = _constants(graph)
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]
        bad = sorted({n.op_type for n in self.nodes if n.op_type not in OPS})
        if bad or any(n.domain not in ("", "ai.onnx") for n in self.nodes):
            raise UnsupportedOnnx(f"ops not supported by the torch rebuild: {', '.join(bad) or 'a custom domain'}"
                                  f" (supported: {', '.join(OPS)}, Constant)")
        trainable = {n.input[i] for n in self.nodes for i in PARAM_INPUTS.get(n.op_type, ()) if i < len(n.input)}
        self.weights, self.keys = nn.ParameterDict(), {}
        for k, (name, value) in enumerate(sorted(consts.items())):
            key = f"t{k}"
            self.keys[name] = key
            if value.dtype.kind != "f":
                continue
            tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            if name in trainable:
                self.weights[key] = nn.Parameter(tensor)
            else:
                self.register_buffer(key, tensor)
        self.consts = {name: v for name, v in consts.items() if v.dtype.kind != "f"}
        self.inputs = [i.name for i in graph.input if i.name not in consts]
        self.outputs = [o.name for o in graph.output]
        self.attrs = [_attrs(n) for n in self.nodes]
        self.norms = nn.ModuleDict({f"n{i}": nn.BatchNorm2d(consts[n.input[1]].shape[0]) for i, n in enumerate(self.nodes)
                                    if bn_after_conv and n.op_type == "Conv" and consts[n.input[1]].ndim == 4})

    def _value(self, name: str, env: dict):
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.consts:
            return self.consts[name]
        key = self.keys[name]
        return self.weights[key] if key in self.weights else getattr(self, key)

    def _run(self, xs: tuple[torch.Tensor, ...], stats: dict | None = None):
        """The graph on ``xs``; with ``stats``, the inserted BatchNorms are skipped and the per-channel mean and
        (biased) variance of their inputs recorded instead."""
        env = dict(zip(self.inputs, xs))
        for i, (node, a) in enumerate(zip(self.nodes, self.attrs)):
            out = OPS[node.op_type]([self._value(name, env) for name in node.input], a, node)
            if f"n{i}" in self.norms:
                if stats is None:
                    out = self.norms[f"n{i}"](out)
                else:
                    stats[f"n{i}"] = out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3), unbiased=False)
            env[node.output[0]] = out
        outs = [env[o] for o in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def forward(self, *xs: torch.Tensor):
        return self._run(xs)

    def calibrate(self, *xs: torch.Tensor) -> None:
        """Make each BatchNorm inserted after a conv (``bn_after_conv``) the identity on ``xs``: running mean m and
        variance v = the conv output's statistics, scale √(v + ε), shift m; so eval mode computes the graph's
        function, and training mode on a batch with those statistics too."""
        stats: dict = {}
        with torch.no_grad():
            self._run(xs, stats)
            for key, bn in self.norms.items():
                mean, var = stats[key]
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.weight.copy_(torch.sqrt(var + bn.eps))
                bn.bias.copy_(mean)


def onnxruntime_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on ``x`` in onnxruntime (CPU, one thread)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def max_abs_error(module: nn.Module, model: onnx.ModelProto, x: np.ndarray) -> float:
    """max |torch(x) − onnxruntime(x)| over the first output, on the whole batch ``x``."""
    with torch.no_grad():
        ours = module.eval()(torch.from_numpy(x)).numpy()
    return float(np.abs(ours - onnxruntime_outputs(model, x)).max())


def input_batch(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``x`` as float32, reshaped to the first input's shape (its non-batch dimensions must be fixed)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    return np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *(d.dim_value for d in dims))


def main(argv: list[str]) -> int:
    model = onnx.load(argv[0])
    try:
        module = OnnxModule(model)
    except UnsupportedOnnx as e:
        print(f"onnx_torch: error: {e}", file=sys.stderr)
        return 2
    x = input_batch(model, np.load(argv[1])["x"])
    print(f"max |torch - onnxruntime| = {max_abs_error(module, model, x):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
