"""Which channel groups go: scores made comparable across layers (normalised by their layer's mean), width
floors, channel counts rounded to multiples of ``round_to``, and cost targets (parameters, MACs, onnxruntime
latency) met greedily or per layer by bisection."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto

from ..backend.runtime import make_session
from ..errors import UsageError
from ..frontend.edit import copy_model, retie, untie
from ..frontend.names import layer_names
from ..frontend.prepare import Prepared, prepare
from ..ir.dag import Dag
from ..ops.registry import CHANNEL_RULES, costed_op_types
from ..sanitise import terminal
from .channels import ChannelGraph, Group
from .slim import (
    ChannelPrune,
    check_slim,
    float_parameters,
    layer_costs,
    masked_model,
    random_feeds,
    slim_model,
    statistics,
)

#: default floor on a layer's kept width, as a fraction of its width (``prune --min-keep``)
MIN_KEEP = 0.1
TARGETS = ("groups", "params", "macs", "latency")
#: a cost counter: ("c", constant, axis) (that axis's length) or ("t", tensor) (its channel count)
Key = tuple


@dataclass
class Costs:
    """A cost that removing channels lowers: ``cost = fixed + Σ_items w·Π_{k ∈ keys} kept[k]/full[k]``
    (parameters: a constant's size is the product of its axes; MACs: a weight's size times the
    positions it is applied at; latency: a node's measured time times the fraction of its work kept).
    ``total`` is the cost of the whole model."""

    total: float
    items: list[tuple[float, tuple[Key, ...]]]
    full: dict[Key, int]

    def touches(self, group: Group) -> Counter:
        """How much removing ``group`` lowers each counter."""
        out: Counter = Counter()
        for name, axis, lo, hi in group.sinks + group.sources + group.slices:
            out[("c", name, axis)] += hi - lo
        for tensor, _ in group.channels:
            out[("t", tensor)] += 1
        return out

    def removed(self, kept: dict[Key, int], keys: set | None = None) -> float:
        """``Σ w·(1 − Π kept/full)`` over the items reading one of ``keys`` (None: all)."""
        total = 0.0
        for w, item in self.items:
            if keys is None or keys.intersection(item):
                total += w * (1.0 - math.prod(kept.get(k, self.full[k]) / self.full[k] for k in item))
        return total


def normalise(cg: ChannelGraph, scores: np.ndarray) -> np.ndarray:
    """Each score divided by the mean score of its layer's scored groups (Torch-Pruning's ``mean``
    group normalisation): a layer's groups then average 1 whatever its width, so that a global ranking
    compares channels within their layer's distribution (raw path masses of a width-``n`` layer in a
    chain average about ‖Φ‖_1/n, which ranks the widest layer first). Order-preserving within a layer."""
    out = np.array(scores, dtype=np.float64)
    layers: dict[str, list[int]] = {}
    for i in np.flatnonzero(~np.isnan(out)):
        layers.setdefault(cg.groups[i].layer, []).append(int(i))
    for members in layers.values():
        mean = float(np.mean(out[members]))
        if mean > 0:
            out[members] /= mean
    return out


def _width(cg: ChannelGraph, layer: str, members: list[int]) -> tuple[list[int], int]:
    """Channels of the layer's tensor each member takes (its full width ``n``)."""
    return [sum(1 for t, _ in cg.groups[i].channels if t == layer) for i in members], cg.layouts[layer].n


