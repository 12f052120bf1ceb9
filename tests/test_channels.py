"""Structured (channel) pruning: groups, path-mass scores against brute force, rescaling invariance,
the masked model's exact certificate and the slim model's faithfulness (``prune --structure channel``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import oracle
import pytest
import tiny_nets
from builders import inits, ints, make_model, replace_inits
from checks import analyse, group_of, run, slim_error
from conftest import ROOT, run_main
from onnx import helper, numpy_helper

from onnx_pathlift.analyses.metric import path_metric
from onnx_pathlift.analyses.rescale import rescale
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.pruning.channels import group_scores
from onnx_pathlift.pruning.ranking import choose, prune_channels
from onnx_pathlift.pruning.slim import masked_model, slim_model

SHIPPED = sorted((ROOT / "models").glob("*.onnx"))


# --- scores against brute force -------------------------------------------------------------------

@pytest.mark.parametrize("net", ["mlp", "conv_bn_pool", "residual_concat", "everything"])
def test_path_mass_of_one_group_is_the_brute_force_drop(net: str) -> None:
    """mass(g) = ‖Φ(θ)‖_1 − ‖Φ(θ with g's outgoing weights zeroed)‖_1 by path enumeration, exactly when
    no path crosses the group twice; a residual group (read by a conv, then written back by it: Conv2
    of residual_concat, the grouped Conv2 of everything) is crossed twice by some paths and its mass
    then exceeds the drop (first-order sum)."""
    model, _ = getattr(tiny_nets, net)(3)
    p, dag, cg = analyse(model)
    norm = oracle.brute_force_path_norm(model, 1.0)
    mass = group_scores(cg, p, "path-mass", dag) * norm
    live = cg.removable()
    assert len(live) >= 3
    recrossed = {group_of(cg, "a", c) for c in range(3)} if net == "residual_concat" else set()
    if net == "everything":
        recrossed = {group_of(cg, "m", c) for c in range(4)}
    for i in live:
        drop = norm - oracle.brute_force_path_norm(masked_model(model, cg, [i]), 1.0)
        assert drop > 0
        if i in recrossed:
            assert mass[i] > drop * (1 + 1e-6)
        else:
            assert mass[i] == pytest.approx(drop, rel=1e-6, abs=1e-9 * norm)


def _mobile_net(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] → Conv 1x1 (6) → BN → Clip(0,6) → depthwise 3x3 (bias) → Clip(0,6) → Conv 1x1 (4)
    → Add(skip from a 1x1 Conv of x) → Relu → GlobalAveragePool → Flatten → Gemm (3)."""
    rng = np.random.default_rng(seed)
    p = {"W1": rng.normal(0, 0.5, (6, 3, 1, 1)), "s": rng.uniform(0.5, 1.5, 6), "b": rng.normal(0, 0.3, 6),
         "m": rng.normal(0, 0.3, 6), "v": rng.uniform(0.5, 1.5, 6), "Wd": rng.normal(0, 0.5, (6, 1, 3, 3)),
         "bd": rng.normal(0, 0.3, 6), "W2": rng.normal(0, 0.5, (4, 6, 1, 1)), "Ws": rng.normal(0, 0.5, (4, 3, 1, 1)),
         "Wf": rng.normal(0, 0.5, (3, 4)), "bf": rng.normal(0, 0.3, 3), "lo": np.array(0.0), "hi": np.array(6.0)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"]),
             helper.make_node("Clip", ["n1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "Wd", "bd"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=6),
             helper.make_node("Clip", ["d", "lo", "hi"], ["r2"]),
             helper.make_node("Conv", ["r2", "W2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["x", "Ws"], ["cs"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c2", "cs"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 3])], p, name="mobile")


def test_path_mass_equals_the_exact_path_metric_on_a_depthwise_net() -> None:
    """On a larger net (too many paths to enumerate by hand), every group's mass equals the exact
    path-metric d(θ, θ with the group removed) = ‖Φ(θ)‖_1 − ‖Φ(θ')‖_1 (two-stream pass)."""
    model = _mobile_net()
    p, dag, cg = analyse(model)
    scores = group_scores(cg, p, "path-mass", dag)
    norm = 10 ** path_metric(dag, dag).norm_a_log10
    live = cg.removable()
    assert len(live) == 6 + 4  # the expanded channels (through the depthwise conv) and the skip sum's
    for i in live:
        d = path_metric(dag, import_prepared(prepare(masked_model(model, cg, [i])), None))
        assert d.exact
        assert scores[i] * norm == pytest.approx(d.upper, rel=1e-4)


# --- groups --------------------------------------------------------------------------------------

def test_residual_concat_flatten_groups() -> None:
    model, _ = tiny_nets.residual_concat(0)
    _, _, cg = analyse(model)
    for c in range(3):  # a[c], the residual branch's r2[c], the sum s[c] and concat slot c are one group
        g = group_of(cg, "a", c)
        assert {group_of(cg, t, c) for t in ("c1", "r2", "s", "cat", "gap", "f")} == {g}
        assert sorted(e[0] for e in cg.groups[g].sinks) == ["W2", "W3", "Wf"]
    for c in range(2):  # Conv3's channels land at offset 3 of the concat
        assert group_of(cg, "c3", c) == group_of(cg, "cat", 3 + c)
        assert cg.groups[group_of(cg, "c3", c)].sinks == [("Wf", 1, 3 + c, 4 + c)]
    assert cg.groups[group_of(cg, "y", 0)].pinned.startswith("channel of the graph output")
    assert cg.groups[group_of(cg, "x", 0)].pinned.startswith("channel of the graph input")


def test_flatten_block_and_depthwise_and_grouped_conv() -> None:
    model, _ = tiny_nets.conv_bn_pool(0)
    _, _, cg = analyse(model)
    g = cg.groups[group_of(cg, "c1", 2)]
    assert g.sinks == [("Wf", 1, 8, 12)]  # channel 2 of a 2x2 map: four Gemm columns
    assert sorted(e[0] for e in g.slices) == ["b1", "bn_beta", "bn_gamma", "bn_mean", "bn_var"]
    model = tiny_nets.everything(0)[0]
    p, dag, cg = analyse(model)  # group=2, 2 channels per group: channel k of both groups go together
    for k in range(2):
        g = cg.groups[group_of(cg, "c2", k)]
        assert group_of(cg, "c2", k + 2) == group_of(cg, "m", k) == group_of(cg, "m", k + 2) == group_of(cg, "c2", k)
        assert not g.pinned and ("W2", 1, k, k + 1) in g.sinks and ("W2", 0, k + 2, k + 3) in g.sources
    result = prune_channels(model, p, dag, 0.5, "path-mass", "layer")
    conv = next(n for n in result.slim.graph.node if list(n.input[1:2]) == ["W2"])
    assert next(a.i for a in conv.attribute if a.name == "group") == 2
    assert numpy_helper.to_array(next(t for t in result.slim.graph.initializer if t.name == "W2")).shape == (2, 1, 3, 3)
    assert slim_error(result.masked, result.slim, p) <= 1e-5
    _, _, cg = analyse(_mobile_net())
    g = cg.groups[group_of(cg, "r1", 4)]
    assert group_of(cg, "d", 4) == group_of(cg, "r1", 4) and not g.pinned
    assert ("Wd", 0, 4, 5) in g.sources and ("W1", 0, 4, 5) in g.sources and g.sinks == [("W2", 1, 4, 5)]


def test_shared_parameter_pins_its_group() -> None:
    model, _ = tiny_nets.mlp(0)
    model.graph.node.append(helper.make_node("Identity", ["C1"], ["c1_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("c1_copy", onnx.TensorProto.FLOAT, [8]))
    _, _, cg = analyse(model)
    assert all("shared or computed" in cg.groups[group_of(cg, "g1", c)].pinned for c in range(8))


def test_choose_keeps_one_group_per_layer_and_counts() -> None:
    model, _ = tiny_nets.residual_concat(0)
    p, dag, cg = analyse(model)
    scores = group_scores(cg, p, "path-mass", dag)
    live = cg.removable()
    assert choose(cg, scores, 0.0) == []
    assert len(choose(cg, scores, 0.5)) == round(0.5 * len(live))
    everything = choose(cg, scores, 1.0, "layer")
    layers = {cg.groups[i].layer for i in live}
    assert len(everything) == len(live) - len(layers)


# --- rescaling invariance ------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["mlp", "conv_bn_pool", "residual_concat"])
def test_path_mass_chooses_the_same_channels_after_rescaling(net: str) -> None:
    model, rescale_fn = getattr(tiny_nets, net)(1)
    other = rescale_fn(model, np.random.default_rng(5))
    (p, dag, cg), (p2, dag2, cg2) = analyse(model), analyse(other)
    s, s2 = group_scores(cg, p, "path-mass", dag), group_scores(cg2, p2, "path-mass", dag2)
    np.testing.assert_allclose(s2, s, rtol=1e-4)
    for sparsity in (0.25, 0.5):
        assert choose(cg, s, sparsity) == choose(cg2, s2, sparsity)


def test_l1_norm_is_not_rescaling_invariant_but_path_mass_is() -> None:
    """onnx_pathlift.analyses.rescale on the shipped CNN: path-mass keeps its choice, l1-norm changes it."""
    model = load_model(ROOT / "models/digits_cnn_torch_bn.onnx")
    p, dag, cg = analyse(model)
    other, report = rescale(model, dag, seed=0, low=1 / 64, high=64.0)
    assert report.neurons > 0
    p2, dag2, cg2 = analyse(other)
    for criterion, same in (("path-mass", True), ("l1-norm", False)):
        a = choose(cg, group_scores(cg, p, criterion, dag), 0.5, "layer")
        b = choose(cg2, group_scores(cg2, p2, criterion, dag2), 0.5, "layer")
        assert (a == b) is same


# --- masked and slim models ----------------------------------------------------------------------

def test_masked_changes_only_sink_columns_and_slim_only_group_constants() -> None:
    model, _ = tiny_nets.conv_bn_pool(0)
    p, dag, cg = analyse(model)
    removed = [group_of(cg, "c1", 1)]
    masked, slim = masked_model(model, cg, removed), slim_model(model, cg, removed)
    before = inits(model)
    after = inits(masked)
    assert [n for n in before if not np.array_equal(before[n], after[n])] == ["Wf"]
    assert not after["Wf"][:, 4:8].any() and np.array_equal(after["Wf"][:, :4], before["Wf"][:, :4])
    cut = inits(slim)
    assert cut["W1"].shape == (3, 2, 3, 3) and cut["Wf"].shape == (3, 12) and cut["bn_var"].shape == (3,)
    assert np.array_equal(cut["bf"], before["bf"])
    assert [n.SerializeToString() for n in slim.graph.node] == [n.SerializeToString() for n in model.graph.node]
    onnx.checker.check_model(slim, full_check=True)
    assert slim_error(masked, slim, p) <= 1e-5


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_slim_reproduces_masked_on_shipped_models(path: Path) -> None:
    model = load_model(path)
    p, dag, _ = analyse(model)
    result = prune_channels(model, p, dag, 0.5, "path-mass", "layer")
    if "int8" in path.name:  # weights behind DequantizeLinear are not initializers: nothing removable
        assert not result.removed
    else:
        assert result.removed
    assert slim_error(result.masked, result.slim, p) <= 1e-5


# --- the certificate and the command line --------------------------------------------------------

def test_compare_original_masked_is_exact_and_its_bound_holds(tmp_path, capsys) -> None:
    model, _ = tiny_nets.residual_concat(2)
    src = tmp_path / "net.onnx"
    onnx.save(model, src)
    rc, out, _ = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.5", "--round-to", "1",
                          "-o", tmp_path / "slim.onnx", "--masked", tmp_path / "masked.onnx", "--json")
    assert rc == 0
    report = json.loads(out)
    rc, out, _ = run_main(capsys, "compare", src, tmp_path / "masked.onnx", "--check", "300", "--input-linf", "2", "--json")
    assert rc == 0
    cmp = json.loads(out)
    assert cmp["exact"] and cmp["sign_consistent"] and 0 < cmp["check"]["max_observed"] <= cmp["bound"]
    assert cmp["upper"] == pytest.approx(report["metric"]["upper"], rel=1e-9)
    # the bound against our own sampling of the original and the slim model, in the box ‖x‖_∞ ≤ 2
    rng = np.random.default_rng(7)
    slim = onnx.load(tmp_path / "slim.onnx")
    worst = max(float(np.abs(run(model, f)[0] - run(slim, f)[0]).sum())
                for f in ({"x": rng.choice([-2.0, 2.0], (1, 2, 5, 5)).astype(np.float32)} for _ in range(200)))
    assert 0 < worst <= cmp["bound"] * (1 + 1e-5)


def test_prune_channel_cli_report(tmp_path, capsys) -> None:
    src = ROOT / "models/digits_cnn_torch_bn.onnx"
    rc, out, err = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.25", "--scope", "layer",
                            "-o", tmp_path / "slim.onnx", "--eval", ROOT / "models/digits_test.npz", "--repeats", "3",
                            "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["params_after"] < r["params_before"] and r["macs_after"] < r["macs_before"]
    stats = {i for n in load_model(src).graph.node if n.op_type == "BatchNormalization" for i in n.input[3:]}
    assert r["params_before"] == sum(numpy_helper.to_array(t).size for t in load_model(src).graph.initializer
                                     if t.data_type == onnx.TensorProto.FLOAT and t.name not in stats)  # docs/pruning.md
    assert r["metric"]["exact"] and r["metric"]["bound"] > 0
    assert r["latency_before_s"] > 0 and r["latency_after_s"] > 0 and 0 <= r["accuracy_after"] <= 1
    assert r["slim_vs_masked_max_rel_error"] <= 1e-5
    conv = next(x for x in r["layers"] if x["node"] == "/head/head.0/Conv")
    assert conv["params_after"] < conv["params_before"] and conv["macs_after"] < conv["macs_before"]
    assert any("graph output" in x["reason"] for x in r["pinned"])
    rc, out, _ = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.25", "-o",
                          tmp_path / "slim2.onnx", "--repeats", "2")
    assert rc == 0 and "exact path-metric" in out and "latency" in out and "kept" in out


@pytest.mark.parametrize("args", [
    ["--structure", "channel", "--criterion", "magnitude"],
    ["--structure", "weight", "--criterion", "l1-norm"],
    ["--structure", "weight", "--masked", "m.onnx"],
    ["--structure", "channel", "--mask", "m.npz"],
    ["--structure", "channel", "--repeats", "0"],
    ["--structure", "channel", "--sparsity", "1.5"],
])
def test_prune_channel_usage_errors(tmp_path, capsys, args) -> None:
    argv = ["prune", ROOT / "models/digits_mlp_sklearn.onnx", "--sparsity", "0.5", "-o", tmp_path / "o.onnx", *args,
            "--json"]
    rc, out, _ = run_main(capsys, *argv)
    assert rc == 2 and json.loads(out)["exit_code"] == 2
    assert not (tmp_path / "o.onnx").exists()


def test_prune_channel_bad_model_exit_4(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    rc, _, err = run_main(capsys, "prune", bad, "--structure", "channel", "--sparsity", "0.5", "-o", tmp_path / "o.onnx")
    assert rc == 4 and "error" in err and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("net", ["conv_bn_pool", "residual_concat"])
def test_masked_certificate_is_sound_and_tight(net: str) -> None:
    """Removing channels keeps every sign and shrinks |θ|: d = ‖Φ‖_1 − ‖Φ'‖_1 exactly, certified
    by the path-metric's outward-rounded interval (it once gave d = 0 on DenseNet-121 depths)."""
    model, _ = getattr(tiny_nets, net)(4)
    p, dag, cg = analyse(model)
    masked = import_prepared(prepare(masked_model(model, cg, cg.removable()[:2])), None)
    m = path_metric(dag, masked)
    d = oracle.brute_force_path_norm(model, 1.0) - oracle.brute_force_path_norm(masked_model(model, cg, cg.removable()[:2]), 1.0)
    assert m.exact and d > 0
    assert d * (1 - 1e-9) <= m.upper <= d * (1 + 1e-4) and m.lower <= d * (1 + 1e-9)


def test_l1_norm_sums_the_incoming_weights() -> None:
    model, _ = tiny_nets.mlp(0)
    p, dag, cg = analyse(model)
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "B1"))
    scores = group_scores(cg, p, "l1-norm", dag)
    for c in range(8):
        assert scores[group_of(cg, "g1", c)] == pytest.approx(float(np.abs(w[c]).sum()), rel=1e-12)


def test_a_removed_constant_channel_never_reaches_the_slim_model() -> None:
    """A channel with zero incoming weights outputs the constant relu(BN(bias)) ≠ 0; removing it
    zeroes its outgoing columns in the masked model (its bias paths are the whole of its path mass),
    and the slim model, without that channel, computes the masked model."""
    model, _ = tiny_nets.conv_bn_pool(0)
    params = inits(model, np.float64)
    params["W1"][1] = 0.0
    params["b1"][1] = 2.0
    model = replace_inits(model, params)
    p, dag, cg = analyse(model)
    g = group_of(cg, "c1", 1)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)}
    masked, slim = masked_model(model, cg, [g]), slim_model(model, cg, [g])
    shift = run(model, feeds)[0] - run(masked, feeds)[0]
    assert np.abs(shift).max() > 1e-3  # the constant did reach the original's outputs
    assert slim_error(masked, slim, p) <= 1e-5
    norm = oracle.brute_force_path_norm(model, 1.0)
    drop = norm - oracle.brute_force_path_norm(masked, 1.0)
    assert group_scores(cg, p, "path-mass", dag)[g] * norm == pytest.approx(drop, rel=1e-6)


