"""Channel selection (issue 30): a global ranking that never collapses a layer, width floors,
``--round-to`` multiples, cost targets checked against the slim model's own counts, ``--layers``,
shared and Identity-read parameters copied on write, and the accuracy warning."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import onnx
import pytest
import tiny_nets
from builders import inits, make_model, normal, shared_bias_net
from checks import analyse, run, sample_and_search
from conftest import ROOT, load_tool, run_main
from onnx import helper

from onnx_pathlift.analyses.metric import path_metric
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.frontend.edit import untie
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.pruning.channels import group_scores
from onnx_pathlift.pruning.ranking import MIN_KEEP, Selection, channel_costs, choose, prune_channels
from onnx_pathlift.pruning.slim import float_parameters, kept_channels, layer_costs, masked_model

SHIPPED_CNN = ROOT / "models/digits_cnn_torch_bn.onnx"


def chain(widths: tuple[int, ...] = (4, 8, 96, 8, 3), seed: int = 0) -> onnx.ModelProto:
    """x → (Gemm → Relu)* → Gemm: a dense chain with hidden widths ``widths[1:-1]`` (g1, g2, ...)."""
    rng = np.random.default_rng(seed)
    nodes, params, x = [], {}, "x"
    for k, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
        params[f"W{k}"], params[f"b{k}"] = normal(rng, (a, b), a), rng.normal(0, 0.1, b).astype(np.float32)
        last = k == len(widths) - 1
        nodes.append(helper.make_node("Gemm", [x, f"W{k}", f"b{k}"], ["y" if last else f"h{k}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{k}"], [f"g{k}"]))
            x = f"g{k}"
    return make_model(nodes, [("x", (1, widths[0]))], [("y", (1, widths[-1]))], params)


def one_shot_raw(cg, raw: np.ndarray, sparsity: float) -> list[int]:
    """The old rule (before issue 30): the ``sparsity`` fraction of groups with the lowest RAW score
    over the whole model, a layer keeping one group."""
    live = [i for i in cg.removable() if not math.isnan(raw[i])]
    left, quota, chosen = Counter(cg.groups[i].layer for i in live), round(sparsity * len(live)), []
    for i in sorted(live, key=lambda i: (raw[i], i)):
        if quota and left[cg.groups[i].layer] > 1:
            chosen.append(i)
            left[cg.groups[i].layer] -= 1
            quota -= 1
    return chosen


def test_global_ranking_no_longer_collapses_the_widest_layer() -> None:
    """In a chain each channel's path mass is about ‖Φ‖_1/width: the raw one-shot ranking strips the
    96-wide layer to ONE channel at 90 %; normalised by the layer mean it keeps its floor and every
    layer gives up channels."""
    model = chain()
    p, dag, cg = analyse(model)
    raw = group_scores(cg, p, "path-mass", dag)
    old = kept_channels(cg, one_shot_raw(cg, raw, 0.9))
    assert old["g2"] == 1 and old["g1"] < 8 or old["g3"] < 8  # the failure this fixes
    for sparsity in (0.5, 0.9):
        kept = kept_channels(cg, choose(cg, raw, sparsity))
        for layer, width in (("g1", 8), ("g2", 96), ("g3", 8)):
            assert max(1, math.ceil(MIN_KEEP * width)) <= kept[layer] < width, (sparsity, kept)
    assert kept_channels(cg, choose(cg, raw, 0.9))["g2"] >= 10


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_iterative_raw_ranking_keeps_every_layer(sparsity: float) -> None:
    """The command's path-mass default: raw masses, 8 steps, recomputed on the masked model; a narrowed
    layer's channels gain mass, so no layer goes below its floor and the wide one is not emptied first."""
    model = chain()
    p, dag, cg = analyse(model)
    result = prune_channels(model, p, dag, sparsity, selection=Selection(steps=8, normalised=False))
    kept = kept_channels(cg, result.removed)
    assert len(result.removed) == min(round(sparsity * 112), 7 + 86 + 7) and result.slim_error <= 1e-5  # floors 1, 10, 1
    for layer, width in (("g1", 8), ("g2", 96), ("g3", 8)):
        assert kept[layer] >= max(1, math.ceil(MIN_KEEP * width)), kept
    assert kept["g2"] > 1