def _units(cg: ChannelGraph, scores: np.ndarray, live: list[int], round_to: int, min_keep: float) -> list[tuple]:
    """Per layer, its groups by ascending score cut into removal units: removing units 1..k leaves a
    kept width that is a multiple of ``round_to`` and at least ``max(round_to, ⌈min_keep·n⌉, 1)``.
    A unit is ``(mean score, position in its layer, layer, groups)``."""
    layers: dict[str, list[int]] = {}
    for i in sorted(live, key=lambda i: (scores[i], i)):
        layers.setdefault(cg.groups[i].layer, []).append(i)
    units = []
    for layer, members in layers.items():
        takes, n = _width(cg, layer, members)
        floor = max(round_to, math.ceil(min_keep * n), 1)
        kept, start = n, 0
        for j, k in enumerate(takes):
            kept -= k
            if kept < floor:
                break
            if kept % round_to == 0:
                chunk = members[start:j + 1]
                units.append((float(np.mean(scores[chunk])), len(units), layer, chunk))
                start = j + 1
    return units


def _fits(cg: ChannelGraph, unit: list[int], width: dict[str, int]) -> bool:
    """Every tensor keeps a channel after removing ``unit``; if so, count the removal in ``width``."""
    takes = Counter(t for i in unit for t, _ in cg.groups[i].channels)
    if any(width[t] <= k for t, k in takes.items()):
        return False
    for t, k in takes.items():
        width[t] -= k
    return True


class _Tally:
    """The removed amount of the target so far: groups, or a :class:`Costs`' removed cost."""

    def __init__(self, cg: ChannelGraph, costs: Costs | None, live: list[int]):
        self.cg, self.costs, self.done = cg, costs, 0.0
        self.total = float(len(live)) if costs is None else costs.total
        self.kept: dict[Key, int] = {}

    def delta(self, unit: list[int]) -> tuple[float, dict]:
        if self.costs is None:
            return float(len(unit)), {}
        touches = Counter()
        for i in unit:
            touches.update(self.costs.touches(self.cg.groups[i]))
        new = {k: self.kept.get(k, self.costs.full[k]) - v for k, v in touches.items() if k in self.costs.full}
        keys = set(new)
        return self.costs.removed({**self.kept, **new}, keys) - self.costs.removed(self.kept, keys), new

    def add(self, amount: float, new: dict) -> None:
        self.done += amount
        self.kept.update(new)


def _greedy(cg: ChannelGraph, units: list[tuple], tally: _Tally, goal: float) -> list[int]:
    """Take units in order while the removed amount is below ``goal``, a unit of a layer only after
    the layer's earlier ones (a skipped unit blocks the rest of its layer)."""
    width = {t: layout.n for t, layout in cg.layouts.items()}
    blocked: set[str] = set()
    chosen: list[int] = []
    for _, _, layer, unit in units:
        if tally.done >= goal - 1e-9 * max(tally.total, 1.0):
            break
        amount, new = tally.delta(unit)
        if layer in blocked or not _fits(cg, unit, width):
            blocked.add(layer)
            continue
        chosen += unit
        tally.add(amount, new)
    return chosen


def _layer_fraction(cg: ChannelGraph, units: list[tuple], tally: _Tally, counts: dict[str, int],
                    f: float) -> tuple[list[int], float]:
    """Each layer's units in order while they bring its removed groups nearer ``f`` × its groups
    (half rounds up); the groups and the amount removed."""
    fresh = _Tally(cg, tally.costs, [])
    width = {t: layout.n for t, layout in cg.layouts.items()}
    done: Counter = Counter()
    stopped: set[str] = set()
    chosen: list[int] = []
    for _, _, layer, unit in units:
        want = f * counts[layer]
        if layer in stopped or abs(done[layer] + len(unit) - want) > abs(done[layer] - want) \
                or not _fits(cg, unit, width):
            stopped.add(layer)
            continue
        done[layer] += len(unit)
        chosen += unit
        fresh.add(*fresh.delta(unit))
    return chosen, fresh.done


def _per_layer(cg: ChannelGraph, units: list[tuple], tally: _Tally, goal: float, counts: dict[str, int],
               sparsity: float) -> list[int]:
    """The same fraction of each layer's groups (as near as its units allow): ``sparsity`` for the
    groups target, else found by bisection so that the removed cost reaches ``goal``."""
    if tally.costs is None:
        return _layer_fraction(cg, units, tally, counts, sparsity)[0]
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _layer_fraction(cg, units, tally, counts, mid)[1] < goal else (lo, mid)
    return _layer_fraction(cg, units, tally, counts, hi)[0]


