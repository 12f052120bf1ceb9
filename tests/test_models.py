"""Real models: the shipped ones, the onnx wheel's light architectures and the shared zoo.

Each imported model must pass the re-emission check (the DAG, emitted with its signed weights and
real activations, reproduces the model's outputs in onnxruntime) and get a finite path-norm."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from builders import inits
from conftest import LIGHT, MODELS
from oracle import dp_path_norm_from_dag, neuron_dag

import onnx_pathlift as pl
from onnx_pathlift.backend.verify import verify
from onnx_pathlift.errors import InvalidModelError, UnsupportedModelError
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.frontend.prepare import prepare

SHIPPED = sorted(p.name for p in MODELS.glob("*.onnx"))


def _check(path, trials: int = 2) -> pl.Dag:
    model = load_model(path)
    prepared = prepare(model)
    dag = import_prepared(prepared)
    report = verify(model, dag, prepared.elem_types, trials=trials)
    assert report.passed, report
    for q in (1.0, 2.0):
        assert math.isfinite(pl.path_norm(dag, q=q).log10)
    return dag


def test_models_are_shipped() -> None:
    assert {"digits_mlp_sklearn.onnx", "digits_cnn_torch.onnx", "digits_cnn_torch_bn.onnx"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reemission(name: str) -> None:
    _check(MODELS / name, trials=5)


@pytest.mark.parametrize("name", ["digits_cnn_torch.onnx", "digits_cnn_torch_bn.onnx"])
def test_shipped_cnn_against_neuron_level_oracle(name: str) -> None:
    """The neuron-level DAG (built by probing each node in onnxruntime) summed in float64."""
    model = onnx.load(MODELS / name)
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    graph, outputs = neuron_dag(model)
    for q in (1.0, 2.0, 4.0):
        want = dp_path_norm_from_dag(graph, outputs, q) ** (1 / q)
        assert pl.path_norm(MODELS / name, q=q).value == pytest.approx(want, rel=1e-6)


def test_shipped_mlp_against_numpy() -> None:
    """skl2onnx MLP: MatMul + Add layers; the lifted forward pass in float64 numpy."""
    model = onnx.load(MODELS / "digits_mlp_sklearn.onnx")
    init = inits(model, np.float64)
    layers = [(init[w], init[b]) for w, b in (("coefficient", "intercepts"), ("coefficient1", "intercepts1"),
                                              ("coefficient2", "intercepts2"))]
    for q in (1.0, 2.0, 4.0):
        v = np.ones(64)
        for w, b in layers:
            v = v @ np.abs(w) ** q + np.abs(b).ravel() ** q
        assert pl.path_norm(MODELS / "digits_mlp_sklearn.onnx", q=q).value == pytest.approx(v.sum() ** (1 / q), rel=1e-6)


def test_bn_fusion_changes_the_parameterization() -> None:
    """Folding BN into a conv with a bias is another parameterization, with a smaller path-norm
    (pathnorm-math §2); the two files compute the same function."""
    fused = pl.path_norm(MODELS / "digits_cnn_torch.onnx", q=1.0).value
    unfused = pl.path_norm(MODELS / "digits_cnn_torch_bn.onnx", q=1.0).value
    assert fused < unfused


@pytest.mark.parametrize("name", ["light_resnet50.onnx", "light_squeezenet.onnx", "light_densenet121.onnx",
                                  "light_shufflenet.onnx", "light_inception_v2.onnx"])
@pytest.mark.slow
def test_light_architectures(name: str) -> None:
    """Full-size architectures from the onnx wheel (ConstantOfShape weights folded first)."""
    dag = _check(LIGHT / name, trials=1)
    assert any("cut Softmax" in n for n in dag.notes) or name == "light_densenet121.onnx"
    assert dag.n_params > 1_000_000 or name == "light_shufflenet.onnx"


def test_light_lrn_models_are_refused() -> None:
    with pytest.raises(UnsupportedModelError) as err:
        pl.import_model(LIGHT / "light_bvlc_alexnet.onnx")
    assert {r.op_type for r in err.value.refusals} == {"LRN"}


#: zoo files outside the supported set, with the op that is refused (or None: invalid model)
ZOO_REFUSED = {
    "hls4ml_example_models/conv2d_small_mp_keras.onnx": "Selu",
    "hls4ml_example_models/three_layer_bn_keras.onnx": None,  # BN parameters do not match the channels
    "vnncomp2021/eran/nets/ffnnSIGMOID__Point_6x200.onnx": "Sigmoid",
}


@pytest.mark.slow
def test_zoo(zoo) -> None:
    """Every ReLU model of the shared zoo imports, re-emits faithfully and gets a path-norm; the
    others are refused with the exact node."""
    files = sorted(zoo.rglob("*.onnx"))
    assert len(files) > 50
    for path in files:
        rel = path.relative_to(zoo).as_posix()
        if rel in ZOO_REFUSED:
            expected = UnsupportedModelError if ZOO_REFUSED[rel] else InvalidModelError
            with pytest.raises(expected) as err:
                pl.import_model(path)
            if ZOO_REFUSED[rel]:
                assert {r.op_type for r in err.value.refusals} == {ZOO_REFUSED[rel]}, rel
            continue
        _check(path, trials=1)
