"""Exporter idioms (issue 14), against the brute-force oracle: nodes out of topological order (keras2onnx
writes them reversed), Tile (Keras' UpSampling2D), Neg (tf2onnx's PReLU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import ints, make_model, net, one_op, sandwich
from checks import assert_scores_are_brute_force_drops
from conftest import run_main
from onnx import helper
from oracle import brute_force_path_norm
from tiny_nets import conv_bn_pool, residual_concat

import onnx_pathlift as pl
from onnx_pathlift.backend.norm import PathNormSession
from onnx_pathlift.backend.verify import verify
from onnx_pathlift.frontend.importer import ImportTrace, import_prepared
from onnx_pathlift.frontend.prepare import prepare


def _reversed(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(model.graph.node)[::-1]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


@pytest.mark.parametrize("build", [conv_bn_pool, residual_concat])
def test_nodes_in_reverse_order_give_the_same_path_norm(build) -> None:
    model, _ = build(0)
    backwards = _reversed(model)
    assert [n.output[0] for n in backwards.graph.node] != [n.output[0] for n in model.graph.node]
    for q in (1.0, 2.0):
        want = brute_force_path_norm(model, q) ** (1 / q)
        assert pl.path_norm(model, q=q).value == pytest.approx(want, rel=1e-6)
        assert pl.path_norm(backwards, q=q).value == pytest.approx(want, rel=1e-6)
    assert np.isfinite(pl.path_norm(backwards, q=4).log10)


# ---------------------------------------------------------------------------------------------
# Tile (a copy op that duplicates neurons) and Neg (weight -1), alone and in the exporters' idioms
# ---------------------------------------------------------------------------------------------


def _keras_upsampling() -> onnx.ModelProto:
    """Keras' UpSampling2D(2) as keras2onnx/tf2onnx write it: Unsqueeze → Tile → Reshape (nearest, x2)."""
    nodes = [helper.make_node("Unsqueeze", ["r", "ua"], ["u"]), helper.make_node("Tile", ["u", "rp"], ["t"]),
             helper.make_node("Reshape", ["t", "sh"], ["m"])]
    return sandwich(nodes, {"ua": ints(3, 5), "rp": ints(1, 1, 1, 2, 1, 2), "sh": ints(1, 3, 8, 10)})


def _tf2onnx_prelu() -> onnx.ModelProto:
    """Keras' PReLU as tf2onnx writes it on the conv output c: ``relu(c) − α·relu(−c)``, α per channel."""
    nodes = [helper.make_node("Relu", ["c"], ["p"]), helper.make_node("Neg", ["c"], ["nc"]),
             helper.make_node("Relu", ["nc"], ["rn"]), helper.make_node("Mul", ["rn", "al"], ["ma"]),
             helper.make_node("Sub", ["p", "ma"], ["m"])]
    return sandwich(nodes, {"al": np.array([[[0.25]], [[-0.5]], [[1.5]]], np.float32)})


IDIOMS = {
    "tile_channels_and_width": lambda: one_op("Tile", ["rp"], {"rp": ints(1, 2, 1, 3)}),
    "tile_every_axis_but_batch": lambda: one_op("Tile", ["rp"], {"rp": ints(1, 2, 3, 2)}),
    "tile_batch_axis_dense": lambda: one_op("Tile", ["rp"], {"rp": ints(3, 2)}, x_shape=(1, 3)),
    "tile_all_ones_is_an_alias": lambda: one_op("Tile", ["rp"], {"rp": ints(1, 1, 1, 1)}),
    "keras_upsampling2d": _keras_upsampling,
    "neg": lambda: one_op("Neg", [], {}),
    "neg_then_relu": lambda: sandwich([helper.make_node("Neg", ["c"], ["n"]), helper.make_node("Relu", ["n"], ["m"])], {}),
    "tf2onnx_prelu": _tf2onnx_prelu,
}


