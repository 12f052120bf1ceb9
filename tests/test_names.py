"""One name per layer (docs/design.md, "Layer names"): the same layer has the same name in ``compare``,
``prune --structure channel``, ``prune --structure weight`` and ``scores``, ``--layers`` of both prune
structures accepts it and every other spelling of it, and an unknown one lists the valid names; on the
shipped CNN (named nodes) and on the same CNN with every node unnamed and one weight computed (a
Constant node), which exercises all three tiers of the scheme. The expected names are written out by
hand from the files' nodes, not computed by the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import shared_bias_net
from conftest import MODELS, run_main
from onnx import helper, numpy_helper

import onnx_pathlift as pl
from onnx_pathlift.analyses.metric import MismatchError, path_metric
from onnx_pathlift.api import compare_models
from onnx_pathlift.frontend.names import layer_names
from onnx_pathlift.frontend.pipeline import load

CNN = MODELS / "digits_cnn_torch_bn.onnx"
DATA = MODELS / "digits_test.npz"
#: the shipped CNN's weighted nodes in graph order: (layer name, ONNX node, weight initializer)
SHIPPED = [("stem.0.weight", "/stem/stem.0/Conv", "stem.0.weight"),
           ("stem.1.weight", "/stem/stem.1/BatchNormalization", "stem.1.weight"),
           ("block.conv1.weight", "/block/conv1/Conv", "block.conv1.weight"),
           ("block.bn1.weight", "/block/bn1/BatchNormalization", "block.bn1.weight"),
           ("block.conv2.weight", "/block/conv2/Conv", "block.conv2.weight"),
           ("block.bn2.weight", "/block/bn2/BatchNormalization", "block.bn2.weight"),
           ("head.0.weight", "/head/head.0/Conv", "head.0.weight"),
           ("head.4.weight", "/head/head.4/Gemm", "head.4.weight")]
#: the unnamed twin: the stem conv's weight comes from a Constant node (no initializer, no node name: Conv#0)
UNNAMED = [("Conv#0", "", None), *((layer, "", init) for layer, _, init in SHIPPED[1:])]
#: convs and the dense layer: the layers weight pruning and scores see
SCORED = {0, 2, 4, 6, 7}


def _unnamed(path: Path) -> Path:
    """The shipped CNN with every node's name cleared and ``stem.0.weight`` moved into a Constant node."""
    model = onnx.load(str(CNN))
    weight = next(t for t in model.graph.initializer if t.name == "stem.0.weight")
    model.graph.initializer.remove(weight)
    const = helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(numpy_helper.to_array(weight)))
    for node in model.graph.node:
        node.name = ""
        node.input[:] = ["w_const" if i == "stem.0.weight" else i for i in node.input]
    model.graph.node.insert(0, const)
    onnx.save(model, str(path))
    return path


@pytest.fixture(params=["shipped", "unnamed"])
def case(request, tmp_path) -> tuple[Path, list[tuple[str, str, str | None]]]:
    if request.param == "shipped":
        return CNN, SHIPPED
    return _unnamed(tmp_path / "unnamed.onnx"), UNNAMED


def _json(capsys, *argv) -> dict:
    rc, out, err = run_main(capsys, *argv, "--json")
    assert rc == 0, (out, err)
    return json.loads(out)


def _triples(rows: list[dict]) -> list[tuple[str, str, str | None]]:
    return [(r["layer"], r["onnx_node"], r["initializer"]) for r in rows]


def test_names_of_every_layer(case) -> None:
    path, expected = case
    loaded = load(path)
    names = layer_names(loaded.prepared, loaded.dag)
    assert [(n.layer, n.onnx_node, n.initializer) for n in names.parameterised()] == expected
    assert len({n.layer for n in names.by_key.values()}) == len(names.by_key)  # unique, Relu/pools included


