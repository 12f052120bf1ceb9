"""Reconstruction-aware channel selection (``prune --structure channel --criterion reconstruction``): the
Gram matrix of the consumers' contributions against onnxruntime's outputs of masked models, the greedy
order against an exhaustive search over all subsets, and the option's errors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from builders import make_model, normal
from checks import Runner, analyse, group_of
from conftest import ROOT, run_main
from onnx import helper, numpy_helper

from onnx_pathlift.errors import UsageError
from onnx_pathlift.pruning.prune import prune_channel_groups
from onnx_pathlift.pruning.ranking import Selection, prune_channels
from onnx_pathlift.pruning.reconstruct import _layer_grams, best_subset, greedy_order, reconstruction_scores

#: measured 0.903 on the test split (5698 of 33538 parameters kept; docs/pruning.md)
MIN_TOP1 = 0.88


def _net(seed: int, cancel: bool = False) -> onnx.ModelProto:
    """x[N,2,6,6] → Conv 3×3 (6) → Relu → Conv 3×3 (5, pads 1) → Relu → Flatten → Gemm → y[N,3]. With
    ``cancel``, hidden channel 1 repeats channel 0's filter and the second conv reads it with the negated
    columns: channels 0 and 1 each carry a lot, together nothing (a pair the per-channel scores miss)."""
    rng = np.random.default_rng(seed)
    p = {"W1": normal(rng, (6, 2, 3, 3), 18), "b1": rng.normal(0.2, 0.3, 6), "W2": normal(rng, (5, 6, 3, 3), 54),
         "b2": rng.normal(0, 0.3, 5), "Wf": normal(rng, (3, 180), 180), "bf": rng.normal(0, 0.3, 3)}
    if cancel:
        p["W1"][1], p["b1"][1] = p["W1"][0], p["b1"][0]
        p["W2"][:, 0] *= 3.0
        p["W2"][:, 1] = -p["W2"][:, 0]
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 3])], p, name="recon_net", producer="test")


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 2, 6, 6)).astype(np.float32)


def _measured(model: onnx.ModelProto, weight: str, output: str, columns: tuple[int, ...], x: np.ndarray,
              block: int = 1) -> float:
    """‖Y − Y_T‖² in float64 of ``output`` over ``x``, ``Y_T`` computed by onnxruntime with the input columns
    ``columns`` (channels, each ``block`` features) of ``weight`` zeroed."""
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    for t in masked.graph.initializer:
        if t.name == weight:
            w = numpy_helper.to_array(t).copy()
            for c in columns:
                w[:, c * block:(c + 1) * block] = 0.0
            t.CopyFrom(numpy_helper.from_array(w, weight))
    full = Runner(model, [output])({"x": x}).astype(np.float64)
    cut = Runner(masked, [output])({"x": x}).astype(np.float64)
    return float(np.square(full - cut).sum())


@pytest.mark.parametrize("cancel", [False, True])
def test_gram_quadratic_form_is_the_measured_output_change_of_every_subset(cancel: bool) -> None:
    """For the groups of ``r1`` (sinks: the 6 input channels of the second conv) and every subset ``T``
    of up to 3 of them, ``1_Tᵀ G 1_T`` equals the squared change of the conv's output that onnxruntime
    computes with those channels' columns zeroed (the bias cancels in the difference; every row is used:
    6·6·8 = 288 rows, under the sampling cap)."""
    model = _net(3, cancel)
    p, _, cg = analyse(model)
    x = _data(8, 0)
    members, g, yy = _layer_grams(cg, model, p, x, cg.removable())["c1"]
    channel = {group_of(cg, "c1", c): c for c in range(6)}
    chans = [channel[i] for i in members]
    assert sorted(chans) == list(range(6)) and g.shape == (6, 6)
    for k in (1, 2, 3):
        for t in itertools.combinations(range(6), k):
            want = _measured(model, "W2", "c2", tuple(chans[i] for i in t), x)
            assert float(g[np.ix_(t, t)].sum()) == pytest.approx(want, rel=2e-4, abs=1e-4)
    assert yy == pytest.approx(_measured(model, "W2", "c2", tuple(range(6)), x), rel=2e-4)


def test_greedy_against_exhaustive_search_and_the_cancelling_pair() -> None:
    """Greedy's first step is exact (the least diagonal entry); every prefix is no better than the best
    subset of its size found by exhaustive search over all subsets, and on the cancelling pair the
    exhaustive search removes both channels at no cost, which the greedy order misses (it is a
    heuristic: ThiNet's)."""
    model = _net(5, cancel=True)
    p, _, cg = analyse(model)
    members, g, _ = _layer_grams(cg, model, p, _data(8, 1), cg.removable())["c1"]
    order, e = greedy_order(g)
    assert sorted(order) == list(range(6)) and order[0] == int(np.argmin(np.diag(g)))
    for k in range(1, 6):
        best, value = best_subset(g, k)
        prefix = order[:k]
        assert e[k - 1] == pytest.approx(float(g[np.ix_(prefix, prefix)].sum()), rel=1e-9, abs=1e-9)
        assert e[k - 1] >= value - 1e-9 * max(1.0, value)
    pair = {members.index(group_of(cg, "c1", 0)), members.index(group_of(cg, "c1", 1))}
    best2, value2 = best_subset(g, 2)
    assert set(best2) == pair and value2 <= 1e-6 * float(np.trace(g))
    assert g[min(pair), min(pair)] > np.median(np.diag(g))  # each alone is expensive
    assert e[1] > value2


def test_scores_follow_the_greedy_order_and_per_layer_removes_its_prefix() -> None:
    """Per layer, the scores rise along the greedy order; ``--scope layer`` removes its prefix; the
    Gemm's groups (r2's channels, 36 features each) are scored too, and their Gram is the measured change
    of ``y`` with those blocks of columns zeroed."""
    model = _net(7)
    p, dag, cg = analyse(model)
    x = _data(12, 2)
    scores = reconstruction_scores(cg, model, p, x)
    grams = _layer_grams(cg, model, p, x, cg.removable())
    for members, g, _ in grams.values():
        order, _ = greedy_order(g)
        assert np.all(np.diff(scores[[members[c] for c in order]]) > 0)
    members, g, _ = grams["c2"]
    t = (0, 3)
    chans = tuple(c for c in range(5) if group_of(cg, "c2", c) in {members[i] for i in t})
    assert len(chans) == 2
    want = _measured(model, "Wf", "y", chans, x, block=36)
    assert float(g[np.ix_(t, t)].sum()) == pytest.approx(want, rel=2e-4, abs=1e-4)
    sel = Selection("reconstruction", "layer", scorer=lambda c, m, q: reconstruction_scores(c, m, q, x))
    result = prune_channels(model, p, dag, 0.5, selection=sel)
    members, g, _ = grams["c1"]
    order, _ = greedy_order(g)
    assert {i for i in result.removed if cg.groups[i].layer == "c1"} == {members[c] for c in order[:3]}


def test_reconstruction_needs_calibration_and_runs_from_the_command(tmp_path, capsys) -> None:
    src = ROOT / "models/digits_cnn_torch.onnx"
    with pytest.raises(UsageError, match="needs --calibration"):
        prune_channel_groups(src, 0.3, tmp_path / "s.onnx", criterion="reconstruction", repeats=1)
    rc, _, err = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.3", "-o",
                          tmp_path / "s.onnx", "--criterion", "reconstruction")
    assert rc == 2 and err.startswith("onnx-pathlift: error:") and "--calibration" in err
    assert not (tmp_path / "s.onnx").exists()
    rc, out, err = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.3", "-o",
                            tmp_path / "s.onnx", "--criterion", "reconstruction", "--scope", "layer",
                            "--calibration", ROOT / "models/digits_test.npz", "--json")
    assert rc == 0, err
    assert (tmp_path / "s.onnx").exists()
    explicit = json.loads(out)
    rc, out, err = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.3", "-o",
                            tmp_path / "d.onnx", "--scope", "layer", "--calibration", ROOT / "models/digits_test.npz",
                            "--json")  # with --calibration and no --criterion: reconstruction, the same groups
    default = json.loads(out)
    assert rc == 0 and default["criterion"] == "reconstruction" and default["recovery"]["data_aware_scores"]
    assert [r["params_after"] for r in default["layers"]] == [r["params_after"] for r in explicit["layers"]]
    rc, out, _ = run_main(capsys, "prune", src, "--structure", "channel", "--sparsity", "0.3", "-o",
                          tmp_path / "n.onnx", "--scope", "layer", "--json")
    assert rc == 0 and json.loads(out)["criterion"] == "path-mass"  # without calibration: path mass


