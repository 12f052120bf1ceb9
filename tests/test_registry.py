"""The op registry against every analysis: each layer op declares its capabilities, and every
analysis either runs on a model holding that op or refuses it up front, naming the layer and the
missing capability (exit code 3's error), before it emits anything.

Two sample models (ONNX text) hold one layer of every registered layer op; a new op without a
sample fails :func:`test_the_samples_hold_every_layer_op`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper, parser

from onnx_pathlift.analyses.lipschitz import lipschitz
from onnx_pathlift.analyses.metric import path_metric
from onnx_pathlift.analyses.rescale import rescale
from onnx_pathlift.analyses.scores import path_magnitude
from onnx_pathlift.backend.norm import path_norm
from onnx_pathlift.errors import UnsupportedModelError
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.ir.dag import Dag, Layer
from onnx_pathlift.ops import ANALYSES, IMPORTERS, LAYER_OPS, LayerOp
from onnx_pathlift.ops.capabilities import missing
from onnx_pathlift.ops.channel_api import OPERANDS, ChannelRule
from onnx_pathlift.ops.context import attributes
from onnx_pathlift.ops.layer_op import ADJOINT, CAPABILITY_METHODS, LIFT, LIPSCHITZ, RESCALE, TWO_STREAM
from onnx_pathlift.ops.registry import CHANNEL_RULES, weight_op_types
from onnx_pathlift.ops.unsupported import REASONS
from onnx_pathlift.pruning.channels import channel_graph, group_scores

_CONVNET = """
<ir_version: 8, opset_import: ["" : 17]>
convnet (float[1,2,6,6] x) => (float[1,3] y) {
  c1 = Conv <pads = [1,1,1,1]> (x, W1, B1)
  bn = BatchNormalization (c1, g, b, m, v)
  r = Relu (bn)
  mp = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)
  c2 = Conv (mp, W2)
  ap = AveragePool <kernel_shape = [2,2], strides = [1,1]> (c2)
  dc = ConvTranspose (ap, W3)
  gp = GlobalAveragePool (dc)
  f = Flatten (gp)
  y = Gemm <transB = 1> (f, W4, B4)
}
"""
_SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
shapes (float[1,4,4,4] x) => (float[1,24,2,3] y) {
  t = Transpose <perm = [0,1,3,2]> (x)
  p = Pad <mode = "constant"> (t, pads)
  s = Slice (p, starts, ends, axes)
  g = Gather <axis = 1> (s, idx)
  c = Concat <axis = 1> (s, g)
  d = SpaceToDepth <blocksize = 2> (c)
  e = GatherElements <axis = 1> (d, gi)
  rs = ReduceSum <keepdims = 1> (e, raxes)
  y = Add (e, rs)
}
"""


def _convnet_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return {"W1": f(4, 2, 3, 3), "B1": f(4), "g": f(4), "b": f(4), "m": f(4), "v": np.abs(f(4)) + 0.5,
            "W2": f(4, 4, 1, 1), "W3": f(4, 5, 2, 2), "W4": f(3, 5), "B4": f(3)}


def _shapes_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    return {"pads": i64(0, 0, 1, 1, 0, 0, 1, 1), "starts": i64(1), "ends": i64(5), "axes": i64(2), "idx": i64(0, 2),
            "gi": rng.integers(0, 24, (1, 24, 2, 3)).astype(np.int64), "raxes": i64(2, 3)}


@dataclass(frozen=True)
class Sample:
    model: onnx.ModelProto
    prepared: object
    dag: Dag


@cache
def sample(name: str) -> Sample:
    text, params = {"convnet": (_CONVNET, _convnet_params), "shapes": (_SHAPES, _shapes_params)}[name]
    model = parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in params(np.random.default_rng(0)).items())
    prepared = prepare(load_model(model))
    return Sample(model, prepared, import_prepared(prepared))


def _sample_of(op: str) -> str:
    return next(name for name in ("convnet", "shapes") if any(layer.op == op for layer in sample(name).dag.layers()))


def _fraction_ok(scores) -> bool:
    return all(0.0 <= float(f.sum()) <= 1.0 + 1e-5 and np.all(f >= 0) for f in scores.fraction.values())


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _rescale_keeps_norm(s: Sample) -> bool:
    """The rescaled model computes the same function (onnxruntime, random input) and has the same
    path-norm (Φ is rescaling-invariant). In the convnet, the channels of the conv → conv, conv →
    conv-transpose and conv-transpose → dense chains are rescaled; the shapes sample has no weights."""
    out, report = rescale(s.model, s.dag, seed=1)
    x = np.random.default_rng(2).normal(size=s.dag.layer(s.dag.inputs[0]).shape).astype(np.float32)
    same = np.allclose(_outputs(out, x), _outputs(s.model, x), rtol=1e-4, atol=1e-5)
    expected = 0 if s.dag is sample("shapes").dag else 3
    return same and report.layers == expected and math.isclose(path_norm(out).log10, path_norm(s.dag).log10, abs_tol=1e-5)


#: per analysis: its public entry point on a sample, and what its result must satisfy
_RUNS = {
    "norm": lambda s: math.isfinite(path_norm(s.dag).log10),
    "scores": lambda s: _fraction_ok(path_magnitude(s.dag)),
    "metric": lambda s: path_metric(s.dag, s.dag).upper_log10 == -math.inf,  # d(θ, θ) = 0, certified exactly
    "lipschitz": lambda s: (lambda b: b.path_norm_log10 <= b.naive_log10 + 1e-9)(lipschitz(s.dag)),
    "rescale": _rescale_keeps_norm,
    "channel-prune": lambda s: bool(np.all(np.nan_to_num(group_scores(channel_graph(s.model, s.prepared), s.prepared,
                                                                      "path-mass", s.dag)) >= 0)),
}