def choose(cg: ChannelGraph, scores: np.ndarray, sparsity: float, scope: str = "global", round_to: int = 1,
           min_keep: float = MIN_KEEP, costs: Costs | None = None, normalised: bool = True) -> list[int]:
    """The groups to remove, by :func:`normalise`\ d score: ``global`` takes the lowest-scored groups
    of the whole model, ``layer`` the same fraction of each layer's groups, until the removed amount
    reaches ``sparsity`` × the total: of the removable groups, or of ``costs.total`` (parameters,
    MACs, latency). Every layer keeps a multiple of ``round_to`` channels (or all of them) and at
    least ``max(round_to, ⌈min_keep·width⌉, 1)``; a tensor keeps a channel. Ties broken by group
    index (deterministic). ``normalised=False`` ranks the raw scores (with the same floors)."""
    if not 0.0 <= sparsity <= 1.0:
        raise UsageError(f"sparsity must be in [0, 1] (got {sparsity})")
    if scope not in ("global", "layer"):
        raise UsageError(f"scope must be global or layer (got {scope!r})")
    if round_to < 1 or not 0.0 <= min_keep <= 1.0:
        raise UsageError(f"--round-to must be ≥ 1 and --min-keep in [0, 1] (got {round_to}, {min_keep})")
    norm = normalise(cg, scores) if normalised else np.asarray(scores, np.float64)
    live = [i for i in cg.removable() if not math.isnan(norm[i])]
    units = sorted(_units(cg, norm, live, round_to, min_keep), key=lambda u: (u[0], u[1]))
    tally = _Tally(cg, costs, live)
    goal = sparsity * tally.total if costs is not None else float(round(sparsity * len(live)))
    if scope == "global":
        return sorted(_greedy(cg, units, tally, goal))
    counts = Counter(cg.groups[i].layer for i in live)
    return sorted(_per_layer(cg, units, tally, goal, counts, sparsity))


def node_times(model: ModelProto, prepared: Prepared, repeats: int = 20) -> dict[str, float]:
    """Median onnxruntime kernel time (seconds) of each node, by its first output's name: one thread,
    graph optimisations off (each node runs as its own kernel); empty when onnxruntime cannot run
    the model."""
    import json
    import os
    import tempfile

    named = copy_model(model)
    for k, node in enumerate(named.graph.node):  # names onnxruntime reports back, one per node
        node.name = f"n{k}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            session = make_session(named, rewrites="none", threads=1, profile=os.path.join(tmp, "profile"))
        except Exception:  # onnxruntime's own errors have no common base class
            return {}
        feeds = random_feeds(prepared)
        for _ in range(repeats + 2):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            runs[e["name"][: -len("_kernel_time")]].append(float(e["dur"]) * 1e-6)
    outputs = {f"n{k}": node.output[0] for k, node in enumerate(named.graph.node) if node.output}
    return {outputs[name]: float(np.median(ts[2:] or ts)) for name, ts in runs.items() if name in outputs}


def _work(cg: ChannelGraph, prepared: Prepared, node, full: dict) -> tuple:
    """The counters a node's work is proportional to: its weight's axes (an op whose channel rule
    declares ``weight``: Conv, Gemm, ..., with a constant weight), else its output's channel count (a
    per-channel op), else none (fixed)."""
    rule = CHANNEL_RULES.get(node.op_type)
    if rule is not None and rule.weight and len(node.input) > 1 and node.input[1] in prepared.consts:
        shape = prepared.consts[node.input[1]].shape
        keys = tuple(("c", node.input[1], a) for a in range(len(shape)))
        full.update(zip(keys, shape))
        return keys
    out = node.output[0] if node.output else ""
    if out in cg.layouts:
        full[("t", out)] = cg.layouts[out].n
        return (("t", out),)
    return ()


