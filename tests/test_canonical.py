"""``compare`` across spellings of one network (issue 14): a model and its BN-fused (by hand, in numpy),
onnxsim-simplified and onnxruntime-optimised copies compare with d = 0 and the certificate 0; the
canonical rewrites are exact (the canonical DAG, re-emitted, reproduces the source model); a genuinely
different architecture is refused, naming the differing layer in each model. Oracles: exact zeros on
dyadic parameters (every fusion is exact in float32 there, in any order), the signed brute-force
path-metric of tests/test_metric.py on random parameters, onnxruntime runs of the source models."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_nets
from builders import dropped, inits, make_model
from conftest import load_tool, run_main
from onnx import helper
from oracle import signed_path_metric, union_dags

from onnx_pathlift import import_model
from onnx_pathlift.analyses.check import check_bound
from onnx_pathlift.analyses.metric import MismatchError, comparable, path_metric
from onnx_pathlift.backend.emit import emit_model
from onnx_pathlift.backend.verify import verify
from onnx_pathlift.rewrite.canonical import canonical_form
from onnx_pathlift.rewrite.transforms import with_params_of


def _dyadic(rng: np.random.Generator, shape, step: float = 1 / 16) -> np.ndarray:
    return (rng.integers(-16, 17, size=shape) * step).astype(np.float32)


def conv_bn_net(seed: int = 0, dyadic: bool = True) -> onnx.ModelProto:
    """x[1,2,6,6] → Conv(3x3, bias) → BatchNormalization → Relu → MaxPool → Flatten → Reshape → Transpose
    (identity) → Reshape → Gemm → y[1,3]. With ``dyadic``, every BN scale γ/√(var+ε) is ±2^k and the biases are multiples of
    1/16: fusing the BN into the conv is exact in float32, whoever computes it."""
    rng = np.random.default_rng(seed)
    c = 4
    if dyadic:
        gamma = (rng.choice([-1.0, 1.0], c) * 2.0 ** rng.integers(-2, 3, c)).astype(np.float32)
        var, eps = (4.0 ** rng.integers(-1, 2, c)).astype(np.float32), 0.0
        beta, mean, b0 = _dyadic(rng, c), _dyadic(rng, c), _dyadic(rng, c)
    else:
        gamma, beta, mean = (rng.normal(size=c).astype(np.float32) for _ in range(3))
        var, eps, b0 = rng.uniform(0.5, 2, c).astype(np.float32), 1e-5, rng.normal(size=c).astype(np.float32)
    params = {"W0": rng.normal(size=(c, 2, 3, 3)).astype(np.float32), "B0": b0, "g": gamma, "be": beta, "mu": mean,
              "var": var, "shape": np.array([1, 2, -1], np.int64), "shape2": np.array([1, -1], np.int64),
              "W1": rng.normal(size=(3, c * 4)).astype(np.float32), "B1": rng.normal(size=3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], epsilon=eps, name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[3, 3], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Reshape", ["f", "shape"], ["f1"], name="reshape"),
             helper.make_node("Transpose", ["f1"], ["t"], perm=[0, 1, 2], name="transpose"),
             helper.make_node("Reshape", ["t", "shape2"], ["f2"], name="reshape2"),
             helper.make_node("Gemm", ["f2", "W1", "B1"], ["y"], transB=1, name="fc")]
    return make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 3])], params, name="conv_bn")


def fused_by_hand(model: onnx.ModelProto) -> onnx.ModelProto:
    """The BatchNormalization folded into the conv in numpy (float64, rounded once to float32); the
    Flatten → Reshape → Transpose → Reshape chain written as one Reshape."""
    p = inits(model, np.float64)
    eps = next(a.f for n in model.graph.node if n.op_type == "BatchNormalization" for a in n.attribute if a.name == "epsilon")
    s = p["g"] / np.sqrt(p["var"] + eps)
    w = (p["W0"] * s[:, None, None, None]).astype(np.float32)
    b = ((p["B0"] - p["mu"]) * s + p["be"]).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "Wf", "Bf"], ["c"], pads=[1, 1, 1, 1], name="conv_fused"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[3, 3], name="pool"),
             helper.make_node("Reshape", ["p", "shape"], ["f2"], name="reshape"),
             helper.make_node("Gemm", ["f2", "W1", "B1"], ["y"], transB=1, name="fc")]
    fused = {"Wf": w, "Bf": b, "shape": p["shape2"].astype(np.int64), "W1": p["W1"].astype(np.float32),
             "B1": p["B1"].astype(np.float32)}
    return make_model(nodes, model.graph.input, model.graph.output, fused, name="fused")


def ort_optimised(model: onnx.ModelProto, level, path) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(path)


def onnxsim_simplified(model: onnx.ModelProto) -> onnx.ModelProto:
    onnxsim = pytest.importorskip("onnxsim", reason="onnxsim is not installed (pip install onnxsim)")
    simplified, ok = onnxsim.simplify(model)
    assert ok
    return simplified


def _copies(model: onnx.ModelProto, tmp_path) -> dict[str, onnx.ModelProto]:
    return {"fused_by_hand": fused_by_hand(model),
            "ort_basic": ort_optimised(model, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, tmp_path / "basic.onnx"),
            "ort_extended": ort_optimised(model, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, tmp_path / "ext.onnx")}


@pytest.mark.parametrize("copy", ["fused_by_hand", "ort_basic", "ort_extended", "onnxsim"])
def test_spellings_of_one_network_compare_with_d_zero(copy: str, tmp_path, capsys) -> None:
    a = conv_bn_net(0, dyadic=True)
    b = onnxsim_simplified(a) if copy == "onnxsim" else _copies(a, tmp_path)[copy]
    assert "BatchNormalization" not in [n.op_type for n in b.graph.node]  # the BN really is folded
    m = path_metric(a, b)
    assert (m.lower, m.upper) == (0.0, 0.0) and m.exact and m.sign_consistent
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(a, pa)
    onnx.save(b, pb)
    rc, out, err = run_main(capsys, "compare", pa, pb, "--json", "--check", "20")
    assert rc == 0, err
    res = json.loads(out)
    assert res["upper"] == 0.0 and res["bound"] == 0.0 and res["check"]["violated"] is False
    assert res["check"]["max_observed"] <= 1e-5
    canon = res["canonicalised"]
    assert any("folded the scale of affine" in line for line in canon["a"]), canon
    rc, out, _ = run_main(capsys, "compare", pa, pb)
    assert rc == 0 and "canonical form" in out and "folded the scale" in out


@pytest.mark.parametrize("seed", [1, 2])
def test_random_bn_fused_copy_has_d_at_rounding_level(seed: int, tmp_path, capsys) -> None:
    """Generic BN parameters: the fused copy's float32 weights differ from the exact fold by one rounding,
    so d is of the order of float32 rounding of ‖Φ‖_1, and the sampled check stays under the certificate."""
    a = conv_bn_net(seed, dyadic=False)
    m = path_metric(a, fused_by_hand(a))
    assert m.sign_consistent and m.upper <= 1e-6 * 10 ** m.norm_a_log10
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(a, pa)
    onnx.save(fused_by_hand(a), pb)
    rc, out, err = run_main(capsys, "compare", pa, pb, "--json", "--check", "20")
    assert rc == 0 and json.loads(out)["check"]["violated"] is False, err


@pytest.mark.parametrize("seed", [1, 2])
def test_canonical_metric_against_the_signed_brute_force_metric(seed: int) -> None:
    """A against its fused copy with 30 % of the fused conv weights pruned: d in the canonical spelling
    equals the signed brute-force path-metric of the two canonical networks (B's parameters placed in A's
    canonical architecture, so that both have one neuron DAG), and is exact (|B| ≤ |A|)."""
    a = conv_bn_net(seed, dyadic=True)
    b = dropped(fused_by_hand(a), np.random.default_rng(seed), 0.3, ["Wf"])
    da, db, pairs, applied_a, _ = comparable(import_model(a), import_model(b))
    assert applied_a
    m = path_metric(da, db)
    d, n = signed_path_metric(*union_dags(emit_model(da), emit_model(with_params_of(da, db, pairs))))
    assert n > 0 and d > 0
    assert m.exact and m.lower <= d * (1 + 1e-9) and m.upper >= d * (1 - 1e-9)  # the certified interval holds d
    assert m.upper == pytest.approx(d, rel=1e-4) and m.lower == pytest.approx(d, rel=1e-4)
    assert path_metric(a, b).upper == pytest.approx(m.upper, rel=1e-12)  # the API canonicalises the same way


@pytest.mark.parametrize("seed", [0, 3])
def test_canonical_rewrites_are_exact(seed: int, tmp_path) -> None:
    """The canonical DAG, re-emitted with real activations, reproduces the source model; canonicalising
    twice changes nothing more."""
    for model in (conv_bn_net(seed, dyadic=False), *_copies(conv_bn_net(seed, dyadic=False), tmp_path).values()):
        dag, applied = canonical_form(import_model(model))
        assert verify(model, dag, trials=3).passed
        again, more = canonical_form(dag)
        assert more == [] and [la.name for la in again.layers()] == [la.name for la in dag.layers()]
    dag, applied = canonical_form(import_model(conv_bn_net(seed)))
    assert sorted(line.split(" '")[0] for line in applied) == ["dropped identity transpose", "folded the scale of affine",
                                                              "merged affine", "merged reshape", "merged reshape"]
    assert [la.op for la in dag.layers()] == ["input", "conv", "affine", "relu", "maxpool", "reshape", "dense", "affine"]


def test_a_different_architecture_is_refused_naming_the_layers(tmp_path, capsys) -> None:
    """A stride-2 pool instead of stride 3 (so the next dense layer differs too): refused, not canonicalised away."""
    a = conv_bn_net(0)
    b = fused_by_hand(a)
    pool = next(n for n in b.graph.node if n.op_type == "MaxPool")
    pool.ClearField("attribute")
    pool.attribute.extend([helper.make_attribute("kernel_shape", [2, 2]), helper.make_attribute("strides", [3, 3])])
    pool.name = "pool_2x2"
    with pytest.raises(MismatchError) as err:
        path_metric(a, b)
    msg = str(err.value)
    assert "'pool'" in msg and "'pool_2x2'" in msg and "kernel" in msg, msg
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(a, pa)
    onnx.save(b, pb)
    rc, out, _ = run_main(capsys, "compare", pa, pb, "--json")
    assert rc == 2 and "pool_2x2" in json.loads(out)["message"]


def test_same_spelling_is_compared_as_spelled() -> None:
    """No rewrite when the two models pair as written (the metric of a model and its pruned copy keeps
    its meaning: the BN stays a layer of its own)."""
    a = import_model(conv_bn_net(0))
    _, _, _, applied_a, applied_b = comparable(a, a)
    assert applied_a == applied_b == []


OPTIMISERS = {
    "onnxsim": lambda m, path: onnxsim_simplified(m),
    "ort_basic": lambda m, path: ort_optimised(m, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, path),
    "ort_extended": lambda m, path: ort_optimised(m, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, path),
}


@pytest.mark.parametrize("optimiser", sorted(OPTIMISERS))
@pytest.mark.parametrize("name", sorted(tiny_nets.ALL_NETS))
def test_tiny_nets_against_their_optimised_copies(name: str, optimiser: str, tmp_path) -> None:
    """Every tiny net against its onnxsim / onnxruntime-optimised copy (BN and input normalisation folded
    into convs, MatMul on rank-4 tensors written as Reshape → Gemm → Reshape, Conv+Relu fused): d is at
    the float32 rounding level of the fused weights, the sampled check stays under the certificate, and
    each canonical DAG reproduces its source model."""
    a, _ = tiny_nets.ALL_NETS[name](0)
    b = OPTIMISERS[optimiser](a, tmp_path / "b.onnx")
    da, db, pairs, _, _ = comparable(import_model(a), import_model(b))
    m = path_metric(da, db)
    assert m.sign_consistent and m.upper <= 1e-6 * 10 ** m.norm_a_log10, (m.upper, 10 ** m.norm_a_log10)
    assert verify(a, da, trials=2).passed and verify(b, db, trials=2).passed
    report = check_bound(a, b, da, db, m, 1.0, 10)
    assert not report.violated and report.max_observed <= 1e-5 * 10 ** m.norm_a_log10


def test_input_side_folds_are_exact_on_grouped_and_transposed_layers() -> None:
    """x → Mul(s, per channel) + t → grouped Conv → Relu → Mul(s') → grouped ConvTranspose → Relu →
    Flatten → Mul(s'') → Gemm: every scale folds into the layer after it (input side), and the canonical
    DAG reproduces the model."""
    rng = np.random.default_rng(4)
    p = {"s0": rng.uniform(0.5, 2, (1, 4, 1, 1)) * rng.choice([-1, 1], (1, 4, 1, 1)), "t0": rng.normal(size=(4, 1, 1)),
         "W0": rng.normal(size=(6, 2, 3, 3)), "s1": rng.uniform(0.5, 2, (6, 1, 1)), "W1": rng.normal(size=(6, 2, 2, 2)),
         "s2": rng.uniform(0.5, 2, 6 * 6 * 6), "W2": rng.normal(size=(6 * 6 * 6, 3))}
    nodes = [helper.make_node("Mul", ["x", "s0"], ["a0"]), helper.make_node("Add", ["a0", "t0"], ["b0"]),
             helper.make_node("Conv", ["b0", "W0"], ["c0"], group=2, pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Mul", ["r0", "s1"], ["a1"]),
             helper.make_node("ConvTranspose", ["a1", "W1"], ["c1"], group=3, strides=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["f"]),
             helper.make_node("Mul", ["f", "s2"], ["a2"]), helper.make_node("MatMul", ["a2", "W2"], ["y"])]
    model = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 3])], p, name="folds")
    dag, applied = canonical_form(import_model(model))
    assert sum("(input side)" in line for line in applied) == 3, applied
    assert [la.op for la in dag.layers()].count("affine") == 1  # the bias t0/s0 before the first conv
    assert verify(model, dag, trials=3).passed


def _pooled(pool: str, spatial: int) -> onnx.ModelProto:
    """x → Conv → Relu → (GlobalAveragePool | ReduceMean over H, W) → Flatten → Gemm."""
    rng = np.random.default_rng(6)
    if pool == "global":
        nodes = [helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap")]
        inits = {}
    else:
        nodes = [helper.make_node("ReduceMean", ["r", "ax"], ["p"], keepdims=1, name="mean")]
        inits = {"ax": np.array([2, 3], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]), *nodes,
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "W2"], ["y"])]
    inits.update(W=rng.normal(size=(3, 2, spatial, spatial)).astype(np.float32), W2=rng.normal(size=(3, 2)).astype(np.float32))
    return make_model(nodes, [("x", [1, 2, 5, 5])], [("y", [1, 2])], inits, opset=18, name="pool")


@pytest.mark.parametrize("spatial", [2, 5])
def test_global_pool_and_reduce_mean_are_one_spelling(spatial: int) -> None:
    """torch's TorchScript exporter writes AdaptiveAvgPool2d(1) as GlobalAveragePool, its dynamo exporter as
    ReduceMean; over a 1x1 map (kernel 5) the pooling is an identity, which onnxsim removes."""
    a, b = _pooled("global", spatial), _pooled("mean", spatial)
    m = path_metric(a, b)
    assert (m.upper, m.lower) == (0.0, 0.0)
    if spatial == 5:
        dropped = _pooled("global", 5)
        del dropped.graph.node[2]
        dropped.graph.node[2].input[0] = "r"
        assert path_metric(b, dropped).upper == 0.0
    for model in (a, b):
        dag, _ = canonical_form(import_model(model))
        assert verify(model, dag, trials=2).passed


def test_both_torch_exporters_write_one_network(tmp_path) -> None:
    """Each torch architecture of the exporter corpus, exported by TorchScript and by dynamo: d at the
    float32 rounding level (the exporters fold BatchNorm differently), and the check under the certificate."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    for name, module, shape in load_tool("exporter_corpus")._torch_modules():
        module.eval()
        models = []
        for dynamo in (False, True):
            buf = io.BytesIO()
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(module, (torch.randn(*shape),), buf, dynamo=dynamo, input_names=["x"])
            models.append(onnx.load_from_string(buf.getvalue()))
        da, db, _, _, _ = comparable(import_model(models[0]), import_model(models[1]))
        m = path_metric(da, db)
        assert m.sign_consistent and m.upper <= 1e-6 * 10 ** m.norm_a_log10, name
        assert not check_bound(models[0], models[1], da, db, m, 1.0, 6).violated, name


def test_every_rule_says_why_it_does_not_apply():
    """The canonical form is a fixpoint: at every layer each rule gives its reason for not applying; on the
    source DAG the identity transpose is one the identity rule takes, and the BN (an affine layer after the
    conv's bias) one to merge, not to fold into the bias layer before it."""
    from onnx_pathlift.rewrite.canonical import RULES, why_not

    dag = import_model(conv_bn_net())
    assert why_not(dag, "t")["DropIdentity"] is None
    assert why_not(dag, "n")["Compose"] is None
    assert why_not(dag, "n")["FoldScale"] == "affine 'c' cannot take it"
    assert "has no scale" in why_not(dag, "r")["FoldScale"]
    canon, applied = canonical_form(dag)
    assert applied
    for layer in canon.layers():
        reasons = why_not(canon, layer.name)
        assert len(reasons) == len(RULES) and all(isinstance(r, str) and r for r in reasons.values()), (layer.name, reasons)
