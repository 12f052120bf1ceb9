"""Slice, Split, Gather, DepthToSpace/SpaceToDepth, Resize/Upsample (nearest): each configuration
between a conv and a dense layer, against the brute-force oracle (path-norms, path-magnitude scores),
the re-emission check and the static/dynamic scale modes; the nearest index rule against
onnxruntime's own Resize; refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import floats, ints, make_model, net, one_op, sandwich
from checks import assert_scores_are_brute_force_drops
from onnx import TensorProto, helper, numpy_helper
from oracle import brute_force_path_norm

import onnx_pathlift as pl
from onnx_pathlift.backend.norm import PathNormSession
from onnx_pathlift.backend.verify import verify
from onnx_pathlift.ops import kind_counts
from onnx_pathlift.ops.resize import nearest_index

I64 = np.iinfo(np.int64)


def _split(sizes_input: np.ndarray | None, used: list[int], n: int, opset: int, **attrs) -> onnx.ModelProto:
    """Split r into ``n`` outputs; the ``used`` ones are concatenated along the split axis (in reverse)."""
    outs = [f"s{k}" for k in range(n)]
    ins = ["r", "sz"] if sizes_input is not None else ["r"]
    nodes = [helper.make_node("Split", ins, outs, **attrs),
             helper.make_node("Concat", [outs[k] for k in reversed(used)], ["m"], axis=attrs.get("axis", 0))]
    return sandwich(nodes, {} if sizes_input is None else {"sz": sizes_input}, opset=opset)


def _resize(opset: int, scales=None, sizes=None, **attrs) -> onnx.ModelProto:
    if opset < 11:
        return one_op("Resize", ["sc"], {"sc": floats(*scales)}, opset=opset, **attrs)
    if sizes is not None:
        return one_op("Resize", ["", "", "sz"] if opset >= 13 else ["roi", "sc", "sz"],
                    {"sz": ints(*sizes), **({} if opset >= 13 else {"roi": floats(), "sc": floats()})}, opset=opset, **attrs)
    return one_op("Resize", ["", "sc"] if opset >= 13 else ["roi", "sc"], {"sc": floats(*scales), **({} if opset >= 13 else {"roi": floats()})},
                  opset=opset, **attrs)


def _depth_to_space(mode: str) -> onnx.ModelProto:
    """A 1x1 conv to 8 channels, then DepthToSpace(2) back to 2 channels."""
    nodes = [helper.make_node("Conv", ["r", "W3"], ["e"]), helper.make_node("DepthToSpace", ["e"], ["m"], blocksize=2, mode=mode)]
    return sandwich(nodes, {"W3": np.random.default_rng(7).normal(size=(8, 3, 1, 1))}, x_shape=(1, 1, 3, 4))


CASES = {
    "slice_opset9_attrs": lambda: one_op("Slice", [], {}, opset=9, starts=[1, 0], ends=[3, 100], axes=[2, 3]),
    "slice_negative_steps": lambda: one_op("Slice", ["st", "en", "ax", "sp"], {"st": ints(-1, 4), "en": ints(I64.min, 0),
                                                                             "ax": ints(1, -1), "sp": ints(-1, -2)}),
    "slice_clamped_starts_and_ends": lambda: one_op("Slice", ["st", "en", "ax", "sp"], {"st": ints(100, -100), "en": ints(-100, 100),
                                                                                      "ax": ints(2, 3), "sp": ints(-2, 3)}),
    "slice_channels_default_axes": lambda: one_op("Slice", ["st", "en"], {"st": ints(0, 1), "en": ints(1, 2)}),
    "slice_everything_is_an_alias": lambda: one_op("Slice", ["st", "en", "ax"], {"st": ints(0), "en": ints(I64.max), "ax": ints(2)}),
    "split_attr_opset11": lambda: _split(None, [0, 1], 2, 11, axis=1, split=[1, 2]),
    "split_input_uneven_unused_middle": lambda: _split(ints(1, 2, 1), [0, 2], 3, 13, axis=2),
    "split_num_outputs_opset18": lambda: _split(None, [0, 2], 3, 18, axis=3, num_outputs=3),
    "split_equal_one_output_used": lambda: _split(None, [1], 2, 13, axis=2),
    "gather_repeated_negative_indices": lambda: one_op("Gather", ["ix"], {"ix": ints(0, -1, 0, 2, 0)}, axis=2),
    "gather_scalar_index_drops_axis": lambda: one_op("Gather", ["ix"], {"ix": np.array(1, np.int64)}, axis=1),
    "gather_2d_indices_last_axis": lambda: one_op("Gather", ["ix"], {"ix": np.array([[1, 1], [4, 0]], np.int32)}, axis=-1),
    "gather_batch_axis_dense": lambda: one_op("Gather", ["ix"], {"ix": ints(1, 1, 0, 3)}, axis=0, x_shape=(4, 3)),
    "slice_batch_axis_dense": lambda: one_op("Slice", ["st", "en", "ax", "sp"], {"st": ints(-1), "en": ints(0), "ax": ints(0), "sp": ints(-2)},
                                             x_shape=(4, 3)),
    "gather_nd_pairs_repeated": lambda: one_op("GatherND", ["ix"], {"ix": ints([[0, 2], [0, 0]], [[0, 1], [0, 2]])}),
    "gather_nd_full_index_negative": lambda: one_op("GatherND", ["ix"], {"ix": ints([0, 1, 2, 3], [0, -1, 0, 0], [0, 0, 3, -1])}),
    "gather_nd_after_transpose_like_dynamo": lambda: sandwich(
        [helper.make_node("Transpose", ["r"], ["t"], perm=[2, 3, 0, 1]), helper.make_node("GatherND", ["t", "ix"], ["m"])],
        {"ix": ints([[0, 1], [1, 2]], [[2, 3], [3, 4]])}),
    "gather_elements_axis_2": lambda: one_op("GatherElements", ["ix"], {"ix": np.random.default_rng(3).integers(-4, 4, (1, 3, 2, 5))},
                                             axis=2),
    "depth_to_space_dcr": lambda: _depth_to_space("DCR"),
    "depth_to_space_crd": lambda: _depth_to_space("CRD"),
    "space_to_depth": lambda: one_op("SpaceToDepth", [], {}, x_shape=(1, 2, 5, 7), blocksize=2),
    "upsample_opset7_attr": lambda: one_op("Upsample", [], {}, opset=7, scales=[1.0, 1.0, 2.0, 1.5]),
    "upsample_opset9_input": lambda: one_op("Upsample", ["sc"], {"sc": floats(1, 1, 1.5, 2)}, opset=9, mode="nearest"),
    "resize_opset10_down_and_up": lambda: _resize(10, scales=(1, 1, 0.6, 1.7)),
    "resize_half_pixel_round_floor_x2": lambda: _resize(11, scales=(1, 1, 2, 2)),
    "resize_tf_half_pixel_for_nn": lambda: _resize(11, scales=(1, 1, 1.5, 0.5), coordinate_transformation_mode="tf_half_pixel_for_nn"),
    "resize_sizes_align_corners_round_ceil": lambda: _resize(13, sizes=(1, 3, 7, 4), coordinate_transformation_mode="align_corners",
                                                             nearest_mode="round_prefer_ceil"),
    "resize_asymmetric_floor_fractional": lambda: _resize(13, scales=(1, 1, 1.5, 1.25), coordinate_transformation_mode="asymmetric",
                                                          nearest_mode="floor"),
    "resize_pytorch_half_pixel_ceil_down": lambda: _resize(13, sizes=(1, 3, 1, 3), coordinate_transformation_mode="pytorch_half_pixel",
                                                           nearest_mode="ceil"),
    "resize_channels_too": lambda: _resize(13, scales=(1, 2, 1, 0.5)),
    "resize_opset11_sizes_empty_scales": lambda: _resize(11, sizes=(1, 3, 9, 3), nearest_mode="floor"),
    "resize_sizes_unchanged_is_a_copy": lambda: _resize(13, scales=(1, 1, 1.2, 1.1)),  # onnxruntime copies: out == in
    "resize_one_axis_keeps_size_but_remaps": lambda: _resize(13, scales=(1, 1, 1.2, 2)),
    "resize_axes_not_larger_opset18": lambda: one_op("Resize", ["", "", "sz"], {"sz": ints(9, 20)}, opset=18, axes=[2, 3],
                                                     keep_aspect_ratio_policy="not_larger"),
    "resize_half_pixel_symmetric_opset19": lambda: _resize(19, sizes=(1, 3, 7, 3), coordinate_transformation_mode="half_pixel_symmetric"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_select_op_against_oracle(case: str) -> None:
    model = CASES[case]()
    dag = pl.import_model(model)
    assert verify(model, dag, trials=3).passed
    for q in (1.0, 2.0, 4.0):
        want = brute_force_path_norm(model, q)
        assert pl.path_norm(dag, q=q).value == pytest.approx(want ** (1 / q), rel=1e-6), q


@pytest.mark.parametrize("case", sorted(CASES))
def test_select_op_scores_are_the_brute_force_drops(case: str) -> None:
    assert_scores_are_brute_force_drops(CASES[case]())


@pytest.mark.parametrize("case", ["gather_repeated_negative_indices", "resize_channels_too", "slice_negative_steps", "space_to_depth"])
def test_static_and_dynamic_scales_agree(case: str) -> None:
    dag = pl.import_model(CASES[case]())
    for q in (1.0, 4.0):
        static = PathNormSession(dag, q, scales="static").run().log10
        assert PathNormSession(dag, q, scales="dynamic").run().log10 == pytest.approx(static, rel=1e-6, abs=1e-7)


def test_selections_are_layers_not_parameters() -> None:
    dag = pl.import_model(CASES["split_input_uneven_unused_middle"]())
    ops = [layer.op for layer in dag.layers()]
    assert ops.count("slice") == 2  # one layer per used output, none for the unused middle one
    assert kind_counts(pl.import_model(CASES["slice_everything_is_an_alias"]())).get("reshape", 0) == 1  # the Flatten only


# ---------------------------------------------------------------------------------------------
# the nearest index rule against onnxruntime's Resize
# ---------------------------------------------------------------------------------------------

COORDINATES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _ort_resize_index(length: int, coordinate: str, nearest: str, scale: float | None, size: int | None, opset: int) -> list[int]:
    """Which input position each output copies, read off onnxruntime's Resize of an arange (shape [1, length])."""
    if opset < 11:
        inputs, inits, attrs = ["x", "sc"], [numpy_helper.from_array(floats(1, scale), "sc")], {}
    else:
        given = numpy_helper.from_array(floats(1, scale), "sc") if size is None else numpy_helper.from_array(ints(1, size), "sz")
        inputs = ["x", "", "sc"] if size is None else ["x", "", "", "sz"]
        inits, attrs = [given], {"coordinate_transformation_mode": coordinate, "nearest_mode": nearest}
    node = helper.make_node("Resize", inputs, ["y"], mode="nearest", **attrs)
    m = make_model([node], [("x", [1, length])], [("y", None)], inits, opset=opset, name="r")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return [int(v) for v in sess.run(None, {"x": np.arange(length, dtype=np.float32)[None]})[0][0]]


