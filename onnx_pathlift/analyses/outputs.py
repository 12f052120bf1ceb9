"""Per-output path-norms: ``‖Φ_k‖_q`` for each output neuron ``k``, the path-norm of the paths that end at ``k``.

Every path ends at one output neuron, so ``‖Φ‖_q^q = Σ_k ‖Φ_k‖_q^q``, and ``‖Φ_k‖_q^q`` is output ``k`` of the
lifted network (weights ``|w|^q``) on an all-ones input: the lifted pass of ``norm``, read neuron by neuron
instead of summed. At q = ∞, ``‖Φ_k‖_∞`` is the largest path product ending at ``k``. A network that stacks N
samples on a fixed batch axis: the neurons of one sample (every sample has the same).

Each value comes with a certified interval. The lifted run's error budget (:mod:`onnx_pathlift.graph.budget`)
holds neuron by neuron: rounding is relative, and the mass a neuron can lose to underflow is at most its
output's whole underflow term ``E_o``. A neuron far below the largest of its output can therefore be left
uncertified by float32; the exact float64 fallback (:func:`onnx_pathlift.backend.exact.exact_logs`) then
pins every neuron of the model down, or, where it refuses, the uncertified neurons get their interval and no
value, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..backend.exact import FallbackRefused, exact_logs
from ..backend.norm import EXACT_WIDTH_LOG2, JobRun, LiftedSession, lifted_q
from ..errors import PathliftError
from ..fileio.load import ModelSource
from ..frontend.pipeline import load, model_name
from ..graph.numeric import json_float, log10_value
from ..ir.dag import Dag
from ..ops import require
from . import Command, check_q, fmt, provider

if TYPE_CHECKING:
    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared

_LOG10_2 = math.log10(2.0)
#: the text form lists this many neurons per output (the largest first); ``--json`` lists every one
SHOWN = 20


@dataclass(frozen=True)
class OutputNorms:
    """``log10 ‖Φ_k‖_q`` of every neuron ``k`` of one analysed ``output`` (one sample, flattened in C order,
    ``shape`` its shape) with its certified interval ``[lower_log10, upper_log10]``; ``certified[k]``: float32
    or the exact fallback pinned it down (an uncertified neuron has no value); ``fallback``: "float64" when
    the exact fallback ran; ``reason``: why some neurons have no value."""

    output: str
    q: float
    shape: tuple[int, ...]
    log10: np.ndarray
    lower_log10: np.ndarray
    upper_log10: np.ndarray
    certified: np.ndarray
    fallback: str | None = None
    reason: str | None = None

    def values(self) -> list[float | None]:
        """``‖Φ_k‖_q`` of each neuron (None: uncertified, or past float64)."""
        return [log10_value(float(v)) if ok else None for v, ok in zip(self.log10, self.certified)]

    def to_dict(self) -> dict:
        return {"output": self.output, "q": self.q if math.isfinite(self.q) else "inf", "shape": list(self.shape),
                "value": self.values(), "log10": [json_float(float(v)) for v in self.log10],
                "lower_log10": [json_float(float(v)) for v in self.lower_log10],
                "upper_log10": [json_float(float(v)) for v in self.upper_log10],
                "certified": [bool(c) for c in self.certified], "fallback": self.fallback, "reason": self.reason}


def _from_run(run: JobRun, name: str, q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One lifted run's ``(estimate, lower, upper, certified)`` on ``log2 ‖Φ_k‖_Q^Q`` of each neuron of output
    ``name`` (``Q``: the q it was lifted at): :meth:`Budget.interval <onnx_pathlift.graph.budget.Budget.interval>`
    per neuron, with the whole output's bound ``U_o`` and underflow term (valid for each of its neurons)."""
    t, k = run.outputs[name]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        computed = np.log2(t.astype(np.float64)) + np.asarray(k, dtype=np.float64) - run.copies_log2
    computed = np.where(np.isfinite(computed) | (computed == -np.inf), computed, np.nan).reshape(-1)
    rows = [run.budget.interval(float(c), [name]) for c in computed]
    lower, upper, ok = (np.array([row[i] for row in rows], dtype=bool if i == 2 else np.float64) for i in range(3))
    if lifted_q(q) != q:  # q = ∞: ‖Φ_k‖_∞ ≥ ‖Φ_k‖_Q / P**(1/Q) for its P ≤ 2**paths_log2 paths
        lower = lower - run.budget.paths_log2(run.sizes)
    return computed, lower, upper, ok


def _float32(runs: list[JobRun], name: str, q: float, shape: tuple[int, ...]) -> OutputNorms:
    """The neurons of output ``name`` from the float32 runs (static scales, then the renormalised graph):
    the intersection of their certified intervals, the last finite estimate moved into it."""
    found = [_from_run(run, name, q) for run in runs]
    lower = np.maximum.reduce([f[1] for f in found])
    upper = np.minimum.reduce([f[2] for f in found])
    certified = np.logical_or.reduce([f[3] for f in found])
    estimate = found[0][0]
    for f in found[1:]:
        estimate = np.where(np.isnan(f[0]), estimate, f[0])
    scale = _LOG10_2 / lifted_q(q)
    lower, upper = lower * scale, upper * scale
    log10 = np.clip(estimate * scale, lower, upper)  # NaN (no finite estimate) stays NaN
    return OutputNorms(name, q, shape, log10, lower, upper, certified)