def test_same_name_in_every_command(case, tmp_path, capsys) -> None:
    path, expected = case
    weight = _json(capsys, "prune", path, "--sparsity", "0.3", "-o", tmp_path / "w.onnx")
    # a weight computed by a Constant node is scored but not pruned (apply's "not an initializer")
    assert sorted(_triples(weight["layers"])) == sorted(expected[i] for i in SCORED if expected[i][2])
    assert list(weight["skipped"]) == ([] if expected[0][2] else ["w_const"])
    for row in weight["layers"]:  # the zeros counted in the written file
        w = numpy_helper.to_array(next(t for t in onnx.load(str(tmp_path / "w.onnx")).graph.initializer
                                       if t.name == row["initializer"])) if row["initializer"] else None
        assert w is None or (row["zeros"], row["size"]) == (int((w == 0).sum()), w.size)
    scores = _json(capsys, "scores", path)
    assert sorted(_triples(scores["tensors"])) == sorted(expected[i] for i in SCORED)
    assert sorted(r["tensor"] for r in scores["tensors"]) == sorted(init or "w_const" for _, _, init in (expected[i] for i in SCORED))
    channel = _json(capsys, "prune", path, "--structure", "channel", "--sparsity", "0.5", "--round-to", "1",
                    "-o", tmp_path / "c.onnx", "--masked", tmp_path / "m.onnx", "--repeats", "1")
    assert _triples(channel["layers"]) == expected
    every = {layer for layer, *_ in expected}  # the certificates' sign counts: by layer name, not DAG layer
    assert set(weight["metric"]["flipped_per_layer"]) == set(channel["metric"]["flipped_per_layer"]) == every
    compare = _json(capsys, "compare", path, tmp_path / "w.onnx")
    parts = {r["layer"]: r for r in compare["layers"]}
    assert set(parts) == {expected[i][0] for i in SCORED} | {expected[i][0] for i in (1, 3, 5)}
    assert {r["layer"] for r in compare["layers"] if r["value"]} == {r["layer"] for r in weight["layers"] if r["zeros"]}
    assert {r["layer"] for r in _json(capsys, "compare", path, tmp_path / "m.onnx")["layers"]} == set(parts)
    assert all(_triples([parts[layer]]) == [(layer, node, init)] for layer, node, init in expected)


@pytest.mark.slow
def test_layers_accepts_every_spelling(case, tmp_path, capsys) -> None:
    """``--layers`` takes the layer name, its ONNX node name, its output tensor and compare's old DAG
    name (``<output>/conv``), in both prune structures, and each selects that layer alone."""
    path, expected = case
    outputs = {n.name or n.output[0]: n.output[0] for n in onnx.load(str(path)).graph.node}
    out = outputs[SHIPPED[6][1]] if expected is SHIPPED else next(o for o in outputs.values() if "head.0/Conv" in o)
    for spelling in [expected[6][0], out, out + "/conv", *([expected[6][1]] if expected[6][1] else [])]:
        weight = _json(capsys, "prune", path, "--sparsity", "0.5", "--layers", spelling, "-o", tmp_path / "w.onnx")
        assert [r["layer"] for r in weight["layers"]] == [expected[6][0]], spelling
        channel = _json(capsys, "prune", path, "--structure", "channel", "--sparsity", "0.5", "--layers", spelling,
                        "-o", tmp_path / "c.onnx", "--repeats", "1")
        changed = [r["layer"] for r in channel["layers"] if r["params_after"] != r["params_before"]]
        assert changed == [expected[6][0], expected[7][0]], spelling  # head.0's channels, and the Gemm reading them
    stem = _json(capsys, "prune", path, "--sparsity", "0.5", "--layers", expected[0][0], "-o", tmp_path / "w.onnx")
    assert [r["layer"] for r in stem["layers"]] == ([expected[0][0]] if expected[0][2] else [])  # a Constant: skipped
    assert list(stem["skipped"]) == ([] if expected[0][2] else ["w_const"])
    stem = _json(capsys, "prune", path, "--structure", "channel", "--sparsity", "0.5", "--layers", expected[0][0],
                 "--round-to", "1", "-o", tmp_path / "c.onnx", "--repeats", "1")
    assert expected[0][0] in [r["layer"] for r in stem["layers"] if r["params_after"] != r["params_before"]]


@pytest.mark.parametrize("structure", ["weight", "channel"])
def test_unknown_layer_lists_the_valid_names(structure, tmp_path, capsys) -> None:
    rc, out, err = run_main(capsys, "prune", CNN, "--structure", structure, "--sparsity", "0.5", "--layers", "Conv_4",
                            "-o", tmp_path / "x.onnx", *(["--repeats", "1"] if structure == "channel" else []))
    assert rc == 2 and not out and err.count("\n") == 1
    listed = err.split("the layers: ")[1].split(" (or")[0].split(", ")
    assert listed == [SHIPPED[i][0] for i in (SCORED if structure == "weight" else range(len(SHIPPED)))]
    assert not (tmp_path / "x.onnx").exists()


