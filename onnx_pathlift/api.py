"""The library function behind each ``onnx-pathlift`` command.

Each function loads the model(s), runs the analysis, writes its output files (atomically, see
:mod:`onnx_pathlift.fileio.atomic`) and returns a report; a report's ``to_dict()`` is the command's ``--json``
object, and the command line prints its text form from the same report. ``prune`` is
:func:`onnx_pathlift.pruning.prune.prune_weights` / :func:`~onnx_pathlift.pruning.prune.prune_channel_groups`,
``inspect`` :func:`onnx_pathlift.analyses.inspection.inspect_model` and ``audit``
:func:`onnx_pathlift.audit.run_command` (docs/api.md lists them all).

Every function raises :class:`~onnx_pathlift.errors.InvalidModelError` (exit code 4) for an
unreadable or invalid model, :class:`~onnx_pathlift.errors.UnsupportedModelError` (3) for operators
outside the supported set, :class:`~onnx_pathlift.errors.UsageError` (2) for bad arguments and
:class:`~onnx_pathlift.errors.OutputError` (6) for an output that cannot be written.

The analyses are imported when called (the audit's parent process needs none of them)."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CertificateViolation, UsageError, VerificationError
from .fileio.atomic import refuse_overwriting_input

if TYPE_CHECKING:  # (the audit package is not imported at run time: norm's start-up does without it)
    from onnx import ModelProto

    from .analyses.check import CheckReport
    from .analyses.lipschitz import LipschitzBound
    from .analyses.metric import PathMetric
    from .analyses.quant_bound import Certificate
    from .analyses.scores import Scores
    from .audit.record import InputShape  # one static shape, or one per input name; None: as declared
    from .backend.norm import PathNorm
    from .backend.verify import VerifyReport
    from .fileio.load import ModelSource
    from .ir.dag import Dag
from .fileio.atomic import save_model, save_npz
from .frontend.pipeline import load, model_name


def _shapes(dag: Dag) -> dict[str, list[int]]:
    return {k: list(v) for k, v in dag.input_shapes().items()}


@dataclass
class NormsReport:
    """``onnx-pathlift norm``: the path-norms of one model, for every q, from one lifted pass."""

    model: str
    dag: Dag
    provider: str
    norms: list[PathNorm]
    timings: dict[str, float]  # seconds: import_s, session_s (building the lifted session), run_s
    verify: VerifyReport | None = None

    @property
    def passed(self) -> bool:
        """False only when the re-emission check ran and failed."""
        return self.verify is None or self.verify.passed

    def to_dict(self) -> dict:
        from .ops import kind_counts

        d = {"model": self.model, "input_shapes": _shapes(self.dag), "outputs": list(self.dag.outputs),
             "notes": self.dag.notes, "parameters": self.dag.n_params, "layers": kind_counts(self.dag),
             "provider": self.provider, "norms": [n.to_dict() for n in self.norms], "timings": self.timings}
        if self.verify is not None:
            d["verify"] = self.verify.to_dict()
        return d


#: ``norm`` lifts every q into one session while their float32 weights take at most this many bytes (16 MiB);
#: beyond, one session per q: peak memory about halves (ResNet-50: 888 -> 581 MB) at no cost in time
ONE_SESSION_BYTES = 1 << 24


def compute_norms(source: ModelSource, q: list[float] | tuple[float, ...] = (1.0, 2.0), input_shape: InputShape = None,
                  outputs: list[str] | None = None, providers: str = "cpu", verify: bool = False) -> NormsReport:
    """Lq path-norms ``‖Φ‖_q`` of ``source`` for every exponent in ``q`` (each ≥ 1, or ``inf``), from one
    lifted onnxruntime session, or one per q once their lifted weights pass :data:`ONE_SESSION_BYTES`
    (``providers``: ``"cpu"`` or ``"cuda"``). With ``verify``, also the
    re-emission check (3 random inputs, relative tolerance 1e-4); a failed check is in the report, not
    raised. Raises :class:`~onnx_pathlift.errors.ProviderUnavailableError` when ``"cuda"`` is unavailable."""
    from .backend.norm import LiftedSession

    loaded = load(source, input_shape, outputs, whole=verify)
    dag, seconds = loaded.dag, loaded.seconds
    source_model = (loaded.model, loaded.prepared.elem_types) if verify else None
    del loaded  # without the check, the parsed file is not needed again: free it before lifting
    # every q in one lifted model and one pass; a large model one q at a time, so that only one set of
    # lifted weights (and onnxruntime's copy of it) is in memory at once
    groups = [list(q)] if 4 * dag.n_params * len(q) <= ONE_SESSION_BYTES else [[x] for x in q]
    norms, timings = [], {"import_s": seconds, "session_s": 0.0, "run_s": 0.0}
    for group in groups:
        t0 = time.perf_counter()
        session = LiftedSession([(dag, x) for x in group], providers, quick_build=True)  # run once
        t1 = time.perf_counter()
        norms += session.norms()
        timings["session_s"] += t1 - t0
        timings["run_s"] += time.perf_counter() - t1
        del session
    report = NormsReport(model_name(source), dag, providers, norms, timings)
    if source_model is not None:
        from .backend.verify import verify as check

        report.verify = check(source_model[0], dag, source_model[1], providers=providers, raise_on_failure=False)
    return report


@dataclass
class LiftReport:
    """``onnx-pathlift lift``: where the lifted network was written and how to read it."""

    written: str
    q: float
    static: bool  # exact static power-of-two scales (else computed at run time)
    dag: Dag
    norm: PathNorm

    def to_dict(self) -> dict:
        from .backend.emit import LOG2_SUFFIX

        return {"written": self.written, "q": self.q if self.q != float("inf") else "inf", "scales": "static" if self.static else "dynamic",
                "inputs": _shapes(self.dag), "outputs": [[o, o + LOG2_SUFFIX] for o in self.dag.outputs],
                "norm": self.norm.to_dict()}


def _sha256(source: ModelSource) -> str:
    """The sha256 of the model file (or of the bytes / serialized ``ModelProto``)."""
    if isinstance(source, (str, os.PathLike)):
        from .fileio.read import open_regular

        with os.fdopen(open_regular(source, str(source)), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return hashlib.sha256(source if isinstance(source, bytes) else source.SerializeToString()).hexdigest()


def write_lifted(source: ModelSource, out: str | os.PathLike, q: float = 1.0, input_shape: InputShape = None,
                 outputs: list[str] | None = None) -> LiftReport:
    """Write the lifted network of ``source`` (weights ``|w|^q``, exponent ``q`` ≥ 1) to ``out`` as a
    standalone ONNX model: fed all-ones inputs, ``‖Φ‖_q^q = Σ_o sum(o · 2^(o__log2_scale))``; its
    metadata says so and names the source's sha256. Raises :class:`UsageError` when ``out`` is the input."""
    import onnx

    from .backend.emit import describe_lifted
    from .backend.norm import PathNormSession

    if isinstance(source, (str, os.PathLike)):
        refuse_overwriting_input(out, source)
    dag = load(source, input_shape, outputs, whole=False).dag
    session = PathNormSession(dag, q, per_sample=False)  # static scales if their budget certifies them, else dynamic
    norm = session.run()
    model = describe_lifted(session.model, dag, q, session.static, _sha256(source))
    onnx.checker.check_model(model)
    save_model(model, out)
    return LiftReport(str(Path(out)), q, session.static, dag, norm)


