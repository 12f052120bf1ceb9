"""Gauge alignment: B's parameters brought to A's neuron-wise rescaling gauge before compare's routes.

A rescalable channel group (:func:`onnx_pathlift.analyses.rescale.groups`: a conv/dense layer C, a chain of
per-channel layers, the next conv/dense layer D) may take a factor ``λ_o > 0`` per channel ``o`` on C's
weights into ``o`` and the chain's biases at ``o``, and ``1/λ_o`` on D's weights out of ``o``, without
changing the function or the path-lifting Φ. Groups are visited in topological order of C, so that
when C's factors are chosen, B's weights into C already sit in A's gauge (the groups upstream are
aligned), and each channel's factor is the log-domain median

    ``λ_o = exp(median{ ln|b_i| − ln|a_i| : i incoming to o, a_i·b_i ≠ 0 })``

(1 when no coordinate qualifies; a long row is read at a fixed stride, :data:`SAMPLE`), then B's
channel is divided by it (D's weights out of it multiplied).
The choice is equivariant: rescaling A (or B) by any gauge multiplies the chosen factors by it,
so the aligned pair of two rescaled models is the rescaled aligned pair of the originals, and the
route bounds (invariant under a common rescaling) are the same; a coordinate pruned to 0 in one model
gives no ratio, so a pruned model aligns exactly with a rescaled copy of its original; the median
ignores the large relative errors of small quantized weights.

Rounding (docs/metrics.md, "Gauge alignment"): each aligned coordinate is B's times at most two
float64 factors, each within ``(1 + 2⁻⁵³)²`` of an exact rescaling, and coordinates within
:data:`SNAP` (relative) of A's are then set to A's: every coordinate is within ``1 + δ`` of an exact
rescaling ``B*`` of B (``Φ(B*) = Φ(B)``), and a path carries at most ``L`` parameters (the most
parameterised layers on a path of the DAG), so ``‖Φ(B'') − Φ(B)‖_1 ≤ ((1 + δ)^L − 1)·‖Φ(B)‖_1``:
:attr:`Alignment.slack_log10` (a factor of ‖Φ(B)‖_1), added to every aligned route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS
from .rescale import Group, groups, scaled

#: coordinates of aligned B within this relative distance of A's are set to A's (a few float32 ulps: a
#: rescaled float32 copy rounds each coordinate twice), so that such pairs stay exact
SNAP = 2.0 ** -20
#: relative deviation from an exact rescaling of one aligned coordinate before snapping: two float64
#: factors, each a rounded product times a reciprocal rounded once
_ROUND = (1.0 + 2.0 ** -53) ** 4 - 1.0
#: a channel's factor is estimated from at most about this many of its incoming coordinates (a fixed
#: stride through them: the same coordinates in A and B, so the choice stays equivariant)
SAMPLE = 256
#: an alignment whose factors all lie within this of 1 (|ln λ|: 10%) is not worth its lifted passes (the
#: pair is in one gauge already: pruned, quantized, fine-tuned)
MIN_LOG = 0.1

Params = dict[str, dict[str, np.ndarray]]


@dataclass
class Alignment:
    """B's parameters in A's gauge (``params``, keyed by A's layer names) and what it took."""

    params: Params
    groups: int  # channel groups aligned
    neurons: int  # channels whose factor is not 1
    max_log10_factor: float  # the largest |log10 λ|
    snapped: int  # coordinates set to A's
    depth: int  # L: the most parameterised layers on one path
    slack_log10: float  # log10 of ((1 + δ)^L − 1), a factor of ‖Φ(B)‖_1 (-inf: nothing changed)

    @property
    def worth_it(self) -> bool:
        return self.max_log10_factor * math.log(10) > MIN_LOG

    def to_dict(self) -> dict:
        return {"groups": self.groups, "aligned_neurons": self.neurons, "max_abs_log10_factor": self.max_log10_factor,
                "snapped": self.snapped, "depth": self.depth}


def _channel_rows(g: Group, layer: Layer, v: np.ndarray) -> np.ndarray:
    """The values of one of the group's arrays as rows per channel (channels × values), every
    ``n // SAMPLE``-th value of a long row."""
    axis = g.axes.out if layer is g.c else g.bias_axis(layer, v)
    if not 0 <= axis < v.ndim:
        raise ValueError("a bias broadcast over the channels (one value for all)")
    rows = np.moveaxis(v, axis, 0)  # a view: only the sampled values are gathered
    if rows.ndim == 1:
        return rows[:, None]
    n = math.prod(rows.shape[1:])
    picked = np.unravel_index(np.arange(0, n, max(1, n // SAMPLE)), rows.shape[1:])
    return rows[(slice(None), *picked)]


def _factors(g: Group, a: Dag, params: Params) -> np.ndarray:
    """λ per channel of ``g``: the median log-ratio of B's incoming coordinates to A's (see module doc)."""
    parts = [(g.c, "W")] + [(layer, k) for layer in g.path for k in LAYER_OPS[layer.op].rescaled_params if k in layer.params]
    ra = np.concatenate([_channel_rows(g, layer, a.layer(layer.name).params[k]) for layer, k in parts], axis=1)
    rb = np.concatenate([_channel_rows(g, layer, params[layer.name][k]) for layer, k in parts], axis=1)
    ok = (ra != 0) & (rb != 0) & np.isfinite(ra) & np.isfinite(rb)
    logs = np.sort(np.where(ok, np.log(np.abs(np.where(ok, rb, 1.0))) - np.log(np.abs(np.where(ok, ra, 1.0))), np.inf), axis=1)
    n = ok.sum(axis=1)  # each row's n valid log-ratios come first, in order
    rows, lo, hi = np.arange(len(n)), np.maximum(n - 1, 0) // 2, np.minimum(n // 2, logs.shape[1] - 1)
    median = 0.5 * (logs[rows, lo] + logs[rows, hi])  # the middle one, or the mean of the middle two
    return np.exp(np.where(n > 0, median, 0.0))  # no valid ratio: leave the channel alone


def _apply(g: Group, params: Params, lam: np.ndarray) -> set[tuple[str, str]]:
    """Divide the group's channels of B by ``lam`` (D's weights out of them multiplied) and name the
    arrays changed; ValueError (nothing changed) when a bias constant does not hold one value per channel."""
    staged = {g.c.name: {"W": scaled(params[g.c.name]["W"], 1.0 / lam, g.axes.out)}}
    for layer in g.path:
        for k in (k for k in LAYER_OPS[layer.op].rescaled_params if k in layer.params):
            bias = params[layer.name][k]
            staged.setdefault(layer.name, {})[k] = scaled(bias, 1.0 / lam, g.bias_axis(layer, bias))
    into = LAYER_OPS[g.d.op].rescale_axes(g.d).into
    staged.setdefault(g.d.name, {})["W"] = scaled(params[g.d.name]["W"], np.repeat(lam, g.block), into)
    for name, new in staged.items():
        params[name] = {**params[name], **new}
    return {(name, k) for name, new in staged.items() for k in new}


def _snap(a: Dag, params: Params, touched: set[tuple[str, str]]) -> tuple[int, float]:
    """Set B's coordinates of the aligned arrays (``touched``: each coordinate enters Φ as a factor of
    its own) within :data:`SNAP` of A's to A's; the count and the largest relative move."""
    count, top = 0, 0.0
    for name, k in sorted(touched):
        ps, va = params[name], a.layer(name).params[k]
        vb = ps[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(va / vb - 1.0)
        near = (va * vb > 0) & (rel <= SNAP) & (va != vb)
        if near.any():
            count += int(near.sum())
            top = max(top, float(rel[near].max()))
            ps[k] = np.where(near, va, vb)
    return count, top


def param_depth(dag: Dag) -> int:
    """The most parameterised layers on one path of ``dag`` (a path carries one parameter from each)."""
    depth: dict[str, int] = {}
    for layer in dag.layers():
        depth[layer.name] = max((depth[i] for i in layer.inputs), default=0) + (1 if layer.params else 0)
    return max(depth.values(), default=0)


def _normal(params: Params, before: Params, touched: set[tuple[str, str]]) -> bool:
    """Whether every aligned coordinate that was nonzero is still a finite normal float64 (nothing
    underflowed or overflowed: the relative rounding bounds hold)."""
    tiny = np.finfo(np.float64).tiny
    return all(bool(np.all((before[n][k] == 0) | (np.isfinite(params[n][k]) & (np.abs(params[n][k]) >= tiny))))
               for n, k in touched)


def align(a: Dag, b: Dag, pairs: dict[str, str]) -> Alignment | None:
    """B's parameters (float64 DAGs, ``pairs``: A's layer → B's) in A's gauge; None when some aligned
    coordinate leaves float64's normal range (the rounding bound would not hold)."""
    params: Params = {layer.name: dict(b.layer(pairs[layer.name]).params) for layer in a.layers() if layer.params}
    before = {name: dict(ps) for name, ps in params.items()}
    done = neurons = 0
    top = 0.0
    touched: set[tuple[str, str]] = set()
    for g in groups(a):
        try:
            lam = _factors(g, a, params)
            if np.all(lam == 1.0):
                continue
            touched |= _apply(g, params, lam)
        except ValueError:
            continue  # a broadcast bias this rule does not handle: the group stays as it is
        done += 1
        neurons += int(np.count_nonzero(lam != 1.0))
        top = max(top, float(np.max(np.abs(np.log10(lam)))))
    if not _normal(params, before, touched):
        return None
    snapped, moved = _snap(a, params, touched)
    depth = param_depth(a)
    delta = (1.0 + _ROUND) * (1.0 + moved) - 1.0 if done else moved
    slack = -math.inf if delta == 0 else math.log10(math.expm1(depth * math.log1p(delta)) * (1 + 1e-9))
    return Alignment(params, done, neurons, top, snapped, depth, slack)