def test_parameters_agree_with_norm(tmp_path, capsys) -> None:
    """One definition (BN's running mean and variance are statistics, not parameters): prune's counts
    before and after are ``norm``'s of the original and of the slim model written, and the per-layer rows
    add up to them (every parameter of this CNN is in a Conv, BN or Gemm)."""
    r = _json(capsys, "prune", CNN, "--structure", "channel", "--sparsity", "0.5", "--round-to", "1",
              "-o", tmp_path / "s.onnx", "--repeats", "1")
    norm_before = _json(capsys, "norm", CNN)["parameters"]
    norm_after = _json(capsys, "norm", tmp_path / "s.onnx")["parameters"]
    assert (r["params_before"], r["params_after"]) == (norm_before, norm_after) and norm_after < norm_before == 2618
    assert sum(x["params_before"] for x in r["layers"]) == norm_before
    assert sum(x["params_after"] for x in r["layers"]) == norm_after
    shipped = onnx.load(str(CNN))  # independent count: every float initializer but BN inputs 3 and 4
    stats = {i for n in shipped.graph.node if n.op_type == "BatchNormalization" for i in n.input[3:]}
    assert norm_before == sum(numpy_helper.to_array(t).size for t in shipped.graph.initializer if t.name not in stats)


def test_weight_certificate_has_a_scale_and_the_observed_change(tmp_path, capsys) -> None:
    """The certificate beside ‖Φ‖_1 and beside the change seen on the --eval samples (recomputed here
    with onnxruntime), which it must bound: the samples lie in the box ‖x‖_∞ ≤ 1."""
    out = tmp_path / "w.onnx"
    r = _json(capsys, "prune", CNN, "--sparsity", "0.4", "-o", out, "--eval", DATA)
    data = np.load(DATA)
    x = data["x"].reshape(-1, 1, 1, 8, 8).astype(np.float32)
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (CNN, out))
    seen = max(float(np.abs(a.run(None, {"input": xi})[0] - b.run(None, {"input": xi})[0]).sum()) for xi in x)
    obs = r["observed_change"]
    assert obs["samples"] == len(x) and obs["max_input_linf"] <= 1.0
    assert obs["max_l1"] == pytest.approx(seen, rel=1e-6) and 0 < seen <= r["metric"]["bound"]
    rc, text, _ = run_main(capsys, "prune", CNN, "--sparsity", "0.4", "-o", tmp_path / "t.onnx", "--eval", DATA)
    assert rc == 0
    ratio = r["metric"]["upper"] / r["metric"]["norm_a"]
    assert f"scale: d is {ratio:.3g} of ‖Φ(original)‖_1" in text
    assert f"moved by at most {seen:.6g} in ℓ1; the bound is {r['metric']['bound'] / obs['max_l1']:.3g}× that" in text
    assert "(samples inside the certified box)" in text


def test_repeats_is_refused_with_weight_pruning(tmp_path, capsys) -> None:
    rc, out, err = run_main(capsys, "prune", CNN, "--sparsity", "0.3", "--repeats", "5", "-o", tmp_path / "w.onnx")
    assert rc == 2 and "--repeats goes with --structure channel" in err and not (tmp_path / "w.onnx").exists()


def test_library_names_match_the_command_line() -> None:
    """Library users get the same names: the compare shares of the pruned twin are keyed by layer name."""
    result = compare_models(CNN, MODELS / "digits_cnn_torch_bn_pruned50.onnx")
    assert {sh.layer for sh in result.metric.shares} <= {layer for layer, *_ in SHIPPED}


def test_listed_names_are_escaped(tmp_path, capsys) -> None:
    """A model-supplied name in the list of valid ones reaches the terminal escaped, on one line."""
    model = onnx.load(str(CNN))
    evil = "head.0.weight\nFAKE\x1b[31m\u202e"
    for t in model.graph.initializer:
        t.name = evil if t.name == "head.0.weight" else t.name
    for node in model.graph.node:
        node.input[:] = [evil if i == "head.0.weight" else i for i in node.input]
    onnx.save(model, tmp_path / "evil.onnx")
    rc, out, err = run_main(capsys, "prune", tmp_path / "evil.onnx", "--sparsity", "0.5", "--layers", "nothing",
                            "-o", tmp_path / "x.onnx")
    assert rc == 2 and err.count("\n") == 1 and not {"\x1b", "\u202e"} & set(err)
    assert "head.0.weight\\nFAKE\\x1b[31m\\u202e" in err
    rc, out, err = run_main(capsys, "prune", tmp_path / "evil.onnx", "--sparsity", "0.5", "--layers", evil,
                            "-o", tmp_path / "x.onnx")
    assert rc == 0 and "head.0.weight\\nFAKE" in out and not {"\x1b", "\u202e"} & set(out)