@pytest.mark.parametrize("min_keep", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_floors_and_multiples_of_round_to(round_to: int, min_keep: float) -> None:
    model = chain((4, 12, 40, 16, 3), seed=1)
    p, dag, cg = analyse(model)
    raw = group_scores(cg, p, "path-mass", dag)
    widths = {"g1": 12, "g2": 40, "g3": 16}
    for scope in ("global", "layer"):
        for sparsity in (0.3, 0.6, 1.0):
            kept = kept_channels(cg, choose(cg, raw, sparsity, scope, round_to, min_keep))
            for layer, width in widths.items():
                assert kept[layer] == width or kept[layer] % round_to == 0, (scope, sparsity, kept)
                assert kept[layer] >= max(round_to, math.ceil(min_keep * width), 1) or kept[layer] == width
    everything = kept_channels(cg, choose(cg, raw, 1.0, "global", round_to, min_keep))
    floors = {t: max(round_to, math.ceil(min_keep * w), 1) for t, w in widths.items()}
    assert all(everything[t] < floors[t] + round_to for t in widths)  # pruned down to the floor


@pytest.mark.parametrize("target", ["params", "macs"])
@pytest.mark.parametrize("net", ["conv_bn_pool", "residual_concat", "everything"])
def test_cost_model_is_the_slim_models_own_count(net: str, target: str) -> None:
    """The removed parameters / MACs the selection counts are exactly those the slim model loses
    (float_parameters, layer_costs), and the target is reached or every candidate is used."""
    model, _ = getattr(tiny_nets, net)(2)
    p, dag, cg = analyse(model)
    costs = channel_costs(cg, p, target)
    for sparsity in (0.2, 0.5):
        result = prune_channels(model, p, dag, sparsity, selection=Selection(target=target, min_keep=0.0))
        slim = prepare(result.slim, p.inputs)
        before = float_parameters(model) if target == "params" else sum(c.macs for c in layer_costs(p))
        after = float_parameters(result.slim) if target == "params" else sum(c.macs for c in layer_costs(slim))
        kept = dict(costs.full)
        for i in result.removed:
            for key, k in costs.touches(cg.groups[i]).items():
                if key in kept:
                    kept[key] -= k
        assert costs.total == before
        assert costs.removed(kept) == pytest.approx(before - after, rel=1e-12, abs=1e-9)
        assert before - after >= sparsity * before or len(result.removed) == len(cg.removable())


def test_latency_target_removes_the_measured_fraction() -> None:
    """Node kernel times from an onnxruntime profile: every node of the chain is timed, the total is
    their sum, and the selection removes at least the asked fraction of it (by its own measurement)."""
    model = chain((4, 32, 64, 32, 3))
    p, dag, cg = analyse(model)
    costs = channel_costs(cg, p, "latency", repeats=5)
    assert len(costs.items) == len(model.graph.node) and all(w > 0 for w, _ in costs.items)
    assert costs.total == pytest.approx(sum(w for w, _ in costs.items))
    result = prune_channels(model, p, dag, 0.5, selection=Selection(target="latency"))
    assert 0.5 * (1 - 1e-9) <= result.achieved < 1 and result.slim_error <= 1e-5
    assert result.achieved == pytest.approx(0.5, abs=0.25)


def test_shared_and_identity_read_parameters_are_copied_on_write() -> None:
    model = shared_bias_net()
    p, dag, cg = analyse(model)
    assert not cg.removable()  # before: the shared bias pins every group
    untied, origin = untie(model)
    assert sorted(origin.values()) == ["B", "B"] and "Identity" not in {n.op_type for n in untied.graph.node}
    result = prune_channels(model, p, dag, 0.5, selection=Selection(scope="layer"))
    assert len(result.removed) == 12  # 4 of the 8 channels of each of c1, c2, c3
    slim = inits(result.slim)
    assert {slim[n.input[2]].shape for n in result.slim.graph.node if n.op_type == "Conv"} == {(4,)}
    assert result.slim_error <= 1e-5
    # the certificate of the masked model holds on sampled and searched inputs
    metric = path_metric(dag, import_prepared(prepare(result.masked), None))
    assert metric.exact
    sample_and_search(model, result.masked, dag, metric.upper, 1.0, np.random.default_rng(0), samples=30)
    rng = np.random.default_rng(1)
    for _ in range(5):
        feeds = {"x": rng.uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)}
        np.testing.assert_allclose(run(result.slim, feeds)[0], run(result.masked, feeds)[0], rtol=1e-5, atol=1e-6)