def test_slim_check_compares_the_analysed_output_behind_a_class_head(zoo) -> None:
    """A model whose outputs are a label and a ZipMap (no float tensor): the check compares the
    analysed logits, inside the graph (it used to compare nothing and crash on the ZipMap)."""
    model = load_model(zoo / "generated/skl_mlp_digits_zipmap.onnx")
    p, dag, _ = analyse(model)
    result = prune_channels(model, p, dag, 0.5, "path-mass", "layer")
    assert result.removed and not any(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                                      for o in model.graph.output)
    broken = slim_model(model, result.graph, result.removed)
    w = next(t for t in broken.graph.initializer if numpy_helper.to_array(t).ndim == 2)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
    from onnx_pathlift.errors import VerificationError
    from onnx_pathlift.pruning.slim import check_slim

    with pytest.raises(VerificationError):
        check_slim(result.masked, broken, p, list(dag.outputs))


@pytest.mark.parametrize("form", ["initializer", "constant", "value_ints", "minus_one"])
def test_flatten_reshape_target_is_updated(form: str) -> None:
    """A Reshape (N, C, H, W) → (N, C·H·W) before the Gemm: its target shape is sliced with the
    channels (an initializer or a Constant tensor); one written as value_ints cannot be rewritten, so
    its channels are kept; -1 needs no change."""
    model, _ = tiny_nets.conv_bn_pool(0)
    target = [1, -1] if form == "minus_one" else [1, 16]
    flat = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Flatten")
    del model.graph.node[flat]
    reshape = [helper.make_node("Reshape", ["a1", "target"], ["f1"])]
    if form == "constant":
        reshape.insert(0, helper.make_node("Constant", [], ["target"], value=numpy_helper.from_array(np.array(target))))
    elif form == "value_ints":
        reshape.insert(0, helper.make_node("Constant", [], ["target"], value_ints=target))
    else:
        model.graph.initializer.append(numpy_helper.from_array(np.array(target), "target"))
    for k, node in enumerate(reshape):
        model.graph.node.insert(flat + k, node)
    p, dag, cg = analyse(model)
    g = group_of(cg, "c1", 1)
    if form == "value_ints":
        assert "shared or computed" in cg.groups[g].pinned
        return
    slim = slim_model(model, cg, [g])
    if form != "minus_one":
        assert list(cg.reshapes) == ["target"]
    assert slim_error(masked_model(model, cg, [g]), slim, p) <= 1e-5