def test_generated_initializer_names_give_way_to_the_node_name(tmp_path) -> None:
    """torch.onnx names BN-folded weights ``onnx::Conv_N``; its node keeps the module path, which names the layer."""
    model = onnx.load(str(CNN))
    for t in model.graph.initializer:
        t.name = "onnx::Conv_9" if t.name == "block.conv1.weight" else t.name
    for node in model.graph.node:
        node.input[:] = ["onnx::Conv_9" if i == "block.conv1.weight" else i for i in node.input]
    onnx.save(model, tmp_path / "gen.onnx")
    loaded = load(tmp_path / "gen.onnx")
    named = {n.onnx_node: n for n in layer_names(loaded.prepared, loaded.dag).parameterised()}["/block/conv1/Conv"]
    assert (named.layer, named.initializer) == ("/block/conv1/Conv", "onnx::Conv_9")


def test_parameters_of_a_shared_bias_count_once_per_layer(tmp_path, capsys) -> None:
    """Three convs read one stored bias (two directly, one through an Identity): each layer has its bias,
    so norm and prune count it three times (144 + 576 + 64 + 800 weights + 3 × 8 biases), before and after."""
    onnx.save(shared_bias_net(), tmp_path / "shared.onnx")
    r = _json(capsys, "prune", tmp_path / "shared.onnx", "--structure", "channel", "--sparsity", "0.5", "--scope", "layer",
              "--round-to", "1", "-o", tmp_path / "s.onnx", "--repeats", "1")
    assert r["params_before"] == _json(capsys, "norm", tmp_path / "shared.onnx")["parameters"] == 144 + 576 + 64 + 800 + 24
    assert r["params_after"] == _json(capsys, "norm", tmp_path / "s.onnx")["parameters"] == 72 + 144 + 16 + 400 + 12
    assert [x["layer"] for x in r["layers"]] == ["W1", "W2", "W3", "Wf"]
    assert sum(x["params_after"] for x in r["layers"]) == r["params_after"]


def test_recovery_records_name_their_layers(tmp_path, capsys) -> None:
    r = _json(capsys, "prune", CNN, "--structure", "channel", "--sparsity", "0.5", "--round-to", "1", "-o",
              tmp_path / "r.onnx", "--calibration", DATA, "--repeats", "1")
    by_node = {node: (layer, node, init) for layer, node, init in SHIPPED}
    assert r["recovery"]["layers"] and all(_triples([f]) == [by_node[f["node"]]] for f in r["recovery"]["layers"])


# --- compare and pl.path_metric: no DAG name reaches the user --------------------------------------------------
# A model spelled as torch.onnx spells module paths (nodes ``/fc1/Gemm``, tensors ``/fc1/Gemm_output_0``, weights
# ``fc1.weight``), or with every node unnamed: the DAG's layers are named after the output tensors
# (``/fc2/Gemm_output_0/dense``), the layers after the weights, the nodes or ``OpType#k``.


def _exported_mlp(hidden: int, named: bool = True, prefix: str = "fc", computed: bool = False) -> onnx.ModelProto:
    """x[1,6] → Gemm → Relu → Gemm → Relu → Gemm → y[1,3] (the same weights for the same ``hidden``);
    ``computed``: the second Gemm's weight comes from a Constant node (no initializer)."""
    rng = np.random.default_rng(0)
    sizes = [6, hidden, 5, 3]
    params, nodes, x = {}, [], "x"
    for k in range(1, 4):
        w, b = f"{prefix}{k}.weight", f"{prefix}{k}.bias"
        params[w] = rng.normal(size=(sizes[k], sizes[k - 1])).astype(np.float32)
        params[b] = rng.normal(size=sizes[k]).astype(np.float32)
        if computed and k == 2:
            nodes.append(helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(params.pop(w))))
            w = "w_const"
        out = "y" if k == 3 else f"/fc{k}/Gemm_output_0"
        nodes.append(helper.make_node("Gemm", [x, w, b], [out], transB=1, name=f"/fc{k}/Gemm" if named else ""))
        if k < 3:
            x = f"/act{k}/Relu_output_0"
            nodes.append(helper.make_node("Relu", [out], [x], name=f"/act{k}/Relu" if named else ""))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v, k) for k, v in params.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _saved(tmp_path: Path, **models: onnx.ModelProto) -> list[Path]:
    for name, model in models.items():
        onnx.save(model, tmp_path / f"{name}.onnx")
    return [tmp_path / f"{name}.onnx" for name in models]


