"""Reconstruction-aware channel selection (ThiNet, Luo et al. 2017): remove the channels whose loss the
next layers' outputs notice least, measured on calibration activations.

A group ``g``'s channels reach the rest of the network only through its *sinks*, the input columns of
the weight layers that read it (Conv / Gemm / MatMul, :mod:`onnx_pathlift.pruning.channels`); removing
``g`` zeroes those columns. For a consumer ``ℓ`` with input ``X`` (collected with onnxruntime), the
part of its output that the columns of ``g`` carry is ``Z_g = X_g W_g`` (im2col patches of ``g``'s input
channels times their weight slices for a conv). Removing a set ``T`` of groups changes the consumers'
outputs by ``−Σ_{g∈T} Z_g``, whose squared norm, summed over the consumers and the sampled rows, is the
quadratic form

    E(T) = ‖Σ_{g∈T} Z_g‖²_F = 1_Tᵀ G 1_T,    G_gh = Σ_ℓ ⟨Z_g, Z_h⟩    (the Gram matrix of the contributions).

Groups may cancel each other (``G_gh < 0``), which a per-group score cannot see. Per layer (groups with
the same :attr:`Group.layer`, whose cross terms are kept; terms between layers are dropped), the removal
order is ThiNet's greedy one: repeatedly add the group that increases ``E`` least (exhaustive search would
be exact, the greedy is not in general: :func:`best_subset` is the exact search for small layers). The
score of the ``k``-th group of that order is ``max_{j≤k} E(T_j) / ‖Y‖²`` (``Y``: the consumers' outputs on
the same rows): non-decreasing along the order, so removing the lowest-scored groups of a layer removes a
prefix of it, and a relative error, comparable across layers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
from onnx import ModelProto, NodeProto

from ..frontend.prepare import Prepared
from ..ops.context import attributes
from ..ops.registry import CHANNEL_RULES
from .calibration import collect
from .channels import ChannelGraph
from .refit import conv_rows

ROWS = 4096  # sampled output rows per consumer
SAMPLES = 512  # calibration samples the consumers' inputs are collected on (the first ones)
TENSOR_BYTES = 1 << 26  # the most one collected float32 input may take: fewer samples for large layers
BATCH_BYTES = 1 << 28  # the most the inputs collected in one onnxruntime run may take together
WORK = 2e10  # rows × groups² × outputs of one consumer's Gram (fewer rows for wide layers)
CHUNK = 1 << 22  # rows × groups × outputs of one chunk of contributions


def _consumers(model: ModelProto) -> dict[str, NodeProto]:
    """Weight name -> the node that reads it as input 1, for the op types whose channel rule declares a
    least-squares refit (``kernel``: a conv, ``dense``: Gemm / MatMul)."""
    return {n.input[1]: n for n in model.graph.node
            if len(n.input) > 1 and getattr(CHANNEL_RULES.get(n.op_type), "refit", None)}


def _samples(prepared: Prepared, tensor: str, x: np.ndarray) -> np.ndarray:
    """The first calibration samples, at most :data:`SAMPLES` and as many as keep ``tensor`` within
    :data:`TENSOR_BYTES`."""
    per = math.prod(prepared.shapes.get(tensor, (1,))[1:])
    return x[: max(4, min(len(x), SAMPLES, TENSOR_BYTES // (4 * max(per, 1))))]


def _rows(node: NodeProto, w: np.ndarray, x: np.ndarray, out_shape: tuple[int, ...], a: dict, cap: int,
          seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The consumer's input rows and its weight as ``(rows, C, k)`` and ``(C, k, outputs)``: ``k`` the
    kernel positions of a plain 2-D conv (im2col), 1 for a dense layer. None for anything else."""
    if CHANNEL_RULES[node.op_type].refit == "kernel":
        if w.ndim != 4 or int(a.get("group", 1)) != 1:
            return None
        y = np.broadcast_to(np.float32(0), (len(x), *out_shape[1:]))
        rows = np.concatenate([r for r, _, _ in conv_rows(x, y, a, w.shape[2:], cap, seed)])[:, :-1]
        return rows.reshape(len(rows), w.shape[1], -1), w.reshape(w.shape[0], w.shape[1], -1).transpose(1, 2, 0)
    if a.get("transA", 0):
        return None
    b = w.T if a.get("transB", 0) else w  # (inputs, outputs); MatMul has neither attribute
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) > cap:
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), cap, replace=False))]
    return rows[:, :, None], b[:, None, :]


