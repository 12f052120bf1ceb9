"""Calibration data: reading it, running a model on it (intermediate tensors included), scoring
models on it, and the activation statistics of the data-aware path mass.

A calibration (or evaluation) file is an ``.npz`` with arrays ``x`` (samples, one per row, each
reshaped to the model input without its batch axis) and optionally ``y`` (integer labels).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ..backend.verify import ModelRunner
from ..errors import UsageError
from ..frontend.edit import copy_model
from ..frontend.prepare import Prepared
from ..ops.registry import PASS_RANGES

BATCH = 256  # samples per onnxruntime run


def read_calibration(data: str | os.PathLike | Mapping[str, np.ndarray], shape: tuple[int, ...],
                     flag: str = "--calibration") -> tuple[np.ndarray, np.ndarray | None]:
    """The samples ``x`` (float32, reshaped to ``(N, *shape[1:])``; ``shape`` the model input's) and
    labels ``y`` (int64 or None) of a calibration/evaluation ``.npz``; :class:`UsageError` for a file
    that is not an ``.npz``, a missing ``x``, a wrong shape, non-finite values, fewer than 2 samples."""
    if isinstance(data, (str, os.PathLike)):
        try:
            data = np.load(data, allow_pickle=False)
        except ValueError as exc:
            raise UsageError(f"{flag} {os.fspath(data)!r}: not an .npz file with arrays x and y ({exc})") from None
    if not isinstance(data, Mapping) and not hasattr(data, "files"):
        raise UsageError(f"{flag}: expected an .npz file with arrays x (samples) and optionally y (labels)")
    if "x" not in data:
        raise UsageError(f"{flag}: no array 'x' (the samples); found {sorted(data)}")
    x, y = np.asarray(data["x"]), (np.asarray(data["y"]) if "y" in data else None)
    per = math.prod(shape[1:])
    if x.dtype.kind not in "fiub" or x.ndim < 1 or x.shape[0] < 2 or x.size != x.shape[0] * per:
        raise UsageError(f"{flag}: x must be numeric, one sample per row, at least 2 samples of "
                         f"{per} values (the input shape {list(shape)}); got {x.dtype} {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise UsageError(f"{flag}: x contains NaN or infinite values")
    if y is not None and (y.shape != (x.shape[0],) or y.dtype.kind not in "fiu" or not np.all(np.isfinite(y))
                          or np.any(y != np.round(y))):
        raise UsageError(f"{flag}: y must hold one integer label per sample of x ({x.shape[0]}); got {y.dtype} {list(y.shape)}")
    return x.reshape(x.shape[0], *shape[1:]).astype(np.float32), None if y is None else y.astype(np.int64)


def _batched(model: ModelProto, name: str) -> bool:
    """Whether the graph input ``name`` has a free batch dimension (else samples run one by one)."""
    vi = next(i for i in model.graph.input if i.name == name)
    dims = vi.type.tensor_type.shape.dim
    return not dims or not dims[0].HasField("dim_value") or dims[0].dim_value == 0


def batches(model: ModelProto, names: list[str], x: np.ndarray, input_name: str,
            elem_types: dict[str, int] | None = None) -> Iterator[list[np.ndarray]]:
    """The tensors ``names`` (intermediate ones included) of ``model`` on the samples ``x``, run by
    onnxruntime in batches (one by one for a fixed batch size): one float32 list per batch."""
    run = ModelRunner(model, names, elem_types or {})
    step = BATCH if _batched(model, input_name) else 1
    for start in range(0, len(x), step):
        yield [value.astype(np.float32) for value in run({input_name: x[start:start + step]})]


def collect(model: ModelProto, names: list[str], x: np.ndarray, input_name: str,
            elem_types: dict[str, int] | None = None) -> list[np.ndarray]:
    """:func:`batches` concatenated: each tensor with the samples on axis 0."""
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for values in batches(model, names, x, input_name, elem_types):
        for k, value in enumerate(values):
            parts[k].append(value)
    return [np.concatenate(p) for p in parts]


def evaluate(models: dict[str, ModelProto], x: np.ndarray, y: np.ndarray | None, input_name: str,
             outputs: list[str], elem_types: dict[str, int] | None = None) -> dict[str, dict[str, float]]:
    """Per model: top-1 (argmax of the first output per sample, with labels ``y``) and, against
    ``models["original"]``, the relative output error ``‖R' − R‖_F / ‖R‖_F`` over all outputs and
    samples and the mean ℓ1 change per sample ``mean_n ‖R'(x_n) − R(x_n)‖_1``."""
    runs = {k: collect(m, outputs, x, input_name, elem_types) for k, m in models.items()}
    ref = runs["original"]
    table: dict[str, dict[str, float]] = {}
    for k, outs in runs.items():
        row: dict[str, float] = {}
        if y is not None:
            row["top1"] = float(np.mean(np.argmax(outs[0].reshape(len(x), -1), axis=1) == y))
        if k != "original":
            diff = [(a.astype(np.float64) - b).reshape(len(x), -1) for a, b in zip(outs, ref)]
            row["output_rel_error"] = float(np.sqrt(sum(np.sum(d * d) for d in diff))
                                            / max(np.sqrt(sum(np.sum(np.square(r, dtype=np.float64)) for r in ref)), 1e-300))
            row["output_mean_l1"] = float(np.mean(sum(np.abs(d).sum(axis=1) for d in diff)))
        table[k] = row
    return table


def active_range(node: NodeProto, prepared: Prepared) -> tuple[float, float]:
    """Where ``node`` (an activation with a declared pass range: Relu, Clip) passes its input with
    slope 1: ``lo < z < hi``."""
    return PASS_RANGES[node.op_type](node, prepared.consts, prepared.opset)


def gated_model(model: ModelProto, prepared: Prepared, x: np.ndarray) -> ModelProto:
    """``model`` with a constant factor after each activation with a pass range (Relu, Clip): per neuron, the fraction of the
    samples ``x`` on which it passes its input (``lo < z < hi``), and one before the network: per
    input neuron, the mean ``|x|``."""
    acts = [n for n in model.graph.node if n.op_type in PASS_RANGES and n.input and n.input[0] not in prepared.consts]
    input_name = next(iter(prepared.inputs))
    counts = [0.0] * len(acts)
    for values in batches(model, [n.input[0] for n in acts], x, input_name, prepared.elem_types):
        for k, (node, z) in enumerate(zip(acts, values)):
            lo, hi = active_range(node, prepared)
            counts[k] = counts[k] + np.sum((z > lo) & (z < hi), axis=0, keepdims=True, dtype=np.float64)
    out = copy_model(model)
    gates = {n.output[0]: (c / len(x)).astype(np.float32) for n, c in zip(acts, counts)}
    magnitude = fresh_name(out, f"{input_name}__magnitude")
    nodes = [helper.make_node("Mul", [input_name, _constant(out, magnitude + "_factor",
                                                            np.mean(np.abs(x), axis=0, keepdims=True))], [magnitude])]
    for node in out.graph.node:
        node.input[:] = [magnitude if i == input_name else i for i in node.input]
        nodes.append(node)
        if node.output and node.output[0] in gates:
            tensor = node.output[0]
            node.output[0] = fresh_name(out, f"{tensor}__ungated")
            nodes.append(helper.make_node("Mul", [node.output[0], _constant(out, f"{tensor}__gate", gates[tensor])], [tensor]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _constant(model: ModelProto, base: str, value: np.ndarray) -> str:
    name = fresh_name(model, base)
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return name


def fresh_name(model: ModelProto, base: str) -> str:
    names = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}{k}"
    return name
