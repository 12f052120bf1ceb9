"""The re-emission check: the imported DAG, emitted with its signed weights and real activations,
must reproduce the source model's own outputs in onnxruntime on random inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto

from ..errors import PathliftError, VerificationError
from ..ir.dag import Dag
from .emit import emit_model
from .runtime import make_session


@dataclass(frozen=True)
class VerifyReport:
    """Largest relative deviation ``max|a-b| / max|a|`` per analysed output over the trials."""

    passed: bool
    max_rel_error: dict[str, float]
    trials: int
    rtol: float

    def to_dict(self) -> dict:
        return {"passed": self.passed, "max_rel_error": self.max_rel_error, "trials": self.trials, "rtol": self.rtol}


def _expose(model: ModelProto, names: list[str], elem_types: dict[str, int]) -> ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (intermediate tensors allowed)."""
    m = ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for name in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_types.get(name, onnx.TensorProto.FLOAT), None))
    return m


class _Reference:
    """The ONNX reference evaluator behind a session-like interface, for models onnxruntime cannot
    run (old opsets such as Gemm-6)."""

    def __init__(self, model: ModelProto):
        from onnx.reference import ReferenceEvaluator

        self._ref = ReferenceEvaluator(model)
        self._inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]

    def get_inputs(self):
        from types import SimpleNamespace

        return [SimpleNamespace(name=i.name, shape=[d.dim_value or "?" for d in i.type.tensor_type.shape.dim])
                for i in self._inputs]

    def run(self, names, feeds):
        return self._ref.run(names, feeds)


def without_activation_qdq(model: ModelProto, keep: list[str] | tuple[str, ...] = ()) -> ModelProto:
    """A copy of ``model`` whose QuantizeLinear→DequantizeLinear pairs on activations are bypassed,
    or replaced by a Relu when their range starts at 0: the float network the importer analyses
    (weights stay quantized-then-dequantized). The graph outputs and the tensors named in ``keep``
    (an activation DequantizeLinear's output chosen with ``--output``) keep their names."""
    from ..ops.quantize import clips_at_zero
    from ..ops.registry import has_role

    m = ModelProto()
    m.CopyFrom(model)
    constants = {t.name for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}

    def is_constant(name: str) -> bool:
        node = producers.get(name)
        return name in constants or ((has_role(node, "constant") or has_role(node, "quantize"))
                                     and all(is_constant(i) for i in node.input if i))

    rename: dict[str, str] = {}
    relus: list[onnx.NodeProto] = []
    for node in m.graph.node:
        q = producers.get(node.input[0]) if has_role(node, "dequantize") else None
        if has_role(q, "quantize") and not is_constant(q.input[0]):
            zero = next((t for t in m.graph.initializer if len(q.input) > 2 and t.name == q.input[2]), None)
            if clips_at_zero(None if zero is None else onnx.numpy_helper.to_array(zero)):
                relus.append(onnx.helper.make_node("Relu", [q.input[0]], [q.input[0] + "__relu"]))
                rename[node.output[0]] = q.input[0] + "__relu"
            else:
                rename[node.output[0]] = q.input[0]
    for node in m.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = rename.get(name, name)
    for relu in {r.output[0]: r for r in relus}.values():  # after their producers: order by position
        position = max(i for i, n in enumerate(m.graph.node) if relu.input[0] in n.output or i == 0)
        m.graph.node.insert(position + 1, relu)
    for node in m.graph.node:  # the bypassed DequantizeLinear nodes now feed nothing
        if has_role(node, "dequantize") and node.output[0] in rename:
            node.output[0] += "__bypassed"
    for name in dict.fromkeys([out.name for out in m.graph.output] + list(keep)):
        if name in rename:  # keep the tensor's name: route it through an Identity
            m.graph.node.append(onnx.helper.make_node("Identity", [rename[name]], [name]))
    return m