@pytest.mark.slow
def test_mobilenet_global_70_percent_with_reconstruction_before_fine_tuning(tmp_path) -> None:
    """The measurement behind docs/pruning.md's reconstruction rows: tools/digits_nets.py's MobileNetV2,
    70 % of its channel groups removed globally (default options otherwise) with ``--criterion reconstruction``
    and calibration on the train split, keeps at least MIN_TOP1 top-1 on the test split with no training
    (pruning alone: chance), and no less than the data-aware path mass with the same recovery."""
    pytest.importorskip("torch", reason="torch trains the digits nets: pip install torch==2.13.0")
    pytest.importorskip("sklearn", reason="scikit-learn ships the digits: pip install scikit-learn")
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import digits_nets

    data = digits_nets.digits16()
    path, _ = digits_nets.make("mobilenet", tmp_path, data=data)
    train = digits_nets.save_data(data, tmp_path / "train.npz", "train")
    test = digits_nets.save_data(data, tmp_path / "test.npz", "test")
    top1 = {}
    for criterion in ("reconstruction", "path-mass"):
        r = prune_channel_groups(path, 0.7, tmp_path / f"{criterion}.onnx", criterion=criterion, eval_data=test,
                                 calibration=train, repeats=1).record
        assert r["recovery"]["eval"]["pruned"]["top1"] < 0.3
        top1[criterion] = r["accuracy_after"]
    assert top1["reconstruction"] >= MIN_TOP1 and top1["reconstruction"] >= top1["path-mass"] - 0.01, top1
