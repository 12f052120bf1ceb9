"""Pruning by path-magnitude (rescaling-invariant) or magnitude scores, written back into the ONNX file.

Only the scored weight tensors change (Conv / Gemm / MatMul weights, as in the paper; biases and BN
are kept); every other byte of the model is the source's. Since the pruned weights satisfy
``|θ'| ≤ |θ|`` with the same signs, the path-metric is exact and certifies the output change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, numpy_helper

from .errors import UsageError


@dataclass
class PruneReport:
    """Which weights were pruned and how many."""

    sparsity: float  # zeros / size over the pruned tensors, after pruning
    pruned: int  # weights set to zero by this call (already-zero ones not counted)
    total: int
    tensors: list[str]
    skipped: dict[str, str]  # scored tensors that are not initializers (e.g. behind DequantizeLinear)


def select(scores: dict[str, np.ndarray], pattern: str | None) -> dict[str, np.ndarray]:
    """The scored tensors whose name matches ``pattern`` (a regular expression; None: all)."""
    if pattern is None:
        return dict(scores)
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"bad --layers pattern {pattern!r}: {exc}") from None
    chosen = {k: v for k, v in scores.items() if rx.search(k)}
    if not chosen:
        raise UsageError(f"--layers {pattern!r} matches none of {sorted(scores)}")
    return chosen


def masks(scores: dict[str, np.ndarray], sparsity: float, scope: str = "global") -> dict[str, np.ndarray]:
    """Keep-masks removing the ``sparsity`` fraction of weights with the lowest scores.

    Deterministic: ties are broken by tensor (sorted by name) then flat index, so already-zero
    weights (score 0 under both criteria) go first in a fixed order.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise UsageError(f"sparsity must be in [0, 1] (got {sparsity})")
    names = sorted(scores)
    if not names:
        return {}
    groups = [names] if scope == "global" else [[n] for n in names]
    if scope not in ("global", "layer"):
        raise UsageError(f"scope must be global or layer (got {scope!r})")
    keep = {n: np.ones(scores[n].shape, bool) for n in names}
    for group in groups:
        flat = np.concatenate([np.asarray(scores[n], np.float64).ravel() for n in group])
        tensor = np.concatenate([np.full(scores[n].size, i) for i, n in enumerate(group)])
        index = np.concatenate([np.arange(scores[n].size) for n in group])
        order = np.lexsort((index, tensor, flat))[: int(round(sparsity * flat.size))]
        for i, n in enumerate(group):
            chosen = index[order[tensor[order] == i]]
            keep[n].ravel()[chosen] = False
    return keep


def apply(model: ModelProto, keep: dict[str, np.ndarray]) -> tuple[ModelProto, PruneReport]:
    """A copy of ``model`` with the masked weights set to zero (same dtype, name and layout)."""
    out = ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    pruned = total = zeros = 0
    done, skipped = [], {}
    for name, mask in keep.items():
        if name not in inits:
            skipped[name] = "not an initializer (computed, e.g. by DequantizeLinear): prune the float model"
            continue
        w = numpy_helper.to_array(inits[name])
        if w.shape != mask.shape:
            raise UsageError(f"mask for {name!r} has shape {mask.shape}, the tensor {w.shape}")
        pruned += int(np.count_nonzero(~mask & (w != 0)))
        w = np.where(mask, w, np.zeros((), w.dtype)).astype(w.dtype)
        total += w.size
        zeros += int(np.count_nonzero(w == 0))
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
        done.append(name)
    return out, PruneReport(zeros / total if total else 0.0, pruned, total, done, skipped)
