"""Pruning (``onnx_pathlift.pruning.prune``), neuron rescaling (``onnx_pathlift.analyses.rescale``) and their CLI commands.

* ``masks``: exact counts, deterministic ties, already-zero weights first, global vs per-layer scope,
  bad arguments; ``select`` by regular expression.
* ``apply``: only the masked initializers change, every other byte of the model is the source's.
* ``prune`` / ``rescale`` / ``compare`` on the command line, on the shipped models: JSON, masks, exit
  codes, the exact certificate (never exceeded on sampled inputs), rescaling invariance of the
  path-magnitude masks, the paper's finding in miniature, and a QDQ model whose weights are skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import inits
from conftest import MODELS, run_captured
from onnx import numpy_helper

import onnx_pathlift as pl
from onnx_pathlift.analyses.scores import magnitude, path_magnitude
from onnx_pathlift.errors import UsageError
from onnx_pathlift.frontend.names import layer_names
from onnx_pathlift.frontend.pipeline import load
from onnx_pathlift.pruning.prune import PruneReport, apply, masks, select

CNN = MODELS / "digits_cnn_torch_bn.onnx"
MLP = MODELS / "digits_mlp_sklearn.onnx"
QDQ = MODELS / "digits_cnn_torch_bn_int8.onnx"
PRUNED50 = MODELS / "digits_cnn_torch_bn_pruned50.onnx"
DATA = MODELS / "digits_test.npz"
CNN_WEIGHTS = ["block.conv1.weight", "block.conv2.weight", "head.0.weight", "head.4.weight", "stem.0.weight"]
MLP_WEIGHTS = ["coefficient", "coefficient1", "coefficient2"]

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def run_json(*args) -> tuple[int, dict]:
    rc, out, err = run_captured(*args, "--json")
    assert out.strip(), err
    return rc, json.loads(out)


def tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def accuracy(model: onnx.ModelProto | Path, output: str) -> float:
    """Top-1 on digits_test.npz, batch of 1 (the CNN takes (1, 1, 8, 8), the MLP (1, 64))."""
    data = np.load(DATA)
    s = session(model)
    shape = [1, 1, 8, 8] if len(s.get_inputs()[0].shape) == 4 else [1, 64]
    name = s.get_inputs()[0].name
    pred = [int(np.argmax(s.run([output], {name: x.reshape(shape).astype(np.float32)})[0])) for x in data["x"]]
    return float(np.mean(np.asarray(pred) == data["y"]))


OUTPUT = {CNN: "logits", MLP: "probabilities"}  # softmax: same argmax as the analysed add_result2

# --------------------------------------------------------------------------------------------
# masks and select
# --------------------------------------------------------------------------------------------


def _random_scores(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"b": rng.random((3, 4)), "a": rng.random(5), "c": rng.random((2, 2, 2))}


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.3, 0.5, 0.77, 0.99, 1.0])
def test_masks_global_exact_count_and_threshold(sparsity: float) -> None:
    scores = _random_scores()
    copy = {k: v.copy() for k, v in scores.items()}
    keep = masks(scores, sparsity)
    assert sorted(keep) == sorted(scores)
    n = sum(v.size for v in scores.values())
    for k in scores:
        assert keep[k].shape == scores[k].shape and keep[k].dtype == bool
        np.testing.assert_array_equal(scores[k], copy[k])  # inputs untouched
    pruned = sum(int((~m).sum()) for m in keep.values())
    assert pruned == round(sparsity * n)
    gone = np.concatenate([scores[k][~keep[k]] for k in scores])
    kept = np.concatenate([scores[k][keep[k]] for k in scores])
    if gone.size and kept.size:
        assert gone.max() < kept.min()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_masks_layer_scope_prunes_each_tensor_alone(sparsity: float) -> None:
    scores = _random_scores(1)
    keep = masks(scores, sparsity, "layer")
    for k, s in scores.items():
        assert int((~keep[k]).sum()) == round(sparsity * s.size), k
        if 0 < (~keep[k]).sum() < s.size:
            assert s[~keep[k]].max() < s[keep[k]].min()


def test_global_and_layer_scope_differ() -> None:
    scores = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([10.0, 20.0, 30.0, 40.0])}
    g = masks(scores, 0.5, "global")
    np.testing.assert_array_equal(g["a"], [False] * 4)
    np.testing.assert_array_equal(g["b"], [True] * 4)
    lay = masks(scores, 0.5, "layer")
    np.testing.assert_array_equal(lay["a"], [False, False, True, True])
    np.testing.assert_array_equal(lay["b"], [False, False, True, True])


def test_ties_go_by_tensor_name_then_flat_index() -> None:
    scores = {"b": np.ones(3), "a": np.ones((2, 2))}  # all equal: "a" (sorted first) goes first, in flat order
    keep = masks(scores, 2 / 7)
    np.testing.assert_array_equal(keep["a"], [[False, False], [True, True]])
    np.testing.assert_array_equal(keep["b"], [True, True, True])
    keep = masks(scores, 5 / 7)
    np.testing.assert_array_equal(keep["a"], np.zeros((2, 2), bool))
    np.testing.assert_array_equal(keep["b"], [False, True, True])
    # the order of the dict does not matter, nor repeated calls
    again = masks({"a": np.ones((2, 2)), "b": np.ones(3)}, 5 / 7)
    for k in keep:
        np.testing.assert_array_equal(again[k], keep[k])
    keep = masks(scores, 0.5, "layer")  # 2 of "a", round(1.5) = 2 of "b": lowest indices
    np.testing.assert_array_equal(keep["a"], [[False, False], [True, True]])
    np.testing.assert_array_equal(keep["b"], [False, False, True])


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_zero_and_one(scope: str) -> None:
    scores = _random_scores(2)
    assert all(m.all() for m in masks(scores, 0.0, scope).values())
    assert all(not m.any() for m in masks(scores, 1.0, scope).values())


@pytest.mark.parametrize("sparsity", [-0.01, 1.5, 1.0000001, math.nan, math.inf])
def test_bad_sparsity_is_a_usage_error(sparsity: float) -> None:
    with pytest.raises(UsageError):
        masks(_random_scores(), sparsity)


def test_bad_scope_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        masks(_random_scores(), 0.3, "channel")


def test_select() -> None:
    """A layer name, another spelling of it (ONNX node, output tensor, DAG layer) or a regular expression."""
    loaded = load(CNN)
    names = layer_names(loaded.prepared, loaded.dag)
    scores = {"block.conv1.weight": np.ones(2), "block.conv2.weight": np.ones(3), "head.0.weight": np.ones(4)}
    assert select(scores, None, names) == scores and select(scores, None, names) is not scores
    assert sorted(select(scores, r"conv\d", names)) == ["block.conv1.weight", "block.conv2.weight"]
    assert sorted(select(scores, "^head", names)) == ["head.0.weight"]
    for spelling in ("/head/head.0/Conv", "/head/head.0/Conv_output_0", "/head/head.0/Conv_output_0/conv"):
        assert sorted(select(scores, spelling, names)) == ["head.0.weight"], spelling
    with pytest.raises(UsageError, match="matches no layer; the layers: block.conv1.weight, block.conv2.weight, head.0.weight "):
        select(scores, "^tail", names)
    with pytest.raises(UsageError, match="not a regular expression"):
        select(scores, "conv(", names)


@pytest.mark.parametrize("criterion", ["path-magnitude", "magnitude"])
def test_already_zero_weights_are_pruned_first(criterion: str) -> None:
    model = onnx.load(str(CNN))
    rng = np.random.default_rng(0)
    params = inits(model)
    zeros = {}
    for k in CNN_WEIGHTS:
        w = params[k].copy()
        idx = rng.choice(w.size, 3 + w.size // 20, replace=False)
        w.reshape(-1)[idx] = 0
        zeros[k] = np.sort(idx)
        tensors(model)[k].CopyFrom(numpy_helper.from_array(w, k))
    dag = pl.import_model(model)
    scores = path_magnitude(dag).fraction if criterion == "path-magnitude" else magnitude(dag)
    n = sum(s.size for s in scores.values())
    k0 = sum(z.size for z in zeros.values())
    for k, s in scores.items():  # the precondition: only the zeroed weights score 0
        assert np.array_equal(np.flatnonzero(s.ravel() == 0), zeros[k]), k
    keep = masks(scores, k0 / n)
    for k in scores:
        np.testing.assert_array_equal(np.flatnonzero(~keep[k].ravel()), zeros[k], err_msg=k)
    # fewer than all of them: the zeros of the lowest (name, index) first
    m = k0 - 5
    keep = masks(scores, m / n)
    order = [(k, int(i)) for k in sorted(zeros) for i in zeros[k]][:m]
    assert sorted((k, int(i)) for k in keep for i in np.flatnonzero(~keep[k].ravel())) == order


def test_pruning_a_pruned_model_below_its_sparsity_prunes_nothing_new() -> None:
    model = onnx.load(str(PRUNED50))
    keep = masks(path_magnitude(model).fraction, 0.3)
    out, report = apply(model, keep)
    assert report.pruned == 0
    assert report.sparsity > 0.45
    got = inits(out)
    for k, a in inits(model).items():
        np.testing.assert_array_equal(got[k], a, err_msg=k)


# --------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,weights", [(CNN, CNN_WEIGHTS), (MLP, MLP_WEIGHTS)])
@pytest.mark.parametrize("criterion", ["path-magnitude", "magnitude"])
def test_apply_changes_only_the_masked_initializers(path: Path, weights: list[str], criterion: str) -> None:
    model = onnx.load(str(path))
    original = model.SerializeToString()
    dag = pl.import_model(model)
    scores = path_magnitude(dag).fraction if criterion == "path-magnitude" else magnitude(dag)
    assert sorted(scores) == weights
    keep = masks(scores, 0.3)
    out, report = apply(model, keep)
    assert isinstance(report, PruneReport)
    assert model.SerializeToString() == original  # the source is not modified
    before, after = inits(model), inits(out)
    n = sum(before[k].size for k in weights)
    assert report.total == n
    assert sorted(report.tensors) == weights and report.skipped == {}
    assert report.pruned == round(0.3 * n)  # no zero weights in the source
    assert report.sparsity == pytest.approx(sum(int((after[k] == 0).sum()) for k in weights) / n)
    for k in weights:
        assert after[k].dtype == before[k].dtype and after[k].shape == before[k].shape
        np.testing.assert_array_equal(after[k][keep[k]], before[k][keep[k]])
        assert np.all(after[k][~keep[k]] == 0)
    # every other initializer byte-identical, and so is the whole model once the pruned tensors are restored
    a, b = tensors(model), tensors(out)
    assert [t.name for t in out.graph.initializer] == [t.name for t in model.graph.initializer]
    for k in a:
        if k not in weights:
            assert b[k].SerializeToString() == a[k].SerializeToString(), k
    assert [x.SerializeToString() for x in out.graph.node] == [x.SerializeToString() for x in model.graph.node]
    restored = onnx.ModelProto()
    restored.CopyFrom(out)
    for t in restored.graph.initializer:
        if t.name in weights:
            t.CopyFrom(a[t.name])
    assert restored.SerializeToString() == original
    # it runs, and the same inputs give outputs of the same shapes
    s0, s1 = session(model), session(out)
    x = np.load(DATA)["x"][:1].reshape([1, 1, 8, 8] if path == CNN else [1, 64]).astype(np.float32)
    name = s0.get_inputs()[0].name
    for y0, y1 in zip(s0.run(None, {name: x}), s1.run(None, {name: x})):
        assert np.shape(y0) == np.shape(y1)


def test_apply_rejects_a_mask_of_the_wrong_shape_and_skips_unknown_tensors() -> None:
    model = onnx.load(str(MLP))
    with pytest.raises(UsageError, match="shape"):
        apply(model, {"coefficient": np.ones((64, 63), bool)})
    out, report = apply(model, {"not_there": np.zeros(3, bool)})
    assert report.skipped.keys() == {"not_there"} and report.tensors == [] and report.pruned == 0
    assert out.SerializeToString() == model.SerializeToString()


def test_apply_keeps_float64_and_float16_dtypes() -> None:
    from builders import make_model
    from onnx import TensorProto

    w64 = np.arange(1, 7, dtype=np.float64).reshape(2, 3)
    w16 = np.arange(1, 7, dtype=np.float16).reshape(3, 2)
    model = make_model([], [], [], [numpy_helper.from_array(w64, "w64"), numpy_helper.from_array(w16, "w16")])
    keep = {"w64": np.array([[True, False, True], [False, True, True]]), "w16": np.ones((3, 2), bool)}
    keep["w16"][2, 1] = False
    out, report = apply(model, keep)
    got = inits(out)
    assert got["w64"].dtype == np.float64 and got["w16"].dtype == np.float16
    np.testing.assert_array_equal(got["w64"], [[1, 0, 3], [0, 5, 6]])
    np.testing.assert_array_equal(got["w16"], [[1, 2], [3, 4], [5, 0]])
    assert report.pruned == 3 and report.total == 12 and report.sparsity == pytest.approx(3 / 12)
    assert tensors(out)["w16"].data_type == TensorProto.FLOAT16


# --------------------------------------------------------------------------------------------
# the prune command
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prune")


@pytest.fixture(scope="module")
def pruned_cli(work) -> dict[Path, tuple[dict, Path, Path]]:
    """``prune MODEL --sparsity 0.3 -o out --mask m --json --eval digits_test.npz`` on both models."""
    out = {}
    for path in (CNN, MLP):
        o, m = work / f"{path.stem}_p30.onnx", work / f"{path.stem}_p30_mask.npz"
        rc, res = run_json("prune", path, "--sparsity", 0.3, "-o", o, "--mask", m, "--eval", DATA)
        assert rc == 0, res
        out[path] = (res, o, m)
    return out


@pytest.mark.parametrize("path,weights", [(CNN, CNN_WEIGHTS), (MLP, MLP_WEIGHTS)])
def test_prune_cli_json_mask_and_eval(pruned_cli, path: Path, weights: list[str]) -> None:
    res, out, mask_file = pruned_cli[path]
    for key in ("model", "written", "criterion", "scope", "sparsity", "pruned", "weights", "tensors", "skipped",
                "metric", "accuracy_before", "accuracy_after"):
        assert key in res, key
    assert res["criterion"] == "path-magnitude" and res["scope"] == "global"
    n = res["weights"]
    assert res["pruned"] == round(0.3 * n)
    assert res["sparsity"] == pytest.approx(0.3, abs=1 / n)
    assert sorted(res["tensors"]) == weights and res["skipped"] == {}
    metric = res["metric"]
    assert metric["exact"] is True and metric["sign_consistent"] is True
    assert metric["upper"] * (1 - 1e-4) <= metric["lower"] <= metric["upper"]  # exact: d's certified interval
    assert metric["estimate"] == pytest.approx(metric["norm_a"] - metric["norm_b"], rel=1e-6)
    assert metric["bound"] == pytest.approx(metric["upper"])  # --input-linf 1
    assert metric["norm_a"] == pytest.approx(pl.path_norm(str(path)).value, rel=1e-6)
    assert metric["norm_b"] == pytest.approx(pl.path_norm(str(out)).value, rel=1e-6)
    for key in ("accuracy_before", "accuracy_after"):
        assert 0.0 <= res[key] <= 1.0
    # the accuracies are those of the files, run independently batch-by-1
    assert res["accuracy_before"] == pytest.approx(accuracy(path, OUTPUT[path]), abs=1e-12)
    assert res["accuracy_after"] == pytest.approx(accuracy(out, OUTPUT[path]), abs=1e-12)
    assert res["accuracy_before"] > 0.95  # models.json: 0.9778 (CNN), 0.9694 (MLP)
    # the mask file: one bool array per pruned initializer; the written model is zero exactly there
    with np.load(mask_file) as mf:
        keep = {k: mf[k] for k in mf.files}
    assert sorted(keep) == weights
    src, got = inits(onnx.load(str(path))), inits(onnx.load(str(out)))
    assert sum(int((~m).sum()) for m in keep.values()) == res["pruned"]
    for k, m in keep.items():
        assert m.dtype == bool and m.shape == src[k].shape
        np.testing.assert_array_equal(got[k], np.where(m, src[k], 0))
    # and the mask is the API's
    api = masks(path_magnitude(str(path)).fraction, 0.3)
    for k in weights:
        np.testing.assert_array_equal(keep[k], api[k])


def test_prune_cli_text_output(work) -> None:
    rc, out, err = run_captured("prune", CNN, "--sparsity", 0.2, "-o", work / "t.onnx", "--eval", DATA)
    assert rc == 0, err
    assert "pruned" in out and "accuracy" in out and "path-metric" in out


def test_prune_cli_layers_and_scope(work) -> None:
    o = work / "head_only.onnx"
    rc, res = run_json("prune", CNN, "--sparsity", 0.5, "--layers", r"^head\.", "--scope", "layer", "-o", o)
    assert rc == 0, res
    assert sorted(res["tensors"]) == ["head.0.weight", "head.4.weight"]
    src, got = inits(onnx.load(str(CNN))), inits(onnx.load(str(o)))
    for k in src:
        if k.startswith("head.") and k.endswith("weight"):
            assert int((got[k] == 0).sum()) == round(0.5 * got[k].size), k  # layer scope: half of each
        else:
            np.testing.assert_array_equal(got[k], src[k], err_msg=k)


@pytest.mark.parametrize("criterion", ["path-magnitude", "magnitude"])
def test_prune_cli_input_linf_scales_the_bound(work, criterion: str) -> None:
    rc, res = run_json("prune", MLP, "--sparsity", 0.4, "--criterion", criterion, "--input-linf", 2.5, "-o",
                       work / f"linf_{criterion}.onnx")
    assert rc == 0 and res["criterion"] == criterion
    assert res["metric"]["bound"] == pytest.approx(2.5 * res["metric"]["upper"], rel=1e-9)
    assert res["metric"]["exact"] is True


@pytest.mark.parametrize("args", [
    ["--layers", "conv("],  # not a regular expression
    ["--layers", "^nothing_matches$"],
    ["--sparsity", "1.5"],
    ["--sparsity", "-0.2"],
])
def test_prune_cli_usage_errors_exit_2(work, args) -> None:
    argv = ["prune", CNN, "-o", work / "never.onnx", *args]
    if "--sparsity" not in args:
        argv += ["--sparsity", "0.3"]
    rc, out, err = run_captured(*argv)
    assert rc == 2, (out, err)
    assert "error" in err and "Traceback" not in err
    rc, res = run_json(*argv)
    assert rc == 2 and res["exit_code"] == 2 and res["error"] == "UsageError"
    assert not (work / "never.onnx").exists()


# --------------------------------------------------------------------------------------------
# the certificate of a pruned model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CNN, MLP])
def test_pruned_model_never_exceeds_the_certified_bound(pruned_cli, path: Path) -> None:
    res, out, _ = pruned_cli[path]
    rc, cmp = run_json("compare", path, out, "--check", 200)
    assert rc == 0, cmp
    assert cmp["exact"] is True and cmp["sign_consistent"] is True
    assert cmp["upper"] == pytest.approx(res["metric"]["upper"], rel=1e-9)
    check = cmp["check"]
    assert check["samples"] == 200 and check["violated"] is False
    assert 0.0 < check["max_observed"] <= check["bound"]
    assert check["bound"] == pytest.approx(cmp["bound"], rel=1e-9)
    # and through the API with inputs in a larger box: the bound scales with max(r, 1)
    from onnx_pathlift.analyses.check import check_bound
    from onnx_pathlift.analyses.metric import path_metric
    from onnx_pathlift.fileio.load import load_model
    from onnx_pathlift.frontend.importer import import_prepared
    from onnx_pathlift.frontend.prepare import prepare

    a_model, b_model = load_model(str(path)), load_model(str(out))
    pa, pb = prepare(a_model, None), prepare(b_model, None)
    da, db = import_prepared(pa, None), import_prepared(pb, None)
    metric = path_metric(da, db)
    rep = check_bound(a_model, b_model, da, db, metric, 3.0, 100, pa.elem_types, pb.elem_types, seed=1)
    assert not rep.violated and rep.max_observed <= rep.bound
    assert rep.bound == pytest.approx(3.0 * 10 ** metric.upper_log10, rel=1e-9)


# --------------------------------------------------------------------------------------------
# rescaling: the rescale command, invariance of path-magnitude masks, the paper's finding
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rescaled(work) -> tuple[dict, Path]:
    o = work / "cnn_rescaled.onnx"
    rc, res = run_json("rescale", CNN, "--seed", 1, "--range", 0.001, 1000, "-o", o)
    assert rc == 0, res
    return res, o


def test_rescale_cli_keeps_the_function(rescaled) -> None:
    res, o = rescaled
    assert set(res) == {"written", "neurons", "layers", "shared", "note", "max_rel_output_change"}
    assert res["shared"] == 0 and res["note"] is None
    assert res["written"] == str(o)
    assert 0.0 <= res["max_rel_output_change"] <= 1e-4
    # block.conv1 (8 channels, through bn1 and relu into conv2) and head.0 (16, through relu, the global
    # pool and the flatten into head.4); the stem feeds a skip and conv2 an Add: left alone
    assert (res["neurons"], res["layers"]) == (24, 2)
    src, got = inits(onnx.load(str(CNN))), inits(onnx.load(str(o)))
    assert sorted(src) == sorted(got)
    changed = sorted(k for k in src if not np.array_equal(src[k], got[k]))
    assert changed == ["block.bn1.bias", "block.bn1.running_mean", "block.conv1.weight", "block.conv2.weight",
                       "head.0.bias", "head.0.weight", "head.4.weight"]
    assert all(got[k].dtype == src[k].dtype and got[k].shape == src[k].shape for k in src)
    ratio = max(float(np.abs(got[k]).max() / np.abs(src[k]).max()) for k in CNN_WEIGHTS)
    assert ratio > 10  # weights really moved
    data = np.load(DATA)["x"][:50].reshape(50, 1, 8, 8).astype(np.float32)
    s0, s1 = session(CNN), session(o)
    for x in data[:, None]:
        y0, y1 = s0.run(None, {"input": x})[0], s1.run(None, {"input": x})[0]
        np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * float(np.abs(y0).max()))
    assert accuracy(o, "logits") == accuracy(CNN, "logits")
    # the path-norm is invariant too
    assert pl.path_norm(str(o)).log10 == pytest.approx(pl.path_norm(str(CNN)).log10, rel=1e-6)


def test_rescale_cli_text_and_bad_range(work) -> None:
    rc, out, err = run_captured("rescale", MLP, "-o", work / "mlp_r.onnx")
    assert rc == 0, err
    assert "rescaled" in out and "neurons" in out
    rc, out, err = run_captured("rescale", MLP, "--range", 0, 1, "-o", work / "bad.onnx")
    assert rc == 2
    rc, out, err = run_captured("rescale", MLP, "--range", 8, 1, "-o", work / "bad.onnx")
    assert rc == 2
    assert not (work / "bad.onnx").exists()


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_path_magnitude_masks_are_rescaling_invariant(work, rescaled, sparsity: float) -> None:
    _, o = rescaled
    got = {}
    for criterion in ("path-magnitude", "magnitude"):
        for tag, src in (("orig", CNN), ("resc", o)):
            m = work / f"mask_{criterion}_{tag}_{sparsity}.npz"
            rc, res = run_json("prune", src, "--sparsity", sparsity, "--criterion", criterion, "-o",
                               work / f"p_{criterion}_{tag}_{sparsity}.onnx", "--mask", m)
            assert rc == 0, res
            with np.load(m) as f:
                got[criterion, tag] = {k: f[k] for k in f.files}
    a, b = got["path-magnitude", "orig"], got["path-magnitude", "resc"]
    assert sorted(a) == sorted(b) == CNN_WEIGHTS
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    a, b = got["magnitude", "orig"], got["magnitude", "resc"]
    assert sorted(a) == sorted(b)
    assert sum(int((a[k] != b[k]).sum()) for k in a) > 0


def test_the_papers_finding_in_miniature(work, rescaled) -> None:
    """50% global pruning of digits_cnn_torch_bn: path-magnitude gives the same accuracy on the model and
    on its rescaled copy; magnitude pruning of the rescaled copy is worse than of the original."""
    _, o = rescaled
    acc = {}
    for criterion in ("path-magnitude", "magnitude"):
        for tag, src in (("orig", CNN), ("resc", o)):
            rc, res = run_json("prune", src, "--sparsity", 0.5, "--criterion", criterion, "-o",
                               work / f"paper_{criterion}_{tag}.onnx", "--eval", DATA)
            assert rc == 0, res
            assert res["accuracy_before"] == pytest.approx(0.977778, abs=1e-6)
            acc[criterion, tag] = res["accuracy_after"]
    assert acc["path-magnitude", "resc"] == acc["path-magnitude", "orig"]
    assert acc["magnitude", "resc"] < acc["magnitude", "orig"]


# --------------------------------------------------------------------------------------------
# a QDQ model: its weights are DequantizeLinear outputs, not initializers
# --------------------------------------------------------------------------------------------


def test_qdq_weights_are_skipped(work) -> None:
    o = work / "qdq_pruned.onnx"
    rc, res = run_json("prune", QDQ, "--sparsity", 0.3, "-o", o)
    assert rc == 0, res
    assert res["tensors"] == [] and res["pruned"] == 0 and res["weights"] == 0
    assert len(res["skipped"]) == 5
    assert all("DequantizeLinear" in k or "not an initializer" in v for k, v in res["skipped"].items())
    assert res["metric"]["upper"] == 0.0
    assert onnx.load(str(o)).SerializeToString() == onnx.load(str(QDQ)).SerializeToString()
    # the API: the same
    model = onnx.load(str(QDQ))
    keep = masks(path_magnitude(model).fraction, 0.3)
    out, report = apply(model, keep)
    assert report.tensors == [] and sorted(report.skipped) == sorted(keep)
    assert out.SerializeToString() == model.SerializeToString()
    rc, out_text, _ = run_captured("prune", QDQ, "--sparsity", 0.3, "-o", o)
    assert rc == 0 and "skipped" in out_text


# --------------------------------------------------------------------------------------------
# a model with no Conv / Gemm / MatMul weight
# --------------------------------------------------------------------------------------------


def test_no_scored_weights_is_not_an_internal_error(work) -> None:
    from builders import make_model
    from onnx import helper

    assert masks({}, 0.3, "layer") == {}
    try:
        assert masks({}, 0.3) == {}
    except UsageError:
        pass
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"])],
                       [("x", [1, 4])], [("y", [1, 4])], {"b": np.ones(4, np.float32)})
    src = work / "no_weights.onnx"
    onnx.save(model, str(src))
    rc, _, err = run_captured("prune", src, "--sparsity", 0.3, "-o", work / "no_weights_p.onnx")
    assert rc in (0, 2) and "internal error" not in err, err