@pytest.mark.parametrize("named", [True, False])
def test_mismatch_names_the_layers(named, tmp_path, capsys) -> None:
    """Two MLPs whose second layer differs in width: the error names that layer in each model by its
    layer name (the ONNX node beside where it has another name), in the API, the text and --json."""
    a, b = _exported_mlp(8, named), _exported_mlp(9, named, computed=True)
    in_a = "dense 'fc2.weight'" + (" (ONNX node '/fc2/Gemm')" if named else "")
    in_b = "dense '/fc2/Gemm'" if named else "dense 'Gemm#1'"  # a computed weight: the node, else Gemm#k
    expected = f"A's {in_a} does not match B's {in_b}: parameters"
    with pytest.raises(MismatchError) as info:
        path_metric(a, b)
    assert str(info.value).startswith(expected) and "_output_0" not in str(info.value), str(info.value)
    pa, pb = _saved(tmp_path, a=a, b=b)
    rc, out, err = run_main(capsys, "compare", pa, pb)
    assert rc == 2 and not out and err.startswith(f"onnx-pathlift: error: {expected}") and "_output_0" not in err, err
    res = _json_error(capsys, "compare", pa, pb)
    assert res["error"] == "MismatchError" and res["message"].startswith(expected)


def _json_error(capsys, *argv) -> dict:
    rc, out, _ = run_main(capsys, *argv, "--json")
    assert rc == 2, out
    return json.loads(out)


def test_sign_changes_name_the_layer_in_each_model(tmp_path, capsys) -> None:
    """B is A with other weight names (``layer2.weight``) and unnamed nodes, three coordinates of its second
    weight flipped: each sign change names A's layer and B's (``other``), in compare and in pl.path_metric."""
    a, b = _exported_mlp(8), _exported_mlp(8, named=False, prefix="layer")
    w = next(t for t in b.graph.initializer if t.name == "layer2.weight")
    flipped = numpy_helper.to_array(w).copy()
    flipped.flat[[0, 7, 20]] *= -1
    w.CopyFrom(numpy_helper.from_array(flipped, w.name))
    pa, pb = _saved(tmp_path, a=a, b=b)
    res = _json(capsys, "compare", pa, pb)
    row = {"layer": "fc2.weight", "other": "layer2.weight", "violations": 3, "size": 5 * 8 + 5, "onnx_node": "/fc2/Gemm",
           "initializer": "fc2.weight"}
    assert res["sign_violations"] == [row]
    assert res["flipped_per_layer"] == {"fc1.weight": 0, "fc2.weight": 3, "fc3.weight": 0}
    m = pl.path_metric(pa, pb)
    assert [s.__dict__ for s in m.signs if s.violations] == [row]


def test_path_metric_names_layers_as_compare_does(case, tmp_path, capsys) -> None:
    """pl.path_metric of two files keys its per-layer parts and sign counts by the layer names compare
    prints (one renaming, in path_metric), with the same values; given DAGs, by their DAG names."""
    path, expected = case
    _json(capsys, "prune", path, "--sparsity", "0.3", "-o", tmp_path / "w.onnx")
    m = pl.path_metric(path, tmp_path / "w.onnx", breakdown=True)
    c = compare_models(path, tmp_path / "w.onnx").metric
    assert {sh.layer for sh in m.shares} == {s.layer for s in m.signs} == {layer for layer, *_ in expected}
    assert {(sh.layer, sh.onnx_node, sh.initializer) for sh in m.shares} == set(expected)
    assert [(sh.layer, sh.log10) for sh in m.shares] == [(sh.layer, pytest.approx(sh.log10, rel=1e-12)) for sh in c.shares]
    dag = load(path).dag
    assert {sh.layer for sh in pl.path_metric(dag, dag, breakdown=True).shares} <= set(dag.graph.nodes)