@pytest.mark.parametrize("case", sorted(IDIOMS))
def test_idiom_against_oracle(case: str) -> None:
    model = IDIOMS[case]()
    dag = pl.import_model(model)
    report = verify(model, dag, trials=3)
    assert report.passed, report
    for q in (1.0, 2.0, 4.0):
        want = brute_force_path_norm(model, q)
        assert pl.path_norm(dag, q=q).value == pytest.approx(want ** (1 / q), rel=1e-6), q
        static = PathNormSession(dag, q, scales="static").run().log10
        assert PathNormSession(dag, q, scales="dynamic").run().log10 == pytest.approx(static, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("case", sorted(IDIOMS))
def test_idiom_scores_are_the_brute_force_drops(case: str) -> None:
    assert_scores_are_brute_force_drops(IDIOMS[case]())


def test_tile_duplicates_neurons_and_neg_keeps_the_norm() -> None:
    """Closed forms on a Gemm layer: tiling its output r times counts each path r times (×r to ‖Φ‖_q^q);
    a Neg changes no |weight|."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(3, 4))
    base = net([1, 3], [helper.make_node("Gemm", ["x", "W"], ["y"])], [1, 4], {"W": w1})
    tiled = net([1, 3], [helper.make_node("Gemm", ["x", "W"], ["g"]), helper.make_node("Tile", ["g", "rp"], ["y"])],
                 [1, 12], {"W": w1, "rp": ints(1, 3)})
    negated = net([1, 3], [helper.make_node("Gemm", ["x", "W"], ["g"]), helper.make_node("Neg", ["g"], ["y"])],
                  [1, 4], {"W": w1})
    w32 = np.abs(w1.astype(np.float32).astype(np.float64))
    for q in (1.0, 2.0):
        closed = float(np.sum(w32 ** q))
        assert pl.path_norm(base, q=q).value ** q == pytest.approx(closed, rel=1e-6)
        assert pl.path_norm(tiled, q=q).value ** q == pytest.approx(3 * closed, rel=1e-6)
        assert pl.path_norm(negated, q=q).value ** q == pytest.approx(closed, rel=1e-6)


def test_tile_with_data_dependent_repeats_is_refused() -> None:
    """Repeats computed from the data (a Gemm's output cast to int64): the Cast is refused, the Tile behind
    it is not imported."""
    nodes = [helper.make_node("Gemm", ["x", "Wr"], ["g"]), helper.make_node("Cast", ["g"], ["gi"], to=onnx.TensorProto.INT64),
             helper.make_node("Reshape", ["gi", "s"], ["rp"]), helper.make_node("Tile", ["x", "rp"], ["y"], name="tile0")]
    model = net([1, 3], nodes, None, {"Wr": np.ones((3, 2)), "s": ints(2)})
    trace = ImportTrace()
    with pytest.raises(pl.UnsupportedModelError) as err:
        import_prepared(prepare(model), trace=trace)
    assert [(r.node, r.op_type) for r in err.value.refusals] == [("gi", "Cast")]
    assert "tile0" in [n.name for n in trace.blocked]


def test_integer_typed_network_is_refused_with_exit_3(tmp_path, capsys) -> None:
    """Token ids in, an integer network: outside the supported set (exit 3), not a usage error (exit 2)."""
    model = make_model([helper.make_node("Tile", ["ids", "rp"], ["y"], name="tile0")], [("ids", [1, 3], onnx.TensorProto.INT64)],
                       [("y", [1, 6], onnx.TensorProto.INT64)], {"rp": ints(1, 2)}, name="ints")
    path = tmp_path / "ints.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(pl.UnsupportedModelError) as err:
        pl.import_model(path)
    assert [(r.node, r.op_type) for r in err.value.refusals] == [("ids", "input")] and "INT64" in str(err.value)
    rc, out, err_text = run_main(capsys, "norm", str(path))
    assert rc == 3 and "'ids'" not in out and "ids" in err_text and "Traceback" not in err_text


# ---------------------------------------------------------------------------------------------
# onnxruntime's fused contrib ops (ORT_ENABLE_EXTENDED): FusedConv / FusedGemm
# ---------------------------------------------------------------------------------------------


def _fused(activation: str, params: list[float], with_z: bool, fused: bool) -> onnx.ModelProto:
    """x[1,2,5,5] → Conv(3x3, pad 1, bias) [+ z: a 1x1 conv of x] → activation → Flatten → Gemm → Relu
    → Gemm: written with com.microsoft FusedConv/FusedGemm (``fused``) or with the standard ops."""
    rng = np.random.default_rng(11)
    inits = {"W": rng.normal(size=(3, 2, 3, 3)), "B": rng.normal(size=3), "Wz": rng.normal(size=(3, 2, 1, 1)),
             "W2": rng.normal(size=(75, 4)), "B2": rng.normal(size=4), "W3": rng.normal(size=(4, 2)), "B3": rng.normal(size=2)}
    z = [helper.make_node("Conv", ["x", "Wz"], ["z"], name="zconv")] if with_z else []
    if fused:
        conv = [helper.make_node("FusedConv", ["x", "W", "B", *(["z"] if with_z else [])], ["a"], domain="com.microsoft",
                                 pads=[1, 1, 1, 1], kernel_shape=[3, 3], activation=activation,
                                 **({"activation_params": params} if params else {}))]
        gemm = [helper.make_node("FusedGemm", ["f", "W2", "B2"], ["r2"], domain="com.microsoft", activation="Relu")]
    else:
        conv = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
        conv += [helper.make_node("Add", ["c", "z"], ["cz"])] if with_z else []
        x = "cz" if with_z else "c"
        if activation == "LeakyRelu":  # its DAG-ReLU form α·x + (1 − α)·relu(x), which the oracle can probe
            inits.update(al=np.array(params[0]), oma=np.array(1 - params[0]))
            conv += [helper.make_node("Relu", [x], ["rl"]), helper.make_node("Mul", [x, "al"], ["m1"]),
                     helper.make_node("Mul", ["rl", "oma"], ["m2"]), helper.make_node("Add", ["m1", "m2"], ["a"])]
        else:
            conv += [helper.make_node(activation, [x], ["a"])]
        gemm = [helper.make_node("Gemm", ["f", "W2", "B2"], ["g2"]), helper.make_node("Relu", ["g2"], ["r2"])]
    nodes = z + conv + [helper.make_node("Flatten", ["a"], ["f"])] + gemm + [helper.make_node("Gemm", ["r2", "W3", "B3"], ["y"])]
    model = net([1, 2, 5, 5], nodes, [1, 2], inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


@pytest.mark.parametrize(("activation", "params", "with_z"), [("Relu", [], False), ("Relu", [], True),
                                                              ("LeakyRelu", [0.125], True)])
def test_onnxruntime_fused_ops_import_as_their_standard_ops(activation: str, params: list[float], with_z: bool) -> None:
    fused, plain = _fused(activation, params, with_z, True), _fused(activation, params, with_z, False)
    dag = pl.import_model(fused)
    assert verify(fused, dag, trials=3).passed  # onnxruntime runs the contrib ops themselves
    for q in (1.0, 2.0):
        assert pl.path_norm(dag, q=q).value == pytest.approx(brute_force_path_norm(plain, q) ** (1 / q), rel=1e-6)


def test_fused_conv_with_a_smooth_activation_is_refused_as_that_op() -> None:
    with pytest.raises(pl.UnsupportedModelError) as err:
        pl.import_model(_fused("Tanh", [], False, True))
    assert [r.op_type for r in err.value.refusals] == ["Tanh"] and "not piecewise-linear" in str(err.value)


def test_output_behind_an_unknown_op_names_that_op() -> None:
    """onnxruntime's ORT_ENABLE_ALL writes com.microsoft.nchwc ops, whose outputs ONNX shape inference
    cannot type: the output is still analysed, and the refusal names the unknown ops (not 'no float output')."""
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"]),
             helper.make_node("ReorderOutput", ["g"], ["o"], domain="com.microsoft.nchwc", name="reorder"),
             helper.make_node("Gemm", ["o", "W2"], ["y"])]
    model = net([1, 3], nodes, None, {"W": np.ones((3, 4)), "W2": np.ones((4, 2))})
    model.opset_import.append(helper.make_opsetid("com.microsoft.nchwc", 1))
    with pytest.raises(pl.UnsupportedModelError) as err:
        pl.import_model(model)
    assert [(r.node, r.op_type) for r in err.value.refusals] == [("reorder", "ReorderOutput")]


def test_fused_conv_with_mistyped_attributes_is_an_invalid_model(tmp_path, capsys) -> None:
    model = _fused("Relu", [], False, True)
    conv = next(n for n in model.graph.node if n.op_type == "FusedConv")
    del conv.attribute[[a.name for a in conv.attribute].index("activation")]
    conv.attribute.append(helper.make_attribute("activation", 7))
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    rc, _, err = run_main(capsys, "norm", path)
    assert rc == 4 and "FusedConv" in err and "activation" in err and "Traceback" not in err
