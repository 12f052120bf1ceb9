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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import ModelProto, numpy_helper

from ..errors import UnsupportedModelError, UsageError
from ..fileio.atomic import refuse_overwriting_input, save_model, save_npz
from ..frontend.edit import ModelEditor, copy_model
from ..frontend.names import LayerNames, layer_names, parameters_by_node
from ..frontend.pipeline import Loaded, load, model_name
from .ranking import MIN_KEEP, Selection
from .readiness import no_dag

if TYPE_CHECKING:
    from ..analyses.metric import PathMetric
    from ..fileio.load import ModelSource
    from ..frontend.prepare import Prepared
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


def select(scores: dict[str, np.ndarray], pattern: str | None, names: LayerNames) -> dict[str, np.ndarray]:
    """The scored tensors of the layers ``pattern`` names (None: all): a layer name, another spelling of
    one or a regular expression (:meth:`~onnx_pathlift.frontend.names.LayerNames.select`)."""
    if pattern is None:
        return dict(scores)
    layers = {t: names.of_tensor(t) for t in scores}
    scored = {n.layer for n in layers.values() if n}
    chosen = {n.layer for n in names.select(pattern, [n for n in names.parameterised() if n.layer in scored])}
    return {t: v for t, v in scores.items() if layers[t] and layers[t].layer in chosen}


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
    out = copy_model(model)
    editor = ModelEditor(out)
    pruned = total = zeros = 0
    done, skipped = [], {}
    for name, mask in keep.items():
        if name not in editor.init:
            skipped[name] = "not an initializer (computed, e.g. by DequantizeLinear): prune the float model"
            continue
        w = editor.get(name)
        if w.shape != mask.shape:
            raise UsageError(f"mask for {name!r} has shape {mask.shape}, the tensor {w.shape}")
        pruned += int(np.count_nonzero(~mask & (w != 0)))
        w = np.where(mask, w, np.zeros((), w.dtype)).astype(w.dtype)
        total += w.size
        zeros += int(np.count_nonzero(w == 0))
        editor.set(name, w)
        done.append(name)
    return out, PruneReport(zeros / total if total else 0.0, pruned, total, done, skipped)


def model_outputs(model: ModelProto, loaded: Loaded, x: np.ndarray) -> np.ndarray:
    """The first analysed output of ``model`` (run as written) on each row of ``x`` (reshaped to
    ``loaded``'s first input), one row per sample, in float64."""
    from ..backend.verify import ModelRunner

    name, shape = loaded.first_input
    run = ModelRunner(model, loaded.outputs[:1], {})
    return np.stack([np.asarray(run({name: xi.reshape(shape).astype(np.float32)})[0], np.float64).ravel()
                     for xi in x])


def top1_accuracy(model: ModelProto, loaded: Loaded, data: Mapping[str, np.ndarray]) -> float:
    """Top-1 accuracy of ``model`` (run as written) on ``data["x"]`` (one sample per row, reshaped to
    ``loaded``'s first input) against the labels ``data["y"]``: argmax of its first analysed output."""
    pred = np.argmax(model_outputs(model, loaded, data["x"]), axis=1)
    return float(np.mean(pred == np.asarray(data["y"])))


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
    #: per pruned tensor: its layer, ONNX node and initializer (docs/design.md, "Layer names"), zeros and size
    layers: list[dict] = field(default_factory=list)
    accuracy: tuple[float, float] | None = None  # top-1 before, after
    #: on the evaluation samples: the largest ‖R(x) − R'(x)‖_1 seen, the samples, their largest ‖x‖_∞
    observed: dict | None = None

    def to_dict(self) -> dict:
        r = self.report
        d = {"model": self.model, "written": self.written, "criterion": self.criterion, "scope": self.scope,
             "sparsity": r.sparsity, "pruned": r.pruned, "weights": r.total, "tensors": r.tensors, "layers": self.layers,
             "skipped": r.skipped, "metric": self.metric.to_dict(self.input_linf)}
        if self.accuracy is not None:
            d["accuracy_before"], d["accuracy_after"] = self.accuracy
            d["observed_change"] = self.observed
        return d