@pytest.mark.parametrize("coordinate", COORDINATES)
def test_nearest_index_rule_matches_onnxruntime(coordinate: str) -> None:
    rng = np.random.default_rng(1)
    for nearest in NEAREST:
        for length in (1, 2, 3, 5, 7, 10, 13):
            for scale in (0.3, 0.5, 2 / 3, 1.5, 2.0, 3.0, float(rng.uniform(0.2, 4.0))):
                out = int(np.float32(scale) * np.float32(length))
                if out == 0:
                    continue
                got = nearest_index(length, out, scale, coordinate, nearest)
                assert got == _ort_resize_index(length, coordinate, nearest, scale, None, 19), (nearest, length, scale)
            for size in {1, 2, length + 1, 2 * length + 1, max(1, length // 3)}:
                scale = np.float32(size) / np.float32(length)
                if scale == 1:
                    continue
                got = nearest_index(length, size, scale, coordinate, nearest)
                assert got == _ort_resize_index(length, coordinate, nearest, None, size, 19), (nearest, length, size)


def test_nearest_index_rule_of_resize_10_matches_onnxruntime() -> None:
    for length in (2, 5, 9):
        for scale in (0.4, 0.5, 0.75, 1.5, 2.5):
            out = int(np.float32(scale) * np.float32(length))
            if out:
                assert nearest_index(length, out, scale, "asymmetric", "simple") == \
                    _ort_resize_index(length, "", "", scale, None, 10), (length, scale)


# ---------------------------------------------------------------------------------------------
# refusals name the node and say why
# ---------------------------------------------------------------------------------------------


def _refused(nodes: list, params: dict, extra_inputs=(), opset: int = 18) -> tuple[str, str, str]:
    """Import x[1,2,5,6] → Conv → Relu = r → ``nodes`` (r → … → y); return the single refusal (node, op, message)."""
    model = net([1, 2, 5, 6], [helper.make_node("Conv", ["x", "W1"], ["c"], kernel_shape=[2, 2]),
                               helper.make_node("Relu", ["c"], ["r"]), *nodes], None,
                {"W1": np.ones((3, 2, 2, 2)), **params}, opset=opset)
    model.graph.input.extend(helper.make_tensor_value_info(n, t, s) for n, t, s in extra_inputs)
    with pytest.raises(pl.UnsupportedModelError) as err:
        pl.import_model(model)
    (r,) = err.value.refusals
    return r.node, r.op_type, str(err.value)


def test_resize_linear_is_refused_honestly() -> None:
    node, op, msg = _refused([helper.make_node("Resize", ["r", "", "sc"], ["y"], mode="linear", name="up")], {"sc": floats(1, 1, 2, 2)})
    assert (node, op) == ("up", "Resize")
    assert "up (Resize)" in msg and "linear in x" in msg and "not implemented" in msg


def test_dynamic_scales_are_refused() -> None:
    node, op, msg = _refused([helper.make_node("Resize", ["r", "", "sc"], ["y"], name="dyn")], {},
                             [("sc", TensorProto.FLOAT, [4])])
    assert (node, op) == ("dyn", "Resize") and "'sc'" in msg and "computed at run time" in msg


def test_crop_and_resize_antialias_and_bad_indices_are_refused() -> None:
    crop = helper.make_node("Resize", ["r", "roi", "sc"], ["y"], coordinate_transformation_mode="tf_crop_and_resize", name="crop")
    node, _, msg = _refused([crop], {"roi": floats(0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9), "sc": floats(1, 1, 2, 2)})
    assert node == "crop" and "tf_crop_and_resize" in msg
    node, _, msg = _refused([helper.make_node("Resize", ["r", "", "sc"], ["y"], antialias=1, name="aa")], {"sc": floats(1, 1, 2, 2)})
    assert node == "aa" and "antialias" in msg
    node, _, msg = _refused([helper.make_node("Gather", ["r", "ix"], ["y"], axis=3, name="far")], {"ix": ints(0, 5)})
    assert node == "far" and "out of range" in msg


def test_flat_copy_maps_of_huge_tensors_are_refused() -> None:
    """A GatherND over more than 2**24 neurons would need a position per neuron: refused, not allocated."""
    nodes = [helper.make_node("GatherND", ["x", "ix"], ["g"], name="big"), helper.make_node("Relu", ["g"], ["y"])]
    model = net([1, 1, 4097, 4097], nodes, [1, 4097, 4097], {"ix": ints([0, 0])})
    with pytest.raises(pl.UnsupportedModelError, match="big .GatherND.*copy map"):
        pl.import_model(model)
