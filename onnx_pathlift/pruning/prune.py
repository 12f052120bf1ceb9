"""Pruning by path-magnitude (rescaling-invariant) or magnitude scores, written back into the ONNX file.

Only the scored weight tensors change (Conv / Gemm / MatMul weights, as in the paper; biases and BN
are kept); every other byte of the model is the source's. Since the pruned weights satisfy
``|θ'| ≤ |θ|`` with the same signs, the path-metric is exact and certifies the output change.

:func:`prune_weights` and :func:`prune_channel_groups` are ``onnx-pathlift prune`` (``--structure
weight`` / ``channel``) as library calls: load, score, prune, write, certify, evaluate; the building
blocks are :func:`select`, :func:`masks` and :func:`apply` (weights) and
:func:`onnx_pathlift.pruning.ranking.prune_channels` (channel groups).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import ModelProto, numpy_helper

from ..errors import UsageError
from ..fileio.atomic import refuse_overwriting_input, save_model, save_npz
from ..frontend.pipeline import Loaded, load, model_name
from .ranking import MIN_KEEP, Selection

if TYPE_CHECKING:
    from ..analyses.metric import PathMetric
    from ..fileio.load import ModelSource
    from ..frontend.prepare import Prepared
    from ..ir.dag import Dag
    from .recover import Recovery
    from .slim import ChannelPrune


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


def top1_accuracy(model: ModelProto, dag: Dag, data: Mapping[str, np.ndarray]) -> float:
    """Top-1 accuracy of ``model`` (run as written) on ``data["x"]`` (one sample per row, reshaped to
    the DAG's first input) against the labels ``data["y"]``: argmax of the first analysed output."""
    from ..backend.verify import ModelRunner

    x, y = data["x"], data["y"]
    shape = dag.layer(dag.inputs[0]).shape
    run = ModelRunner(model, [next(iter(dag.outputs))], {})
    pred = [int(np.argmax(run({dag.inputs[0]: xi.reshape(shape).astype(np.float32)})[0])) for xi in x]
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


#: evaluation data: an ``.npz`` path or a mapping, with arrays ``x`` (samples) and ``y`` (labels)
Data = str | os.PathLike | Mapping[str, np.ndarray] | None


def _check_arguments(structure: str, criterion: str | None, sparsity: float, source, out, *extras) -> str:
    """The criterion (default: the structure's first), after the checks both structures share."""
    criteria = {"weight": ("path-magnitude", "magnitude"), "channel": ("path-mass", "l1-norm", "reconstruction")}[structure]
    criterion = criterion or criteria[0]
    if criterion not in criteria:
        raise UsageError(f"--structure {structure} takes --criterion {' or '.join(criteria)} (got {criterion})")
    if isinstance(source, (str, os.PathLike)):
        refuse_overwriting_input(out, source)
        for extra in extras:
            if extra:
                refuse_overwriting_input(extra, source, out)
    if not 0.0 <= sparsity <= 1.0:
        raise UsageError(f"--sparsity must be in [0, 1] (got {sparsity})")
    return criterion


def _data(data: Data) -> Mapping[str, np.ndarray] | None:
    return np.load(data) if isinstance(data, (str, os.PathLike)) else data


@dataclass
class WeightPruning:
    """``onnx-pathlift prune`` (``--structure weight``): the pruned model, its masks and certificate."""

    model: str
    written: str
    criterion: str
    scope: str
    report: PruneReport
    metric: PathMetric  # exact path-metric d(original, pruned)
    input_linf: float
    pruned: ModelProto
    keep: dict[str, np.ndarray]  # keep-masks by initializer name
    accuracy: tuple[float, float] | None = None  # top-1 before, after

    def to_dict(self) -> dict:
        r = self.report
        d = {"model": self.model, "written": self.written, "criterion": self.criterion, "scope": self.scope,
             "sparsity": r.sparsity, "pruned": r.pruned, "weights": r.total, "tensors": r.tensors,
             "skipped": r.skipped, "metric": self.metric.to_dict(self.input_linf)}
        if self.accuracy is not None:
            d["accuracy_before"], d["accuracy_after"] = self.accuracy
        return d


def prune_weights(source: ModelSource, sparsity: float, out: str | os.PathLike, criterion: str | None = None,
                  scope: str = "global", layers: str | None = None, mask_out: str | os.PathLike | None = None,
                  input_shape=None, outputs: list[str] | None = None, input_linf: float = 1.0,
                  eval_data: Data = None) -> WeightPruning:
    """Zero the ``sparsity`` fraction (in [0, 1]) of the lowest-scored Conv/Gemm/MatMul weights of
    ``source`` (``criterion``: ``path-magnitude``, the default, or ``magnitude``; ``scope``: ``global``
    over all tensors or the same fraction per ``layer``; ``layers``: a regular expression on the
    initializer names), write the model to ``out`` and the keep-masks to ``mask_out`` (``.npz``), and
    certify the output change by the exact path-metric: ``‖R(x) − R'(x)‖_1 ≤ max(input_linf, 1)·d``
    for ``‖x‖_∞ ≤ input_linf``. With ``eval_data`` (an ``.npz`` path or arrays ``x``, ``y``), top-1
    accuracy before and after. Raises :class:`UsageError` for a bad criterion, sparsity, scope or
    pattern and when an output names the input."""
    from ..analyses.metric import path_metric
    from ..analyses.scores import magnitude, path_magnitude
    from ..frontend.importer import import_model

    criterion = _check_arguments("weight", criterion, sparsity, source, out, mask_out)
    loaded = load(source, input_shape, outputs)
    dag = loaded.dag
    scores = path_magnitude(dag).fraction if criterion == "path-magnitude" else magnitude(dag)
    keep = masks(select(scores, layers), sparsity, scope)
    pruned, report = apply(loaded.model, keep)
    save_model(pruned, out)
    if mask_out:
        save_npz(mask_out, {k: v for k, v in keep.items() if k in report.tensors})
    metric = path_metric(dag, import_model(pruned, input_shape))
    result = WeightPruning(model_name(source), str(out), criterion, scope, report, metric, input_linf, pruned, keep)
    data = _data(eval_data)
    if data is not None:
        result.accuracy = top1_accuracy(loaded.model, dag, data), top1_accuracy(pruned, dag, data)
    return result


def _calibration(loaded: Loaded, data: Data) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The calibration samples and labels, checked (None without calibration data)."""
    if data is None:
        return None
    from .calibration import read_calibration

    return read_calibration(data, loaded.dag.layer(loaded.dag.inputs[0]).shape)


def _data_aware(criterion: str, calib: tuple[np.ndarray, np.ndarray | None] | None):
    """The selection scorer on the calibration samples (None: the criterion's own): the data-aware path
    mass for ``path-mass``, the reconstruction error (:mod:`onnx_pathlift.pruning.reconstruct`) for
    ``reconstruction``, which needs them."""
    if criterion == "reconstruction":
        if calib is None:
            raise UsageError("--criterion reconstruction needs --calibration DATA.npz")
        from .reconstruct import reconstruction_scores

        return lambda cg, model, prepared: reconstruction_scores(cg, model, prepared, calib[0])
    if calib is None or criterion != "path-mass":
        return None
    from .recover import data_aware_mass

    return lambda cg, model, prepared: data_aware_mass(cg, model, prepared, calib[0])


def _recover(loaded: Loaded, result: ChannelPrune, calib: tuple[np.ndarray, np.ndarray | None],
             eval_data: Data) -> Recovery:
    """Recover ``result``'s slim model in place (slim, masked, slim-vs-masked error) and return the
    :class:`~onnx_pathlift.pruning.recover.Recovery`."""
    from .calibration import read_calibration
    from .recover import recover
    from .slim import masked_model, retie, slim_model

    shape = loaded.dag.layer(loaded.dag.inputs[0]).shape
    evaluation = None if eval_data is None else read_calibration(eval_data, shape, "--eval")
    source, cg, removed = result.source or loaded.model, result.graph, result.removed  # the model cg describes
    slim, masked = result.slim, result.masked
    if result.origin:  # recovery works on the untied model, whose names cg holds
        slim, masked = slim_model(source, cg, removed), masked_model(source, cg, removed)
    recovery = recover(source, slim, masked, cg, removed, loaded.prepared, list(loaded.dag.outputs), calib, evaluation)
    result.slim, result.masked = retie(recovery.slim, result.origin), retie(recovery.masked, result.origin)
    result.slim_error = recovery.slim_error
    return recovery


@dataclass
class ChannelPruning:
    """``onnx-pathlift prune --structure channel``: the slim and masked models and ``record``, the
    command's JSON object (groups, parameters and MACs per layer, certificate, latency, accuracy)."""

    result: ChannelPrune
    record: dict[str, Any]

    def to_dict(self) -> dict:
        return self.record


def _costs(loaded: Loaded, result: ChannelPrune, input_shape) -> tuple[dict[str, Any], Prepared]:
    """Groups, parameters and MACs before and after (per Conv/Gemm/MatMul/BN node), the slim-vs-masked
    check; and the slim model prepared."""
    from ..frontend.prepare import prepare
    from .slim import float_parameters, layer_costs

    slim_prepared = prepare(result.slim, input_shape)
    after = {c.node: c for c in layer_costs(slim_prepared)}
    layers = [{"node": c.node, "op": c.op, "params_before": c.params, "params_after": after[c.node].params,
               "macs_before": c.macs, "macs_after": after[c.node].macs} for c in layer_costs(loaded.prepared)]
    g = result.graph
    return {"groups": {"total": len(g.groups), "removable": len(g.removable()), "removed": len(result.removed)},
            "channels_removed": sum(len(g.groups[i].channels) for i in result.removed), "pinned": result.pinned(),
            "params_before": float_parameters(loaded.model), "params_after": float_parameters(result.slim),
            "macs_before": sum(r["macs_before"] for r in layers), "macs_after": sum(r["macs_after"] for r in layers),
            "layers": layers, "slim_vs_masked_max_rel_error": result.slim_error}, slim_prepared


#: ``prune --structure channel`` warns when top-1 on ``--eval`` drops by more than this (10 points)
ACCURACY_WARNING = 0.10
#: default ``--round-to`` (chosen by measurement: docs/pruning.md)
ROUND_TO = 8


def _ranking(criterion: str, ranking: str | None, steps: int | None) -> tuple[str, int]:
    """The ranking and steps, by default ``raw`` in 8 steps for path-mass (recomputed after each step, a
    narrowed layer's channels gain mass: measured in docs/pruning.md), ``normalised`` in one for l1-norm
    (its scores do not change), ``raw`` in one for reconstruction (relative errors, comparable across layers)."""
    ranking = ranking or ("normalised" if criterion == "l1-norm" else "raw")
    steps = (8 if criterion == "path-mass" else 1) if steps is None else steps
    if ranking not in ("raw", "normalised") or steps < 1:
        raise UsageError(f"--ranking must be raw or normalised and --steps at least 1 (got {ranking}, {steps})")
    return ranking, steps


def _warnings(record: dict[str, Any]) -> list[str]:
    """A warning when the slim model's top-1 is more than :data:`ACCURACY_WARNING` below the original's,
    and when the width floors and ``--round-to`` left the target short by more than 5 points."""
    out = []
    if record["achieved"] < record["sparsity"] - 0.05:
        out.append(f"removed {record['achieved']:.1%} of the {record['target']}, not {record['sparsity']:.1%}: "
                   f"each layer keeps a multiple of --round-to {record['round_to']} channels and at least "
                   f"max(--round-to, ⌈{record['min_keep']:g}·width⌉)")
    drop = record.get("accuracy_before", 0.0) - record.get("accuracy_after", 0.0)
    if "accuracy_before" in record and drop > ACCURACY_WARNING:
        out.append(f"top-1 accuracy dropped by {drop * 100:.1f} points ({record['accuracy_before']:.4f} → "
                   f"{record['accuracy_after']:.4f}): prune less, per layer (--scope layer), "
                   + ("or fine-tune" if "recovery" in record else "recover with --calibration DATA.npz, or fine-tune"))
    return out


def prune_channel_groups(source: ModelSource, sparsity: float, out: str | os.PathLike, criterion: str | None = None,
                         scope: str = "global", masked_out: str | os.PathLike | None = None, input_shape=None,
                         outputs: list[str] | None = None, input_linf: float = 1.0, eval_data: Data = None,
                         repeats: int = 20, target: str = "groups", round_to: int | None = None,
                         min_keep: float | None = None, layers: str | None = None, ranking: str | None = None,
                         steps: int | None = None, calibration: Data = None) -> ChannelPruning:
    """Remove the ``sparsity`` fraction (in [0, 1]) of the removable channel groups of ``source`` with
    the lowest ``criterion`` (``path-mass``, the default and rescaling-invariant, or ``l1-norm``;
    ``scope``: ``global`` or per ``layer``; ``ranking``: ``raw`` scores or ``normalised`` by their layer's
    mean; ``steps``: removed in that many steps, scores recomputed after each), or the ``sparsity``
    fraction of the ``target`` cost (``params``, ``macs``, ``latency``); each layer keeps a multiple of
    ``round_to`` channels (default :data:`ROUND_TO`, 8) and at least ``max(round_to, ⌈min_keep·width⌉)`` (default
    :data:`~onnx_pathlift.pruning.channels.MIN_KEEP`); ``layers``: a regular expression, only the groups whose
    tensors or writing weights match are candidates. Write the smaller model to ``out`` (checked to compute the
    masked model) and the masked model to ``masked_out``; certify the change by the path-metric
    between the original and the masked model (``‖x‖_∞ ≤ input_linf``); measure onnxruntime latency
    (median of ``repeats`` runs, seconds) and, with ``eval_data``, top-1 accuracy (``warnings``: when it drops
    by more than :data:`ACCURACY_WARNING`, or the floors leave the target short). With ``calibration``
    (arrays ``x``, optional ``y``): ``path-mass`` becomes the data-aware path mass and the slim model is
    recovered by least squares (:mod:`onnx_pathlift.pruning.recover`); the model written, the masked model and the
    certificate are then the recovered ones. Raises
    :class:`UsageError` for a bad criterion, sparsity or ``repeats`` < 1 and when an output names
    the input; :class:`~onnx_pathlift.errors.VerificationError` when the slim model does not
    reproduce the masked one."""
    from ..analyses.metric import path_metric
    from ..frontend.importer import import_model
    from .ranking import prune_channels
    from .slim import latency

    criterion = _check_arguments("channel", criterion, sparsity, source, out, masked_out)
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {repeats})")
    loaded = load(source, input_shape, outputs)
    calib, recovery = _calibration(loaded, calibration), None
    round_to = ROUND_TO if round_to is None else round_to
    ranking, steps = _ranking(criterion, ranking, steps)
    selection = Selection(criterion, scope, target, round_to, MIN_KEEP if min_keep is None else min_keep, layers,
                          steps=steps, normalised=ranking == "normalised", scorer=_data_aware(criterion, calib))
    result = prune_channels(loaded.model, loaded.prepared, loaded.dag, sparsity, selection=selection, repeats=repeats)
    if calib is not None:
        recovery = _recover(loaded, result, calib, eval_data)
    costs, slim_prepared = _costs(loaded, result, input_shape)
    reference = loaded.dag if recovery is None else import_model(recovery.reference, input_shape)
    metric = path_metric(reference, import_model(result.masked, input_shape))  # sound: rounded outward
    record = {"model": model_name(source), "written": str(out), "masked": None if masked_out is None else str(masked_out),
              "structure": "channel", "criterion": criterion, "scope": scope, "sparsity": sparsity, "target": target,
              "round_to": round_to, "min_keep": selection.min_keep, "layers": layers, "ranking": ranking, "steps": steps,
              "achieved": result.achieved, **costs, "metric": metric.to_dict(input_linf), "latency_repeats": repeats,
              "latency_before_s": latency(loaded.model, loaded.prepared, repeats),
              "latency_after_s": latency(result.slim, slim_prepared, repeats)}
    _evaluate(record, loaded, result, recovery, selection, eval_data)
    save_model(result.slim, out)
    if masked_out:
        save_model(result.masked, masked_out)
    return ChannelPruning(result, record)


def _evaluate(record: dict[str, Any], loaded: Loaded, result: ChannelPrune, recovery: Recovery | None,
              selection: Selection, eval_data: Data) -> None:
    """The record's recovery report, top-1 before and after on ``eval_data``, and its warnings."""
    if recovery is not None:
        record["recovery"] = {"data_aware_scores": selection.scorer is not None, **recovery.to_dict()}
    data = _data(eval_data)
    if data is not None:
        record["accuracy_before"] = top1_accuracy(loaded.model, loaded.dag, data)
        record["accuracy_after"] = top1_accuracy(result.slim, loaded.dag, data)
    record["warnings"] = _warnings(record)