def test_untouched_copies_are_merged_back() -> None:
    """With nothing removed (sparsity 0) the copies made for the shared bias are dropped again."""
    model = shared_bias_net()
    p, dag, _ = analyse(model)
    result = prune_channels(model, p, dag, 0.0)
    assert sorted(inits(result.slim)) == sorted(inits(model))
    x = {"x": np.random.default_rng(2).uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_array_equal(run(result.slim, x)[0], run(model, x)[0])


def test_layers_restricts_channel_pruning(tmp_path, capsys) -> None:
    rc, out, err = run_main(capsys, "prune", SHIPPED_CNN, "--structure", "channel", "--sparsity", "0.5",
                            "--layers", "head", "-o", tmp_path / "s.onnx", "--repeats", "2", "--json")
    assert rc == 0, err
    r = json.loads(out)
    changed = {x["node"] for x in r["layers"] if x["params_after"] != x["params_before"]}
    assert changed and all("head" in n for n in changed) and r["layers"] and r["warnings"] == []
    rc, out, _ = run_main(capsys, "prune", SHIPPED_CNN, "--structure", "channel", "--sparsity", "0.5",
                          "--layers", "nothing-like-this", "-o", tmp_path / "t.onnx", "--json")
    assert rc == 2 and "matches no layer; the layers: stem.0.weight, stem.1.weight," in json.loads(out)["message"]
    rc, out, _ = run_main(capsys, "prune", SHIPPED_CNN, "--structure", "channel", "--sparsity", "0.5",
                          "--layers", "head.4.weight", "-o", tmp_path / "t.onnx", "--json")  # writes the pinned logits
    message = json.loads(out)["message"]
    assert rc == 2 and "matches no removable channel group; layers with removable channels: " in message
    assert "head.0.weight" in message and "head.4.weight" not in message.split("channels: ")[1]


def test_accuracy_drop_warns(tmp_path, capsys) -> None:
    argv = ["prune", SHIPPED_CNN, "--structure", "channel", "-o", tmp_path / "s.onnx", "--repeats", "2",
            "--eval", ROOT / "models/digits_test.npz"]
    rc, out, err = run_main(capsys, *argv, "--sparsity", "0.5", "--round-to", "1", "--json")
    r = json.loads(out)
    assert rc == 0 and r["accuracy_before"] - r["accuracy_after"] > 0.1 and r["achieved"] == 0.5
    assert len(r["warnings"]) == 1 and "dropped by" in r["warnings"][0]
    rc, out, _ = run_main(capsys, *argv, "--sparsity", "0.5", "--round-to", "1")
    assert rc == 0 and "warning: top-1 accuracy dropped" in out
    rc, out, _ = run_main(capsys, *argv, "--sparsity", "0.0", "--json")
    assert rc == 0 and json.loads(out)["warnings"] == []


def test_a_target_the_floors_cannot_reach_warns(tmp_path, capsys) -> None:
    """The default --round-to 8 leaves the shipped CNN's 8-channel layers whole: 8 of its 32 groups go."""
    rc, out, _ = run_main(capsys, "prune", SHIPPED_CNN, "--structure", "channel", "--sparsity", "0.5", "-o",
                          tmp_path / "s.onnx", "--repeats", "2", "--json")
    r = json.loads(out)
    assert rc == 0 and r["round_to"] == 8 and r["groups"]["removed"] == 8 and r["achieved"] == 0.25
    assert r["warnings"] == ["removed 25.0% of the groups, not 50.0%: each layer keeps a multiple of --round-to 8 "
                             "channels and at least max(--round-to, ⌈0.1·width⌉)"]


@pytest.mark.parametrize("args", [["--round-to", "0"], ["--min-keep", "1.5"], ["--target", "weights"], ["--steps", "0"],
                                  ["--ranking", "sum"], ["--structure", "weight", "--round-to", "4"],
                                  ["--structure", "weight", "--steps", "2"]])
def test_selection_usage_errors(tmp_path, capsys, args) -> None:
    rc, out, _ = run_main(capsys, "prune", SHIPPED_CNN, "--structure", "channel", "--sparsity", "0.5",
                          "-o", tmp_path / "o.onnx", *args, "--json")
    assert rc == 2 and not (tmp_path / "o.onnx").exists()


def test_iterative_steps_rescore_the_masked_model() -> None:
    """With steps, the groups removed at a step score 0 on the masked model at the next one; the
    final choice still meets the target and the slim model reproduces the masked one."""
    model, _ = tiny_nets.residual_concat(3)
    p, dag, cg = analyse(model)
    one = prune_channels(model, p, dag, 0.5, selection=Selection(steps=1))
    four = prune_channels(model, p, dag, 0.5, selection=Selection(steps=4))
    assert len(four.removed) == len(one.removed) and four.slim_error <= 1e-5
    rescored = group_scores(cg, p, "path-mass", import_prepared(prepare(masked_model(model, cg, four.removed)), None))
    assert all(rescored[i] == 0 for i in four.removed)


# --- the benchmark's digits nets (tools/digits_nets.py, trained at test time) ---------------------

@pytest.fixture(scope="session")
def digits_nets(tmp_path_factory):
    """The three digits nets, trained 2 epochs on one thread (selection, not accuracy, is tested)."""
    pytest.importorskip("torch", reason="torch trains the digits nets: pip install torch==2.13.0")
    pytest.importorskip("sklearn", reason="scikit-learn ships the digits: pip install scikit-learn")
    tool = load_tool("digits_nets")
    out, data = tmp_path_factory.mktemp("digits_nets"), tool.digits16()
    return {arch: tool.make(arch, out, 2, data)[0] for arch in tool.ARCHS}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet", "mobilenet", "vgg"])
def test_digits_nets_keep_every_layer_and_round(digits_nets, arch: str) -> None:
    """Global 70 %: the raw one-shot ranking strips some layer to one channel; the normalised one keeps
    every layer at its floor or above, at multiples of 8, the slim model reproduces the masked one and
    never moves further from the original than the masked model's certificate on sampled and
    searched inputs."""
    model = load_model(digits_nets[arch])
    p, dag, cg = analyse(model)
    raw = group_scores(cg, p, "path-mass", dag)
    layers = {cg.groups[i].layer for i in cg.removable()}
    old = kept_channels(cg, one_shot_raw(cg, raw, 0.7))
    assert min(old[t] for t in layers) == 1
    result = prune_channels(model, p, dag, 0.7, selection=Selection(round_to=8))
    kept = kept_channels(cg, result.removed)
    for t in layers:
        n = cg.layouts[t].n
        assert kept[t] == n or (kept[t] % 8 == 0 and kept[t] >= max(8, math.ceil(MIN_KEEP * n))), (t, kept[t], n)
    assert result.slim_error <= 1e-4 and len(result.removed) > 0
    metric = path_metric(dag, import_prepared(prepare(result.masked, p.inputs), None))
    assert metric.exact
    sample_and_search(model, result.slim, dag, metric.upper, 1.0, np.random.default_rng(3), samples=10, steps=10)