def _conv_net(bn: bool, named: bool) -> onnx.ModelProto:
    """x[1,2,4,4] → Conv (→ BatchNormalization) → Relu → Flatten → Gemm → y[1,3], module-path names
    (``conv.weight``; nodes ``/conv/Conv`` or unnamed, tensors ``/conv/Conv_output_0``)."""
    rng = np.random.default_rng(1)
    params = {"conv.weight": rng.normal(size=(4, 2, 3, 3)), "conv.bias": rng.normal(size=4),
              "fc.weight": rng.normal(size=(3, 64)), "fc.bias": rng.normal(size=3)}
    chain = [("Conv", "/conv/Conv", ["conv.weight", "conv.bias"], {"pads": [1, 1, 1, 1]})]
    if bn:
        params.update({"bn.weight": rng.uniform(0.5, 2, 4), "bn.bias": rng.normal(size=4),
                       "bn.running_mean": rng.normal(size=4), "bn.running_var": rng.uniform(0.5, 2, 4)})
        chain.append(("BatchNormalization", "/bn/BatchNormalization", ["bn.weight", "bn.bias", "bn.running_mean",
                                                                        "bn.running_var"], {}))
    chain += [("Relu", "/relu/Relu", [], {}), ("Flatten", "/flatten/Flatten", [], {}),
              ("Gemm", "/fc/Gemm", ["fc.weight", "fc.bias"], {"transB": 1})]
    nodes, x = [], "x"
    for i, (op, name, inputs, attrs) in enumerate(chain):
        out = "y" if i == len(chain) - 1 else f"{name}_output_0"
        nodes.append(helper.make_node(op, [x, *inputs], [out], name=name if named else "", **attrs))
        x = out
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_canonical_rewrites_name_the_layers(tmp_path, capsys) -> None:
    """A conv + BN model against a BN-free one: compare brings A to the canonical spelling, and its rewrites
    name A's layers (the conv's bias merged into the BN's affine layer, whose scale folds into the conv), in
    --json and in the text; no DAG name (``/conv/Conv_output_0/conv``) is printed."""
    pa, pb = _saved(tmp_path, a=_conv_net(bn=True, named=True), b=_conv_net(bn=False, named=False))
    res = _json(capsys, "compare", pa, pb)
    rewrites = ["merged affine 'conv.weight' into affine 'bn.weight'", "folded the scale of affine 'bn.weight' into conv 'conv.weight'"]
    assert res["canonicalised"] == {"a": rewrites, "b": []}
    rc, out, err = run_main(capsys, "compare", pa, pb)
    assert rc == 0 and all(f"      {line}\n" in out for line in rewrites) and "_output_0" not in out, out


def test_path_magnitude_names_layers_as_scores_does(case, capsys) -> None:
    """pl.path_magnitude of a file maps each weight tensor to the layer name ``scores`` prints."""
    path, expected = case
    rows = _json(capsys, "scores", path)["tensors"]
    assert {r["layer"] for r in rows} == {expected[i][0] for i in SCORED}
    assert pl.path_magnitude(path).layers == {r["tensor"]: r["layer"] for r in rows}


def test_kept_channels_name_the_node_by_layer_name(tmp_path, capsys) -> None:
    """Unnamed nodes: the reason channel pruning keeps the groups around a Softmax over the channels (no
    channel rule: not sliced) names it ``Softmax#0``, as every command names that layer, not ``''``."""
    rng = np.random.default_rng(2)
    params = {"conv1.weight": rng.normal(size=(4, 2, 3, 3)), "conv2.weight": rng.normal(size=(6, 4, 1, 1)),
              "fc.weight": rng.normal(size=(3, 6))}
    nodes = [helper.make_node("Conv", ["x", "conv1.weight"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Softmax", ["r1"], ["s"], axis=1), helper.make_node("Conv", ["s", "conv2.weight"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc.weight"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()])
    (path,) = _saved(tmp_path, softmax=helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    rc, out, _ = run_main(capsys, "inspect", path, "--json")  # refused (exit 3: a Softmax mid-network), prunable
    kept = json.loads(out)["channel_pruning"]["kept"]
    why = "read or written by Softmax 'Softmax#0', which is not sliced"  # its input's 4 channels and its output's 4
    assert {"reason": why, "groups": 8} in kept, kept
    r = _json(capsys, "prune", path, "--structure", "channel", "--sparsity", "0.5", "--round-to", "1", "-o", tmp_path / "s.onnx",
              "--repeats", "1")
    assert (why, 8) in [(row["reason"], row["groups"]) for row in r["pinned"]]