def _pruned_layers(pruned: ModelProto, report: PruneReport, names: LayerNames) -> list[dict]:
    """Per pruned tensor: its layer's names, its zeros and size."""
    inits = {t.name: t for t in pruned.graph.initializer if t.name in report.tensors}
    rows = []
    for tensor in report.tensors:
        w, named = numpy_helper.to_array(inits[tensor]), names.of_tensor(tensor)
        rows.append({**(named.to_dict() if named else {"layer": tensor, "onnx_node": "", "initializer": tensor}),
                     "zeros": int(np.count_nonzero(w == 0)), "size": int(w.size)})
    return rows


def _evaluate_weights(result: WeightPruning, loaded: Loaded, data: Mapping[str, np.ndarray]) -> None:
    """Top-1 before and after on ``data``, and the change observed there: the largest ``‖R(x) − R'(x)‖_1``
    over its samples (the certificate holds for those with ``‖x‖_∞ ≤ input_linf``)."""
    x = np.asarray(data["x"])
    before, after = model_outputs(loaded.model, loaded, x), model_outputs(result.pruned, loaded, x)
    y = np.asarray(data["y"])
    result.accuracy = float(np.mean(np.argmax(before, 1) == y)), float(np.mean(np.argmax(after, 1) == y))
    result.observed = {"max_l1": float(np.abs(before - after).sum(axis=1).max()) if len(x) else 0.0,
                       "samples": len(x), "max_input_linf": float(np.abs(x).max()) if x.size else 0.0}


def prune_weights(source: ModelSource, sparsity: float, out: str | os.PathLike, criterion: str | None = None,
                  scope: str = "global", layers: str | None = None, mask_out: str | os.PathLike | None = None,
                  input_shape=None, outputs: list[str] | None = None, input_linf: float = 1.0,
                  eval_data: Data = None) -> WeightPruning:
    """Zero the ``sparsity`` fraction (in [0, 1]) of the lowest-scored Conv/Gemm/MatMul weights of
    ``source`` (``criterion``: ``path-magnitude``, the default, or ``magnitude``; ``scope``: ``global``
    over all tensors or the same fraction per ``layer``; ``layers``: a layer name, another spelling of one
    or a regular expression, :func:`select`), write the model to ``out`` and the keep-masks to ``mask_out``
    (``.npz``), and certify the output change by the exact path-metric: ``‖R(x) − R'(x)‖_1 ≤
    max(input_linf, 1)·d`` for ``‖x‖_∞ ≤ input_linf``. With ``eval_data`` (an ``.npz`` path or arrays
    ``x``, ``y``), top-1 accuracy before and after, and the largest ``‖R(x) − R'(x)‖_1`` over its samples
    (``observed``). Raises :class:`UsageError` for a bad criterion, sparsity, scope or
    pattern and when an output names the input."""
    from ..analyses.metric import path_metric
    from ..analyses.scores import magnitude, path_magnitude

    criterion = _check_arguments("weight", criterion, sparsity, source, out, mask_out)
    loaded = load(source, input_shape, outputs)
    dag = loaded.dag
    scores = path_magnitude(dag).fraction if criterion == "path-magnitude" else magnitude(dag)
    names = layer_names(loaded.prepared, dag)
    keep = masks(select(scores, layers, names), sparsity, scope)
    pruned, report = apply(loaded.model, keep)
    save_model(pruned, out)
    if mask_out:
        save_npz(mask_out, {k: v for k, v in keep.items() if k in report.tensors})
    metric = path_metric(dag, pruned, input_shape, names=(names, None))  # layers by name (docs/design.md)
    result = WeightPruning(model_name(source), str(out), criterion, scope, report, metric, input_linf, pruned, keep,
                           _pruned_layers(pruned, report, names))
    data = _data(eval_data)
    if data is not None:
        _evaluate_weights(result, loaded, data)
    return result