def channel_costs(cg: ChannelGraph, prepared: Prepared, target: str, repeats: int = 20,
                  original: ModelProto | None = None) -> Costs | None:
    """The :class:`~onnx_pathlift.pruning.channels.Costs` of ``target``: ``params`` (every float constant a
    group cuts, its size; total: all float parameters), ``macs`` (each :func:`layer_costs` node's MACs, scaled
    by its weight's or output's kept fraction), ``latency`` (each node's
    onnxruntime kernel time from :func:`node_times`, scaled the same way; total: their sum); None
    for ``groups``. ``original``: the model whose parameters are the total (default: ``prepared``'s;
    :func:`prune_channels` passes the model before :func:`untie`'s copies)."""
    if target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)} (got {target!r})")
    full: dict = {}
    items: list = []
    if target == "params":
        names = {e[0] for g in cg.groups for e in g.sinks + g.sources + g.slices} - statistics(prepared.nodes)
        for name in sorted(n for n in names if prepared.consts[n].dtype.kind == "f"):
            shape = prepared.consts[name].shape
            keys = tuple(("c", name, a) for a in range(len(shape)))
            full.update(zip(keys, shape))
            items.append((float(prepared.consts[name].size), keys))
        return Costs(float(float_parameters(original or prepared.model)), items, full)
    if target == "macs":
        costed = set(costed_op_types())
        nodes = [n for n in prepared.nodes if n.op_type in costed]
        items = [(float(c.macs), _work(cg, prepared, n, full)) for n, c in zip(nodes, layer_costs(prepared))]
        return Costs(sum(w for w, _ in items), items, full)
    if target == "latency":
        times = node_times(prepared.model, prepared, repeats)
        if not times:
            raise UsageError("--target latency: onnxruntime cannot run this model")
        items = [(times.get(n.output[0], 0.0), _work(cg, prepared, n, full)) for n in prepared.nodes if n.output]
        return Costs(sum(times.values()), items, full)
    return None


@dataclass
class Selection:
    """How :func:`prune_channels` picks groups (``prune --structure channel``'s options)."""

    criterion: str = "path-mass"
    scope: str = "global"
    target: str = "groups"
    round_to: int = 1
    min_keep: float = MIN_KEEP
    layers: str | None = None  # regular expression: only groups with a matching tensor or writing weight
    seed: int = 0
    #: remove in this many equal steps, path mass recomputed on the masked model after each (a removed
    #: group then scores 0 and a layer's remaining groups score higher: :func:`channels.normalise`)
    steps: int = 1
    normalised: bool = True  # rank scores divided by their layer's mean (:func:`channels.normalise`)
    #: replaces ``criterion``'s scores: ``scorer(cg, model, prepared)`` on the model as masked so far (the
    #: data-aware path mass of :func:`onnx_pathlift.pruning.recover.data_aware_mass`)
    scorer: Callable[[ChannelGraph, ModelProto, Prepared], np.ndarray] | None = None


def _layer_tensors(prepared: Prepared, dag: Dag, pattern: str | None) -> tuple[dict[str, str], set[str] | None]:
    """Each parameterised layer's tensors (read by it alone, or written), tensor → layer name, and those of
    the layers ``pattern`` names (:meth:`~onnx_pathlift.frontend.names.LayerNames.select`; None: no restriction,
    and no tensors)."""
    if pattern is None:
        return {}, None
    names = layer_names(prepared, dag)
    tensors = {t: n.layer for t, n in names.by_tensor.items() if n.parameterised}
    chosen = {n.layer for n in names.select(pattern, names.parameterised())}
    return tensors, {t for t, layer in tensors.items() if layer in chosen}