@dataclass
class Comparison:
    """``onnx-pathlift compare``: the path-metric between A and B, the certificate and its check."""

    a: str
    b: str
    dag_b: Dag  # as compared (canonical form when the spellings differ)
    metric: PathMetric
    certificate: Certificate
    canonical_a: list[str]  # rewrites applied to bring A (B) to the canonical spelling; empty: none
    canonical_b: list[str]
    check: CheckReport | None = None

    @property
    def violation(self) -> CertificateViolation | None:
        """The error (exit code 5) when the check observed an output change above the certified bound."""
        c = self.check
        if c is None or not c.violated:
            return None
        seen = "n/a" if c.max_observed is None else f"{c.max_observed:.6g}"
        return CertificateViolation(
            f"observed output change {seen} (models as shipped: {c.shipped_max_observed}) EXCEEDS "
            f"the certified bound {c.bound} (total: {c.shipped_bound}): this is a bug (in onnx-pathlift or in "
            "the theorem's preconditions); please report it with both models")

    def to_dict(self) -> dict:
        r = self.certificate.r
        d: dict[str, Any] = {
            "a": self.a, "b": self.b, **self.metric.to_dict(r), **self.certificate.to_dict(),
            "activation_quantization_in_b": self.dag_b.activation_qdq, "notes_b": self.dag_b.notes,
            "canonicalised": {"a": self.canonical_a, "b": self.canonical_b} if self.canonical_a or self.canonical_b
            else None}
        if self.check is not None:
            d["check"] = self.check.to_dict()
        if self.violation is not None:
            d["error"] = self.violation.to_dict()
        return d