class ModelRunner:
    """Runs a source model and returns the named tensors (intermediate ones included), feeding zeros
    to graph inputs the caller does not give; falls back to ONNX's reference evaluator for models
    onnxruntime cannot run (old op versions such as Gemm-6)."""

    def __init__(self, model: ModelProto, names: list[str], elem_types: dict[str, int], providers=None):
        exposed = _expose(model, names, elem_types)
        try:
            self.session = make_session(exposed, providers, rewrites="basic")
        except PathliftError:
            raise
        except Exception as ort_error:
            try:
                self.session = _Reference(exposed)
            except Exception as exc:
                raise VerificationError(f"onnxruntime cannot run the source model ({ort_error}), nor can ONNX's "
                                        f"reference evaluator ({type(exc).__name__}: {exc})") from None
        self.names = names
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        full = {n: v for n, v in feeds.items() if n in self.inputs}
        for i in self.inputs.values():
            if i.name not in full:
                full[i.name] = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
        return [np.asarray(r, np.float64) for r in self.session.run(self.names, full)]


Run = Callable[[dict[str, np.ndarray]], list]


def relative_error(a: np.ndarray, b: np.ndarray, symmetric: bool = False) -> float:
    """``max|a − b| / max|a|``, relative to the reference ``a`` (``/ max(max|a|, max|b|)`` when
    ``symmetric``); the denominator is at least 1e-30, so two all-zero tensors differ by 0."""
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)) if symmetric else 0.0, 1e-30)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def _worst_errors(reference: Run, candidate: Run, dag: Dag, trials: int, seed: int, what: str) -> dict[str, float]:
    """Per analysed output, the largest :func:`relative_error` of ``candidate`` from ``reference``
    over ``trials`` inputs drawn uniformly in [-1, 1] (``numpy`` generator ``seed``)."""
    names = list(dag.outputs)
    rng = np.random.default_rng(seed)
    worst = dict.fromkeys(names, 0.0)
    for _ in range(trials):
        feeds = {n: rng.uniform(-1, 1, dag.layer(n).shape).astype(np.float32) for n in dag.inputs}
        for n, a, b in zip(names, reference(feeds), candidate(feeds)):
            b = np.asarray(b, np.float64)
            if a.shape != b.shape:
                raise VerificationError(f"output {n!r}: source shape {a.shape}, {what} {b.shape}")
            worst[n] = max(worst[n], relative_error(a, b))
    return worst


def verify(model: ModelProto, dag: Dag, elem_types: dict[str, int] | None = None, trials: int = 3,
           seed: int = 0, rtol: float = 1e-4, providers=None, raise_on_failure: bool = True) -> VerifyReport:
    """Run the source model and the re-emitted DAG on ``trials`` random inputs (uniform in [-1, 1]).

    Raises :class:`VerificationError` when some output deviates by more than ``rtol`` (relative to
    the source output's largest magnitude) and ``raise_on_failure``; else the report says so."""
    names = list(dag.outputs)
    if dag.activation_qdq:  # what is analysed is the float network with the quantized weights
        model = without_activation_qdq(model, names)
    source = ModelRunner(model, names, elem_types or {}, providers)
    emitted = make_session(emit_model(dag), providers)
    worst = _worst_errors(source, lambda feeds: emitted.run(names, feeds), dag, trials, seed, "re-emitted")
    report = VerifyReport(all(e <= rtol for e in worst.values()), worst, trials, rtol)
    if raise_on_failure and not report.passed:
        raise VerificationError(f"re-emitted DAG does not reproduce the model: max relative error {worst} > {rtol}")
    return report


def same_function(model: ModelProto, other: ModelProto, dag: Dag, trials: int = 1, seed: int = 0,
                  rtol: float = 1e-4, providers=None) -> VerifyReport:
    """Whether ``other`` (e.g. a rescaled copy of ``model``) computes ``model``'s analysed outputs
    (``dag``: ``model`` imported): both run as written on ``trials`` random inputs uniform in [-1, 1]
    (``seed``); passed when each output's ``max|a−b| / max|a|`` is at most ``rtol``. Never raises on
    a deviation (the report says it); raises :class:`VerificationError` when neither onnxruntime nor
    ONNX's reference evaluator can run a model."""
    names = list(dag.outputs)
    worst = _worst_errors(ModelRunner(model, names, {}, providers), ModelRunner(other, names, {}, providers), dag,
                          trials, seed, "other model")
    return VerifyReport(all(e <= rtol for e in worst.values()), worst, trials, rtol)