def _pinned(dag: Dag, q: float, found: list[OutputNorms]) -> list[OutputNorms]:
    """``found`` with every neuron pinned down by the exact float64 fallback on ``dag`` (the intersection of
    both certified intervals, the fallback's value in it); where it refuses, the reason."""
    try:
        _, logs = exact_logs(dag, q, None, [n.output for n in found])
    except FallbackRefused as e:
        return [n if n.certified.all() else replace(n, reason=f"float32 did not certify every neuron, and {e}")
                for n in found]
    scale = _LOG10_2 if math.isinf(q) else _LOG10_2 / q
    out = []
    for n in found:
        v, err = logs[n.output]
        v = v.reshape(-1).astype(np.float64)
        zero = v == -np.inf  # no path reaches the neuron: exactly 0
        pad = err + (np.abs(np.where(zero, 0.0, v)) + 1.0) * 2.0**-50  # and the rounding of the lines below
        lower = np.maximum(np.where(zero, -np.inf, (v - pad) * scale), n.lower_log10)
        upper = np.minimum(np.where(zero, -np.inf, (v + pad) * scale), n.upper_log10)
        if np.any(lower > upper):
            raise PathliftError(f"output {n.output!r}: the exact fallback's interval misses float32's certified one "
                                "(please report it)")
        log10 = np.clip(np.where(zero, -np.inf, v * scale), lower, upper)
        out.append(replace(n, log10=log10, lower_log10=lower, upper_log10=upper, fallback="float64",
                           certified=n.certified | (2 * err <= 2.0**EXACT_WIDTH_LOG2)))
    return out


def neuron_norms(dag: Dag, q: float, providers=None) -> list[OutputNorms]:
    """``‖Φ_k‖_q`` of every neuron of every analysed output of ``dag`` (q ≥ 1, or ``inf``), one lifted pass."""
    require(dag, "norm")
    check_q([q])
    session = LiftedSession([(dag, q)], providers, quick_build=True)  # run once
    runs, twin = session.runs()[0], session.jobs[0][0]
    found = [_float32(runs, o, q, twin.layer(layer).shape) for o, layer in twin.outputs.items()]
    return found if all(n.certified.all() for n in found) else _pinned(twin, q, found)


@dataclass
class OutputsReport:
    """``onnx-pathlift outputs``: ``‖Φ_k‖_q`` of each output neuron ``k``, per q and analysed output."""

    model: str
    norms: list[OutputNorms]

    def to_dict(self) -> dict:
        return {"model": self.model, "outputs": [n.to_dict() for n in self.norms]}


def output_norms(source: ModelSource, q: list[float] | tuple[float, ...] = (1.0, 2.0), input_shape: InputShape = None,
                 outputs: list[str] | None = None, providers: str = "cpu") -> OutputsReport:
    """Per-output path-norms of ``source``: for each q (≥ 1, or ``inf``) and each neuron ``k`` of each analysed
    output, ``‖Φ_k‖_q`` over the paths that end at ``k`` (``Σ_k ‖Φ_k‖_q^q = ‖Φ‖_q^q``), each with its certified
    interval (:class:`OutputNorms`). Raises :class:`~onnx_pathlift.errors.UsageError` for a q below 1."""
    check_q(list(q))
    dag = load(source, input_shape, outputs, whole=False).dag
    return OutputsReport(model_name(source), [n for x in q for n in neuron_norms(dag, float(x), providers)])


def _print(r: OutputsReport, args) -> None:
    """Per output and q: the largest, the smallest, then the :data:`SHOWN` largest neurons (all with ``--json``)."""
    print(f"{r.model}: per-output path-norms ‖Φ_k‖_q (the paths that end at output neuron k; Σ_k ‖Φ_k‖_q^q = ‖Φ‖_q^q)")
    for n in r.norms:
        if not n.log10.size:
            print(f"  {n.output!r} {list(n.shape)}: no neurons")
            continue
        values = np.where(n.certified, n.log10, np.nan)
        order = [int(i) for i in np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")]
        def index(i: int, shape: tuple[int, ...] = n.shape) -> tuple[int, ...]:  # only the neurons printed
            return tuple(int(x) for x in np.unravel_index(i, shape))

        print(f"  {n.output!r} {list(n.shape)}, L{n.q:g}: largest {_cell(n, order[0])} at {index(order[0])}, "
              f"smallest {_cell(n, order[-1])} at {index(order[-1])}"
              + (f" (exact {n.fallback} fallback)" if n.fallback else ""))
        if not n.certified.all():
            print(f"    {int((~n.certified).sum())} neuron(s) without a value: {n.reason or 'not certified'}")
        if args.quiet:
            continue
        for i in order[:SHOWN]:
            print(f"    {str(index(i)):16s} {_cell(n, i)}")
        if n.log10.size > SHOWN:
            print(f"    ... {n.log10.size - SHOWN} more (--json lists every neuron)")


def _cell(n: OutputNorms, i: int) -> str:
    """One neuron's value, or its certified interval when it has none."""
    if n.certified[i]:
        return fmt(float(n.log10[i]))
    return f"in [{fmt(float(n.lower_log10[i]))}, {fmt(float(n.upper_log10[i]))}]"


def _options(parser) -> None:
    parser.add_argument("-q", type=float, action="append",
                        help="norm exponent q ≥ 1, or inf for the largest path product (repeatable; default 1 and 2)")
    provider(parser)


COMMAND = Command("outputs", _options,
                  lambda args, common: output_norms(args.model, args.q or [1.0, 2.0], providers=args.provider, **common),
                  _print, output_norms)