def _split_slice_net(opset: int, seed: int = 0) -> onnx.ModelProto:
    """x[1,2,6,6] → Conv (8) → Relu = r; Split(r, [3, 5]) → Conv a, Conv b (1x1, 4 each) → Add → Relu;
    Slice(r, channels 2..6) → Conv c (1x1, 4); Concat → Slice(H, W: 1..4) → GlobalAveragePool →
    Flatten → Gemm (3)."""
    rng = np.random.default_rng(seed)
    p = {"W": rng.normal(0, 0.5, (8, 2, 3, 3)), "B": rng.normal(0.2, 0.3, 8), "Wa": rng.normal(0, 0.5, (4, 3, 1, 1)),
         "Wb": rng.normal(0, 0.5, (4, 5, 1, 1)), "Wc": rng.normal(0, 0.5, (4, 5, 1, 1)), "Bc": rng.normal(0, 0.3, 4),
         "Wf": rng.normal(0, 0.5, (3, 8)), "Bf": rng.normal(0, 0.3, 3)}
    p.update(c0=ints(2), c1=ints(7), ax=ints(1), h0=ints(1, 1), h1=ints(5, 5), hax=ints(2, 3))
    if opset >= 13:
        p["sizes"] = ints(3, 5)
        split = helper.make_node("Split", ["r", "sizes"], ["s1", "s2"], axis=1)
    else:
        split = helper.make_node("Split", ["r"], ["s1", "s2"], axis=1, split=[3, 5])
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), split,
             helper.make_node("Conv", ["s1", "Wa"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["s2", "Wb"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["a", "b"], ["t0"]), helper.make_node("Relu", ["t0"], ["t"]),
             helper.make_node("Slice", ["r", "c0", "c1", "ax"], ["u"]),
             helper.make_node("Conv", ["u", "Wc", "Bc"], ["v"], kernel_shape=[1, 1]),
             helper.make_node("Concat", ["t", "v"], ["cat"], axis=1),
             helper.make_node("Slice", ["cat", "h0", "h1", "hax"], ["crop"]),
             helper.make_node("GlobalAveragePool", ["crop"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1)]
    return make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 3])], p, opset=opset, name="split_slice")


