"""One conv net written in the idioms of every opset from 7 to 23 (attributes that became inputs,
Upsample → Resize, Split/Squeeze/Reduce axes, Clip bounds), against the brute-force oracle and the
re-emission check: the importer reads each opset's form of each op exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import make_model
from onnx import helper, numpy_helper
from oracle import brute_force_path_norm

import onnx_pathlift as pl
from onnx_pathlift.backend.verify import verify

OPSETS = range(7, 24)


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _clip(opset: int, explicit_clip: bool, nodes: list, inits: list) -> None:
    """bn → Clip(0, 6) → r, in the opset's spelling (or the oracle's explicit form)."""
    node = helper.make_node
    if explicit_clip:  # the oracle's form of Clip(0, 6) (notes §2): 6 − relu(6 − relu(x))
        inits.append(numpy_helper.from_array(np.full((1, 1, 1, 1), 6, np.float32), "six"))
        nodes += [node("Relu", ["bn"], ["r0"]), node("Sub", ["six", "r0"], ["r1"]), node("Relu", ["r1"], ["r2"]),
                  node("Sub", ["six", "r2"], ["r"])]
    elif opset < 11:
        nodes.append(node("Clip", ["bn"], ["r"], min=0.0, max=6.0))
    else:
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(node("Clip", ["bn", "lo", "hi"], ["r"]))


def _pad_and_upsample(opset: int, nodes: list, inits: list) -> None:
    """p → Pad → pd → Upsample/Resize ×2 → u, in the opset's spelling."""
    node = helper.make_node
    if opset < 11:
        nodes.append(node("Pad", ["p"], ["pd"], pads=[0, 0, 1, 0, 0, 0, 0, 1], mode="constant"))
    else:
        inits.append(_ints("pads", [0, 0, 1, 0, 0, 0, 0, 1]))
        nodes.append(node("Pad", ["p", "pads"], ["pd"], mode="constant"))  # (1,4,3,3)
    scales = np.array([1, 1, 2, 2], np.float32)
    if opset < 9:
        nodes.append(node("Upsample", ["pd"], ["u"], mode="nearest", scales=scales.tolist()))
    elif opset < 10:
        inits.append(numpy_helper.from_array(scales, "scales"))
        nodes.append(node("Upsample", ["pd", "scales"], ["u"], mode="nearest"))
    elif opset < 11:
        inits.append(numpy_helper.from_array(scales, "scales"))
        nodes.append(node("Resize", ["pd", "scales"], ["u"], mode="nearest"))
    else:  # roi is a required input in opsets 11-12, optional after
        inits += [numpy_helper.from_array(scales, "scales"), numpy_helper.from_array(np.zeros(0, np.float32), "roi")]
        nodes.append(node("Resize", ["pd", "roi" if opset < 13 else "", "scales"], ["u"], mode="nearest"))  # (1,4,6,6)


def _split_add_reduce(opset: int, nodes: list, inits: list) -> None:
    """u → Split in two channel halves → Add → ReduceMean over H,W → Squeeze → sq, in the opset's spelling."""
    node = helper.make_node
    if opset < 13:
        nodes.append(node("Split", ["u"], ["s1", "s2"], axis=1, split=[2, 2]))
    elif opset < 18:
        inits.append(_ints("split", [2, 2]))
        nodes.append(node("Split", ["u", "split"], ["s1", "s2"], axis=1))
    else:
        nodes.append(node("Split", ["u"], ["s1", "s2"], axis=1, num_outputs=2))
    nodes.append(node("Add", ["s1", "s2"], ["a"]))  # (1,2,6,6)
    if opset < 18:
        nodes.append(node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=1))
    else:
        inits.append(_ints("raxes", [2, 3]))
        nodes.append(node("ReduceMean", ["a", "raxes"], ["m"], keepdims=1))
    if opset < 13:
        nodes.append(node("Squeeze", ["m"], ["sq"], axes=[2, 3]))
    else:
        inits.append(_ints("saxes", [2, 3]))
        nodes.append(node("Squeeze", ["m", "saxes"], ["sq"]))


def _net(opset: int, explicit_clip: bool = False) -> onnx.ModelProto:
    """x (1,1,4,4) → Conv → BN → Clip(0,6) → MaxPool → Pad → Upsample/Resize ×2 → Split in two channel
    halves → Add → ReduceMean over H,W → Squeeze → Gemm, with the IR version of its time (3 before
    opset 9: every initializer also a graph input)."""
    rng = np.random.default_rng(opset)
    f32 = {"W": rng.normal(size=(4, 1, 3, 3)), "B": rng.normal(size=4), "gamma": rng.uniform(0.5, 2, 4),
           "beta": rng.normal(size=4), "mean": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4),
           "G": rng.normal(size=(3, 2)), "C": rng.normal(size=3)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in f32.items()]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3)]
    _clip(opset, explicit_clip, nodes, inits)
    nodes.append(helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]))  # (1,4,2,2)
    _pad_and_upsample(opset, nodes, inits)
    _split_add_reduce(opset, nodes, inits)
    nodes.append(helper.make_node("Gemm", ["sq", "G", "C"], ["y"], transB=1))
    inputs = [("x", [1, 1, 4, 4])]
    if opset < 9:  # IR version 3 (Caffe2-era files): every initializer is also a graph input
        inputs += [(t.name, t.dims, t.data_type) for t in inits]
    model = make_model(nodes, inputs, [("y", [1, 3])], inits, opset=opset, name=f"opset{opset}",
                       ir_version=3 if opset < 9 else 7 if opset < 15 else 8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("opset", OPSETS)
def test_every_opset_form_imports_exactly(opset: int) -> None:
    model = _net(opset)
    dag = pl.import_model(model)
    explicit = _net(opset, explicit_clip=True)
    for q in (1.0, 2.0):
        assert pl.path_norm(dag, q).value == pytest.approx(brute_force_path_norm(explicit, q) ** (1 / q), rel=1e-6)
    assert verify(model, dag).passed