@cache
def _run(name: str, analysis: str) -> bool:
    return _RUNS[analysis](sample(name))


def test_the_samples_hold_every_layer_op() -> None:
    held = {layer.op for name in ("convnet", "shapes") for layer in sample(name).dag.layers()}
    assert held == set(LAYER_OPS), f"add a layer of {sorted(set(LAYER_OPS) - held)} to a sample model"


def test_every_analysis_is_covered() -> None:
    assert set(_RUNS) == set(ANALYSES)


@pytest.mark.parametrize("analysis", sorted(ANALYSES))
@pytest.mark.parametrize("op", sorted(LAYER_OPS))
def test_op_runs_or_is_refused_up_front(op: str, analysis: str) -> None:
    """A sample holding ``op`` runs through ``analysis`` (its result checked) when the op has every
    capability the analysis needs; otherwise the analysis refuses it by name before emitting."""
    name = _sample_of(op)
    if not missing(op, analysis):
        assert _run(name, analysis)
        return
    with pytest.raises(UnsupportedModelError) as err:
        _RUNS[analysis](sample(name))
    assert any(r.op_type == op and missing(op, analysis)[0] in r.reason for r in err.value.refusals)


class _Bare(LayerOp):
    """A layer op with only the lifted form: the identity (lifted: identity, weight 1)."""

    op = "bare"
    kind = "bare"

    def emit(self, b, layer, xs):
        return b.op("Identity", xs, "bare")

    def lift(self, b, layer, xs, q):
        return xs[0]

    def bound(self, layer, bs, shapes, q):
        return bs[0]


def test_capabilities_are_derived_from_the_methods_overridden() -> None:
    assert _Bare.capabilities == {LIFT}
    assert LAYER_OPS["relu"].capabilities == {LIFT, ADJOINT, TWO_STREAM, LIPSCHITZ, RESCALE}
    assert RESCALE not in LAYER_OPS["sum"].capabilities  # no rescale role declared
    for op in LAYER_OPS.values():
        for cap, methods in CAPABILITY_METHODS.items():
            assert (cap in op.capabilities) == all(getattr(type(op), m) is not getattr(LayerOp, m) for m in methods)


@pytest.fixture
def bare_dag(monkeypatch: pytest.MonkeyPatch) -> Dag:
    """input x → bare layer "b" (the analysed output)."""
    monkeypatch.setitem(LAYER_OPS, "bare", _Bare())
    dag = Dag(inputs=["x"], outputs={"y": "b"})
    dag.add(Layer("x", "input", [], (1, 3)))
    dag.add(Layer("b", "bare", ["x"], (1, 3), source="node_b"))
    return dag


@pytest.mark.parametrize("analysis", sorted(set(ANALYSES) - {"norm", "rescale"}))
def test_a_missing_capability_is_refused_naming_the_layer(bare_dag: Dag, analysis: str) -> None:
    s = sample("convnet")
    with pytest.raises(UnsupportedModelError) as err:
        _RUNS[analysis](Sample(s.model, s.prepared, bare_dag))
    cap = sorted(ANALYSES[analysis] - {LIFT})[0]
    assert [(r.node, r.op_type) for r in err.value.refusals] == [("b", "bare")]
    assert f"{analysis} needs the {cap!r} capability" in err.value.refusals[0].reason
    assert err.value.exit_code == 3


def test_an_op_with_only_the_lifted_form_still_gets_a_path_norm(bare_dag: Dag) -> None:
    """The identity on 3 inputs fed ones: ‖Φ‖_1 = 3 (three one-edge paths of weight 1)."""
    assert path_norm(bare_dag).log10 == pytest.approx(math.log10(3.0), abs=1e-7)
    rescale(sample("convnet").model, bare_dag)  # rescaling needs only the lifted form: accepted


def test_refusal_reasons_and_import_rules_share_no_op_type() -> None:
    assert not set(REASONS) & set(IMPORTERS)


def test_attributes_are_decoded_and_filled_from_the_schema_of_the_models_opset() -> None:
    """One normalisation for every rule: strings decoded, omitted attributes at their schema default
    (float32, as onnxruntime reads them), only those the schema of that opset version has."""
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")
    a = attributes(conv, 17)
    assert a["auto_pad"] == "SAME_UPPER" and a["group"] == 1 and "strides" not in a  # strides: no schema default
    leaky = attributes(onnx.helper.make_node("LeakyRelu", ["x"], ["y"]), 17)
    assert leaky["alpha"] == float(np.float32(0.01))
    assert "training_mode" in attributes(onnx.helper.make_node("BatchNormalization", list("xsbmv"), ["y"]), 15)
    assert "training_mode" not in attributes(onnx.helper.make_node("BatchNormalization", list("xsbmv"), ["y"]), 9)
    given = attributes(onnx.helper.make_node("Resize", ["x"], ["y"], mode="linear"), 13)
    assert given["mode"] == "linear" and given["nearest_mode"] == "round_prefer_floor"


def test_channel_rules_are_declared_functions_for_onnx_op_types() -> None:
    """Each channel rule is a documented function registered for an ONNX op type of the default domain,
    with a known operand pattern; its hooks (slim-model edit, MAC count) are functions too."""
    assert CHANNEL_RULES
    for op_type, rule in CHANNEL_RULES.items():
        assert onnx.defs.has(op_type), op_type
        assert isinstance(rule, ChannelRule) and rule.operands in OPERANDS
        assert callable(rule.join) and rule.join.__doc__, op_type
        assert all(hook is None or (callable(hook) and hook.__doc__) for hook in (rule.edit, rule.macs)), op_type
    assert {"Conv", "ConvTranspose", "Gemm", "MatMul"} <= set(weight_op_types())