@pytest.mark.parametrize("opset", [11, 17])
def test_split_and_slice_on_channels(opset: int) -> None:
    """Split sizes and a channel Slice's range follow the removed channels; a spatial Slice is per
    channel; every single group's mass is the brute-force drop and the slim model is the masked one."""
    model = _split_slice_net(opset)
    p, dag, cg = analyse(model)
    assert group_of(cg, "r", 2) == group_of(cg, "s1", 2) == group_of(cg, "u", 0)
    assert group_of(cg, "r", 6) == group_of(cg, "s2", 3) == group_of(cg, "u", 4)
    assert group_of(cg, "cat", 5) == group_of(cg, "crop", 5) == group_of(cg, "v", 1)
    r_groups = {group_of(cg, "r", c) for c in range(8)}
    assert r_groups <= set(cg.removable())
    norm = oracle.brute_force_path_norm(model, 1.0)
    mass = group_scores(cg, p, "path-mass", dag) * norm
    for g in r_groups:
        drop = norm - oracle.brute_force_path_norm(masked_model(model, cg, [g]), 1.0)
        assert mass[g] == pytest.approx(drop, rel=1e-6)
    removed = [group_of(cg, "r", c) for c in (0, 3, 7)] + [group_of(cg, "v", 2)]
    slim = slim_model(model, cg, removed)
    assert slim_error(masked_model(model, cg, removed), slim, p) <= 1e-5
    onnx.checker.check_model(slim, full_check=True)
    values = {t.name: numpy_helper.to_array(t).tolist() for t in slim.graph.initializer}
    assert values["c0"] == [1] and values["c1"] == [5]  # r keeps 0..7 minus {0, 3, 7}: channels 2..6 → 2 of them before
    split = next(n for n in slim.graph.node if n.op_type == "Split")
    sizes = values["sizes"] if opset >= 13 else next(list(a.ints) for a in split.attribute if a.name == "split")
    assert sizes == [2, 3]