def compare_models(model_a: ModelSource, model_b: ModelSource, input_shape: InputShape = None,
                   outputs: list[str] | None = None, r: float = 1.0, check: int = 0,
                   providers: str = "cpu") -> Comparison:
    """Path-metric ``d = ‖Φ(θ_A) − Φ(θ_B)‖_1`` between two same-architecture models (lower and upper
    bounds, each layer's part of the upper one), the certificate ``‖A(x) − B(x)‖_1 ≤ max(r, 1)·d``
    (+ the activation-quantization term) for every input with ``‖x‖_∞ ≤ r``, and with ``check`` > 0
    that many random inputs then search steps run against it. The layers are paired once (after
    canonicalisation when the spellings differ) and that pairing serves every step. A violated
    certificate is in the report (:attr:`Comparison.violation`), not raised. Raises
    :class:`~onnx_pathlift.analyses.metric.MismatchError` (a :class:`UsageError`) when the architectures differ."""
    from .analyses.check import check_bound
    from .analyses.metric import comparable, path_metric
    from .analyses.quant_bound import certify
    from .frontend.names import layer_names

    a, b = load(model_a, input_shape, outputs), load(model_b, input_shape, outputs)
    names = layer_names(a.prepared, a.dag), layer_names(b.prepared, b.dag)  # docs/design.md, "Layer names"
    dag_a, dag_b, pairs, canon_a, canon_b = comparable(a.dag, b.dag, names)  # says where the architectures differ first
    metric = path_metric(dag_a, dag_b, providers=providers, breakdown=True, pairs=pairs, names=names)
    cert = certify(dag_a, dag_b, metric.bound_log10(r), r, providers=providers, pairs=pairs, names=names)
    result = Comparison(model_name(model_a), model_name(model_b), dag_b, metric, cert, canon_a, canon_b)
    if check:
        result.check = check_bound(a.model, b.model, dag_a, dag_b, metric, r, check, a.prepared.elem_types,
                                   b.prepared.elem_types, providers=providers, search=check,
                                   activation=cert.activation.term, pairs=pairs)
    return result


@dataclass
class LipschitzReport:
    """``onnx-pathlift lipschitz``: ``‖R(x) − R(x')‖_1 ≤ L·‖x − x'‖_∞`` with ``L = ‖Φ_in‖_1``."""

    model: str
    bound: LipschitzBound

    def to_dict(self) -> dict:
        return {"model": self.model, **self.bound.to_dict()}


def lipschitz_report(source: ModelSource, input_shape: InputShape = None, outputs: list[str] | None = None,
                     providers: str = "cpu") -> LipschitzReport:
    """The input-space Lipschitz bound (ℓ∞ → ℓ1) of ``source``: ``‖Φ_in‖_1``, the L1 path-norm of the
    paths that start at input neurons (certified: the upper end of its interval), beside the naive
    product of the layers' ℓ∞ operator norms."""
    from .analyses.lipschitz import lipschitz

    return LipschitzReport(model_name(source), lipschitz(load(source, input_shape, outputs, whole=False).dag, providers=providers))


@dataclass
class ScoresReport:
    """``onnx-pathlift scores``: path-magnitude scores and a summary row per weight tensor."""

    model: str
    scores: Scores
    seconds: float  # wall time of the forward + adjoint pass
    written: str | None
    rows: list[dict] = field(default_factory=list)  # Scores.summary() with share_of_scores added

    def to_dict(self) -> dict:
        return {"model": self.model, "l1_path_norm_log10": self.scores.log10_norm, "seconds": self.seconds,
                "written": self.written, "tensors": self.rows}