def _calibration(loaded: Loaded, data: Data) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The calibration samples and labels, checked (None without calibration data)."""
    if data is None:
        return None
    from .calibration import read_calibration

    return read_calibration(data, loaded.first_input[1])


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
    from ..frontend.edit import retie
    from .calibration import read_calibration
    from .recover import recover
    from .slim import masked_model, slim_model

    evaluation = None if eval_data is None else read_calibration(eval_data, loaded.first_input[1], "--eval")
    source, cg, removed = result.source or loaded.model, result.graph, result.removed  # the model cg describes
    slim, masked = result.slim, result.masked
    if result.origin:  # recovery works on the untied model, whose names cg holds
        slim, masked = slim_model(source, cg, removed), masked_model(source, cg, removed)
    recovery = recover(source, slim, masked, cg, removed, loaded.prepared, loaded.outputs, calib, evaluation)
    result.slim, result.masked = retie(recovery.slim, result.origin), retie(recovery.masked, result.origin)
    result.slim_error = recovery.slim_error
    return recovery


class PathMassRefused(UnsupportedModelError):
    """``prune --structure channel --criterion path-mass`` on a model the importer refuses (exit 3):
    path mass is defined on DAG-ReLU networks only; ``l1-norm`` prunes the model."""

    def __init__(self, refusal: UnsupportedModelError):
        super().__init__(refusal.refusals)
        self.args = (f"--criterion path-mass needs a DAG-ReLU network, and {refusal}\n"
                     "  prune its channels by --criterion l1-norm (or leave --criterion out: chosen automatically)",)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "criterion": "l1-norm"}


def _criterion(loaded: Loaded, asked: str | None, criterion: str, calibrated: bool) -> tuple[str, str | None]:
    """The criterion to rank by and, for a model the importer refused, why it is not path-mass: ``l1-norm``
    (which needs no DAG) when none was asked for, ``reconstruction`` when asked (it runs the model);
    :class:`PathMassRefused` when ``path-mass`` was."""
    if loaded.dag is None:
        if asked == "path-mass":
            raise PathMassRefused(loaded.refusal)
        if asked == "reconstruction":  # ThiNet's criterion runs the model itself: it needs no DAG
            return asked, None
        why = no_dag(loaded.refusal)[0]
        if calibrated:
            why += "; so does --calibration's data-aware path mass (the slim model is still recovered by least squares)"
        return "l1-norm", why
    return criterion, None


def _certificate(loaded: Loaded, result: ChannelPrune, recovery: Recovery | None, input_shape,
                 input_linf: float) -> dict[str, Any]:
    """The record's ``metric``: the path-metric between the original (with ``recovery``: its reference)
    and the masked model, sound (rounded outward); without a DAG, None and ``metric_reason``."""
    from ..analyses.metric import path_metric

    if loaded.dag is None:
        return {"metric": None, "metric_reason": no_dag(loaded.refusal)[1]}
    reference = loaded.dag if recovery is None else recovery.reference  # a model: named by its own layer names
    metric = path_metric(reference, result.masked, input_shape, names=(layer_names(loaded.prepared, loaded.dag), None))
    return {"metric": metric.to_dict(input_linf)}


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
    from ..frontend.importer import import_prepared
    from ..frontend.prepare import prepare
    from .slim import float_parameters, layer_costs

    slim_prepared = prepare(result.slim, input_shape)
    before, after = layer_costs(loaded.prepared), {c.node: c for c in layer_costs(slim_prepared)}
    if loaded.dag is not None:  # norm's count (docs/pruning.md, "Parameters")
        slim_dag = import_prepared(slim_prepared, list(loaded.dag.outputs))
        params = parameters_by_node(loaded.dag), parameters_by_node(slim_dag)
        totals = loaded.dag.n_params, slim_dag.n_params
    else:  # no DAG: the float constants each node reads, running statistics left out
        params = {c.node: c.params for c in before}, {c: cost.params for c, cost in after.items()}
        totals = float_parameters(loaded.model), float_parameters(result.slim)
    names = layer_names(loaded.prepared, loaded.dag)
    layers = [{**names.record(c.node), "node": c.node, "op": c.op, "params_before": params[0][c.node],
               "params_after": params[1][c.node], "macs_before": c.macs, "macs_after": after[c.node].macs}
              for c in before]
    g = result.graph
    return {"groups": {"total": len(g.groups), "removable": len(g.removable()), "removed": len(result.removed)},
            "channels_removed": sum(len(g.groups[i].channels) for i in result.removed), "pinned": result.pinned(),
            "params_before": totals[0], "params_after": totals[1],
            "macs_before": sum(r["macs_before"] for r in layers), "macs_after": sum(r["macs_after"] for r in layers),
            "layers": layers, "slim_vs_masked_max_rel_error": result.slim_error}, slim_prepared


#: the channel criterion when ``--calibration`` is given and ``--criterion`` is not: ahead of the data-aware path mass
#: before any fine-tuning on the three digits nets (docs/pruning.md, "Which criterion with --calibration")
CALIBRATED_DEFAULT = "reconstruction"
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
    :data:`~onnx_pathlift.pruning.channels.MIN_KEEP`); ``layers``: a layer name, another spelling of one or a
    regular expression (:meth:`~onnx_pathlift.frontend.names.LayerNames.select`), only the groups whose
    tensors or writing weights belong to the layers it names are candidates. Write the smaller model to ``out`` (checked to compute the
    masked model) and the masked model to ``masked_out``; certify the change by the path-metric
    between the original and the masked model (``‖x‖_∞ ≤ input_linf``); measure onnxruntime latency
    (median of ``repeats`` runs, seconds) and, with ``eval_data``, top-1 accuracy (``warnings``: when it drops
    by more than :data:`ACCURACY_WARNING`, or the floors leave the target short). With ``calibration``
    (arrays ``x``, optional ``y``): the default criterion is :data:`CALIBRATED_DEFAULT` (``reconstruction``),
    ``path-mass`` becomes the data-aware path mass, and the slim model is recovered by least squares
    (:mod:`onnx_pathlift.pruning.recover`); the model written, the masked model and the certificate are then
    the recovered ones. A model the importer refuses (not a DAG-ReLU network: SiLU, GELU, GroupNorm, ...) is
    pruned from its prepared graph alone: by ``l1-norm`` (the record's ``criterion_reason`` says why; with
    ``calibration``, by ``reconstruction`` and recovered all the same), without a certificate
    (``metric`` None, ``metric_reason``). Raises
    :class:`UsageError` for a bad criterion, sparsity or ``repeats`` < 1 and when an output names
    the input; :class:`PathMassRefused` (exit 3) for ``path-mass`` on a model the importer refuses;
    :class:`~onnx_pathlift.errors.VerificationError` when the slim model does not
    reproduce the masked one."""
    from .ranking import prune_channels
    from .slim import latency

    asked = criterion or (CALIBRATED_DEFAULT if calibration is not None else None)
    criterion = _check_arguments("channel", asked, sparsity, source, out, masked_out)
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {repeats})")
    loaded = load(source, input_shape, outputs, need_dag=False)
    criterion, why = _criterion(loaded, asked, criterion, calibration is not None)
    calib, recovery = _calibration(loaded, calibration), None
    round_to = ROUND_TO if round_to is None else round_to
    ranking, steps = _ranking(criterion, ranking, steps)
    selection = Selection(criterion, scope, target, round_to, MIN_KEEP if min_keep is None else min_keep, layers,
                          steps=steps, normalised=ranking == "normalised", scorer=_data_aware(criterion, calib))
    result = prune_channels(loaded.model, loaded.prepared, loaded.dag, sparsity, selection=selection, repeats=repeats, outputs=loaded.outputs)
    if calib is not None:
        recovery = _recover(loaded, result, calib, eval_data)
    costs, slim_prepared = _costs(loaded, result, input_shape)
    record = {"model": model_name(source), "written": str(out), "masked": None if masked_out is None else str(masked_out),
              "structure": "channel", "criterion": criterion, **({} if why is None else {"criterion_reason": why}),
              "scope": scope, "sparsity": sparsity, "target": target, "round_to": round_to, "min_keep": selection.min_keep,
              "layers": layers, "ranking": ranking, "steps": steps, "achieved": result.achieved, **costs,
              **_certificate(loaded, result, recovery, input_shape, input_linf), "latency_repeats": repeats,
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
        names = layer_names(loaded.prepared, loaded.dag)
        record["recovery"]["layers"] = [{**names.record(f["node"]), **f} for f in record["recovery"]["layers"]]
    data = _data(eval_data)
    if data is not None:
        record["accuracy_before"] = top1_accuracy(loaded.model, loaded, data)
        record["accuracy_after"] = top1_accuracy(result.slim, loaded, data)
    record["warnings"] = _warnings(record)
