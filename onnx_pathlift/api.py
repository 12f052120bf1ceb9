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

The analyses are imported when called (the audit's parent process needs none of them). A command that an
analysis declares about itself (:data:`onnx_pathlift.analyses.TABLE`) keeps its library function in
its own module; it is found here by its name (``api.lipschitz_report``, ``api.score_weights``, ...)."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CertificateViolation

if TYPE_CHECKING:  # (the audit package is not imported at run time: norm's start-up does without it)
    from .analyses.check import CheckReport
    from .analyses.metric import PathMetric
    from .analyses.quant_bound import Certificate
    from .audit.record import InputShape  # one static shape, or one per input name; None: as declared
    from .backend.norm import PathNorm
    from .backend.verify import VerifyReport
    from .fileio.load import ModelSource
    from .ir.dag import Dag
from .frontend.pipeline import load, model_name

#: re-exported from :mod:`onnx_pathlift.fileio.atomic`, imported when first used (``norm`` writes nothing)
_WRITERS = ("save_model", "save_npz")


def __getattr__(name: str):
    """The writers of :data:`_WRITERS`, and the library function of each command an analysis declares
    (:data:`onnx_pathlift.analyses.TABLE`: ``lipschitz_report``, ``score_weights``, ...), from its module."""
    if name in _WRITERS:
        from .fileio import atomic

        return getattr(atomic, name)
    from .analyses import library_function

    return library_function(name)


def __dir__() -> list[str]:
    from .analyses import TABLE

    return sorted([*globals(), *_WRITERS, *(row.function for row in TABLE.values())])


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
    from .fileio.atomic import refuse_overwriting_input, save_model  # (norm writes nothing: its start-up does without)

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