def gram(node: NodeProto, w: np.ndarray, x: np.ndarray, out_shape: tuple[int, ...], slices: list[tuple[int, int]],
         opset: int, seed: int = 0) -> tuple[np.ndarray | None, float]:
    """``G`` with ``G_st = ⟨Z_s, Z_t⟩`` over the sampled rows, ``Z_s`` what the ``[lo, hi)`` slice ``s`` of
    ``w``'s input channels contributes to ``node``'s output (``out_shape``, samples first) on the input
    ``x``; and ``‖Y‖²`` of the output on those rows, bias left out (float64). ``(None, 0)`` for what is not
    a plain 2-D conv or a dense layer. Rows: at most :data:`ROWS`, fewer for wide layers."""
    a = attributes(node, opset)
    n, outputs = len(slices), int(w.shape[0] if w.ndim == 4 else w.size // x.shape[-1])
    cap = max(256, min(ROWS, int(WORK // max(n * n * outputs, 1))))
    got = _rows(node, w, x, out_shape, a, cap, seed)
    if got is None:
        return None, 0.0
    rows, wk = got
    g, yy = np.zeros((n, n)), 0.0
    step = max(1, CHUNK // max(n * outputs, 1))
    for start in range(0, len(rows), step):
        r = rows[start:start + step]
        per = np.einsum("rck,cko->rco", r, wk, optimize=True)  # each input channel's contribution
        z = np.stack([per[:, lo:hi].sum(axis=1) for lo, hi in slices], axis=1).astype(np.float64)
        g += np.einsum("rso,rto->st", z, z, optimize=True)
        yy += float(np.square(per.sum(axis=1), dtype=np.float64).sum())
    return g, yy


def greedy_order(g: np.ndarray) -> tuple[list[int], np.ndarray]:
    """ThiNet's greedy order on the Gram matrix ``g``: each step adds the index ``c`` that increases
    ``E(T) = 1_Tᵀ g 1_T`` least (``E(T ∪ c) = E(T) + 2·Σ_{t∈T} g_tc + g_cc``; ties to the lower index);
    the order and ``E`` after each step."""
    n = len(g)
    left, order, cross, e = np.ones(n, bool), [], np.zeros(n), np.zeros(n)
    total = 0.0
    for k in range(n):
        gain = np.where(left, 2.0 * cross + np.diag(g), np.inf)
        c = int(np.argmin(gain))
        total += float(gain[c])
        order.append(c)
        e[k] = total
        left[c] = False
        cross += g[:, c]
    return order, e


def best_subset(g: np.ndarray, k: int) -> tuple[tuple[int, ...], float]:
    """The ``k``-subset ``T`` with the least ``1_Tᵀ g 1_T``, by exhaustive search (small ``g`` only)."""
    best = min(itertools.combinations(range(len(g)), k), key=lambda t: float(g[np.ix_(t, t)].sum()))
    return best, float(g[np.ix_(best, best)].sum())


def _layer_grams(cg: ChannelGraph, model: ModelProto, prepared: Prepared, x: np.ndarray,
                 live: list[int]) -> dict[str, tuple[list[int], np.ndarray, float]]:
    """Per layer: its live groups, their Gram matrix summed over the consumers they sink into, ``Σ ‖Y‖²``
    of those consumers. A group with a sink the Gram cannot handle (a grouped conv, ...) is left out."""
    readers, layers = _consumers(model), {}
    for i in live:
        layers.setdefault(cg.groups[i].layer, []).append(i)
    sinks: dict[str, list[tuple[str, int, int, int]]] = {}  # consumer weight -> (layer, member, lo, hi)
    for layer, members in layers.items():
        for k, i in enumerate(members):
            for name, _, lo, hi in cg.groups[i].sinks:
                sinks.setdefault(name, []).append((layer, k, lo, hi))
    grams = {layer: np.zeros((len(members),) * 2) for layer, members in layers.items()}
    energy, bad = dict.fromkeys(layers, 0.0), {layer: set() for layer in layers}
    usable = [n for n in sinks if n in readers and n in prepared.consts]
    for name in set(sinks) - set(usable):
        for layer, k, _, _ in sinks[name]:
            bad[layer].add(k)
    for name, value in _consumer_inputs([readers[n] for n in usable], model, prepared, x):
        node = readers[name]
        for layer in dict.fromkeys(layer for layer, _, _, _ in sinks[name]):
            slices = [(k, lo, hi) for ly, k, lo, hi in sinks[name] if ly == layer]
            part, e = gram(node, prepared.consts[name], value, prepared.shapes[node.output[0]],
                           [(lo, hi) for _, lo, hi in slices], prepared.opset)
            idx = [k for k, _, _ in slices]
            if part is None:
                bad[layer].update(idx)
                continue
            np.add.at(grams[layer], np.ix_(idx, idx), part)
            energy[layer] += e
    out: dict[str, tuple[list[int], np.ndarray, float]] = {}
    for layer, members in layers.items():
        keep = [k for k in range(len(members)) if k not in bad[layer]]
        if keep:
            out[layer] = ([members[k] for k in keep], grams[layer][np.ix_(keep, keep)], energy[layer])
    return out


def _consumer_inputs(nodes: list[NodeProto], model: ModelProto, prepared: Prepared,
                     x: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Each consumer's weight name and its input collected from ``model`` on :func:`_samples` of ``x``, in as
    few onnxruntime runs as keep the tensors of one run within :data:`BATCH_BYTES` (consumers collected on the
    same number of samples share a run; a consumer reading the same tensor as another reuses its value)."""
    input_name = next(iter(prepared.inputs))
    plan: dict[int, list[NodeProto]] = {}
    for node in nodes:
        plan.setdefault(len(_samples(prepared, node.input[0], x)), []).append(node)
    for n, group in plan.items():
        runs: list[list[NodeProto]] = [[]]
        size = 0
        for node in group:
            bytes_ = 4 * n * math.prod(prepared.shapes.get(node.input[0], (1,))[1:])
            if runs[-1] and size + bytes_ > BATCH_BYTES:
                runs.append([])
                size = 0
            runs[-1].append(node)
            size += bytes_
        for run in runs:
            tensors = list(dict.fromkeys(node.input[0] for node in run))
            values = dict(zip(tensors, collect(model, tensors, x[:n], input_name, prepared.elem_types), strict=True))
            for node in run:
                yield node.input[1], values[node.input[0]]


def reconstruction_scores(cg: ChannelGraph, model: ModelProto, prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """Per group (NaN for pinned ones and those :func:`_layer_grams` leaves out): the running maximum of
    ``E(T_k) / ‖Y‖²`` along its layer's :func:`greedy_order`, at the group's place ``k`` in that order,
    plus ``k·1e-12`` (a strict order). ``model`` is the model as masked so far (its removed groups then
    contribute nothing and come first)."""
    out = np.full(len(cg.groups), np.nan)
    for members, g, yy in _layer_grams(cg, model, prepared, x, cg.removable()).values():
        order, e = greedy_order(g)
        running = np.maximum.accumulate(np.maximum(e, 0.0)) / (yy if yy > 0 else 1.0)
        for k, c in enumerate(order):
            out[members[c]] = running[k] + k * 1e-12
    return out