def score_weights(source: ModelSource, out: str | os.PathLike | None = None, input_shape: InputShape = None,
                  outputs: list[str] | None = None, providers: str = "cpu") -> ScoresReport:
    """Path-magnitude scores ``|θ_i|·∂‖Φ‖_1/∂|θ_i|`` of every Conv/ConvTranspose/Gemm/MatMul weight of ``source``, as
    fractions of ``‖Φ‖_1``; with ``out``, written there as a float32 ``.npz`` keyed by initializer name.
    Per tensor, ``share`` is the fraction of ``‖Φ‖_1`` carried by the paths through it (these sum to
    more than 1) and ``share_of_scores`` its part of all scores (they sum to 1).
    Raises :class:`UsageError` when ``out`` is the input."""
    import numpy as np

    from .analyses.scores import path_magnitude
    from .frontend.names import layer_names

    if out and isinstance(source, (str, os.PathLike)):
        refuse_overwriting_input(out, source)
    loaded = load(source, input_shape, outputs, whole=False)
    names = layer_names(loaded.prepared, loaded.dag)
    t0 = time.perf_counter()
    scores = path_magnitude(loaded.dag, providers=providers, names=names)
    elapsed = time.perf_counter() - t0
    if out:
        # deflated only where it pays (a pruned tensor's zeros): scores of live weights barely shrink
        save_npz(out, {k: v.astype(np.float32, copy=False) for k, v in scores.fraction.items()}, compress="auto")
    rows = scores.summary()
    total = sum(row["share"] for row in rows)
    for row in rows:  # the tensor's layer (docs/design.md, "Layer names"); "tensor": the .npz key
        tensor, named = row["initializer"], names.of_tensor(row["initializer"])
        row.update(tensor=tensor, **(named.to_dict() if named else {"layer": tensor, "onnx_node": ""}))
        row["share_of_scores"] = row["share"] / total if total > 0 else 0.0
    return ScoresReport(model_name(source), scores, elapsed, None if out is None else str(out), rows)


@dataclass
class RescaleResult:
    """``onnx-pathlift rescale``: the rescaled model and the check that it computes the same function."""

    written: str | None
    model: ModelProto
    neurons: int  # hidden channels rescaled
    layers: int  # conv/dense layers whose output channels were rescaled
    check: VerifyReport  # one random input (the seed's), relative tolerance 1e-4
    seed: int
    low: float  # λ drawn log-uniformly in [low, high]
    high: float
    shared: int = 0  # channels left alone: an initializer they would scale also feeds another node

    @property
    def note(self) -> str | None:
        """What was left alone, said when anything was (and that the output is a copy when nothing moved)."""
        skipped = (f"{self.shared} channel(s) left alone: an initializer they would scale also feeds another node"
                   if self.shared else "")
        if self.neurons:
            return skipped or None
        return "rescaled nothing: the output is an unchanged copy" + (
            f" ({skipped})" if skipped else " (no hidden channel has a rescalable chain whose weights and biases are all initializers)")

    @property
    def max_rel_output_change(self) -> float:
        return max(self.check.max_rel_error.values(), default=0.0)

    def to_dict(self) -> dict:
        return {"written": self.written, "neurons": self.neurons, "layers": self.layers, "shared": self.shared,
                "note": self.note, "max_rel_output_change": self.max_rel_output_change}


def rescale_model(source: ModelSource, out: str | os.PathLike | None = None, seed: int = 0, low: float = 1 / 8,
                  high: float = 8.0, input_shape: InputShape = None, outputs: list[str] | None = None) -> RescaleResult:
    """A copy of ``source`` with every rescalable hidden channel's incoming weights (and biases) times
    λ and its outgoing weights times 1/λ, λ drawn log-uniformly in [``low``, ``high``] (``seed``): the
    same function and path-lifting, other weights. Checked on one random input (``seed``) by
    :func:`onnx_pathlift.backend.verify.same_function`; written to ``out`` (when given) only once checked.
    Raises :class:`UsageError` unless ``0 < low ≤ high`` or when ``out`` is the input, and
    :class:`VerificationError` (exit code 1) when the outputs changed by more than 1e-4 (relative)."""
    from .analyses.rescale import rescale
    from .backend.verify import same_function

    if out is not None and isinstance(source, (str, os.PathLike)):
        refuse_overwriting_input(out, source)
    loaded = load(source, input_shape, outputs)
    if not 0 < low <= high:
        raise UsageError(f"--range needs 0 < LO ≤ HI (got {low} {high})")
    rescaled, report = rescale(loaded.model, loaded.dag, seed=seed, low=low, high=high)
    check = same_function(loaded.model, rescaled, loaded.dag, trials=1, seed=seed)
    result = RescaleResult(None if out is None else str(out), rescaled, report.neurons, report.layers, check, seed, low,
                           high, report.shared)
    if not check.passed:
        raise VerificationError(f"the rescaled model changed the outputs (max relative error "
                                f"{result.max_rel_output_change:.3g})")
    if out is not None:
        save_model(rescaled, out)
    return result