def _restrict(cg: ChannelGraph, scores: np.ndarray, pattern: str | None,
              layers: tuple[dict[str, str], set[str] | None]) -> np.ndarray:
    """Scores set to NaN for the groups none of whose tensors and none of whose writing weights
    (sources: conv filters, dense rows, depthwise filters) belong to a layer ``pattern`` chose
    (``layers``: :func:`_layer_tensors`)."""
    tensors, allowed = layers
    if allowed is None:
        return scores
    out = scores.copy()
    for i, g in enumerate(cg.groups):
        if not allowed & ({t for t, _ in g.channels} | {e[0] for e in g.sources}):
            out[i] = np.nan
    if np.all(np.isnan(out)):
        writers = {tensors[t] for i in cg.removable() for t, _ in cg.groups[i].channels if t in tensors}
        raise UsageError(f"--layers {pattern!r} matches no removable channel group; layers with removable channels: "
                         + (", ".join(map(terminal, sorted(writers))) or "none"))
    return out


def prune_channels(model: ModelProto, prepared: Prepared, dag, sparsity: float, criterion: str = "path-mass",
                   scope: str = "global", seed: int = 0, providers=None, selection: Selection | None = None,
                   repeats: int = 20, outputs: list[str] | None = None) -> ChannelPrune:
    """Score the channel groups of ``model`` and remove the ``sparsity`` fraction of the removable ones
    (or of a cost: ``selection.target``) with the lowest normalised scores (:func:`choose`),
    and build the masked and the slim model (checked against each other on ``outputs``, default the
    DAG's). Shared initializers and those read through an Identity are copied for each reader
    (:func:`untie`) and merged back where they stay equal. ``dag`` may be None for a criterion that needs
    no DAG (``l1-norm``, ``random``, a ``selection.scorer``)."""
    from ..frontend.importer import import_prepared
    from .channels import channel_graph, group_scores

    sel = selection or Selection(criterion, scope, seed=seed)
    untied, origin = untie(model)
    p = prepare(untied, prepared.inputs) if origin else prepared
    cg = channel_graph(untied, p, layer_names(prepared, dag))  # the original's layer names name the pins
    costs = channel_costs(cg, p, sel.target, repeats, model)
    layers = _layer_tensors(prepared, dag, sel.layers)
    removed: list[int] = []
    for step in range(1, sel.steps + 1):
        current = untied if step == 1 else masked_model(untied, cg, removed)
        if sel.scorer is not None:
            scores = sel.scorer(cg, current, p)
        else:
            at = dag if sel.criterion != "path-mass" or (step == 1 and not origin) \
                else import_prepared(prepare(current, p.inputs), None)
            scores = group_scores(cg, p, sel.criterion, at, sel.seed, providers)
        removed = choose(cg, _restrict(cg, scores, sel.layers, layers), sparsity * step / sel.steps, sel.scope, sel.round_to,
                         sel.min_keep, costs, sel.normalised)
    masked = retie(masked_model(untied, cg, removed), origin)
    slim = retie(slim_model(untied, cg, removed), origin)
    names = list(dag.outputs) if outputs is None else outputs
    return ChannelPrune(cg, scores, removed, masked, slim, check_slim(masked, slim, prepared, names),
                        _achieved(cg, costs, removed, _restrict(cg, scores, sel.layers, layers)), untied, origin)


def _achieved(cg: ChannelGraph, costs: Costs | None, removed: list[int], scores: np.ndarray) -> float:
    """The fraction of the removable scored groups in ``removed``, or of ``costs.total`` it removes."""
    if costs is None:
        live = [i for i in cg.removable() if not np.isnan(scores[i])]
        return len(removed) / len(live) if live else 0.0
    kept = dict(costs.full)
    for i in removed:
        for key, k in costs.touches(cg.groups[i]).items():
            if key in kept:
                kept[key] -= k
    return costs.removed(kept) / costs.total if costs.total > 0 else 0.0
