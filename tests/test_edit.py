"""The one model editor (``frontend/edit.py``): constants read and replaced in initializers and ``Constant``
nodes, IR-3 graph inputs retyped with them, shared initializers found; the edited model checked by
onnxruntime and ONNX's checker (real sessions, real protobuf)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_pathlift.backend.runtime import make_session
from onnx_pathlift.frontend.edit import ModelEditor, copy_model


def _model(ir_version: int = 8) -> onnx.ModelProto:
    """y = (x @ W) + c + (x @ W): ``W`` an initializer read twice, ``c`` a Constant node."""
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "W")
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(3, np.float32)))
    nodes = [c, helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["x", "W"], ["b"]),
             helper.make_node("Add", ["a", "c"], ["ac"]), helper.make_node("Add", ["ac", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])]
    if ir_version < 4:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [2, 3]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    return model


def test_reads_and_writes_initializers_and_constant_nodes():
    source = _model()
    out = copy_model(source)
    editor = ModelEditor(out)
    assert "W" in editor and "c" in editor and "x" not in editor
    np.testing.assert_array_equal(editor.get("c"), np.ones(3, np.float32))
    editor.set("W", editor.get("W") * 2)
    editor.set("c", np.full(3, 5.0, np.float32))
    assert numpy_helper.to_array(source.graph.initializer[0])[1, 2] == 5.0  # the source is untouched
    x = np.array([[1.0, -1.0]], np.float32)
    expected = 2 * (x @ (2 * np.arange(6, dtype=np.float32).reshape(2, 3))) + 5.0
    np.testing.assert_allclose(make_session(out).run(None, {"x": x})[0], expected, rtol=1e-6)
    assert editor.shared() == {"W", "x"}


def test_ir3_input_retyped_only_when_the_shape_changes():
    """IR-3 files list initializers as graph inputs: a new shape is written there too, the same shape
    leaves the input as it was."""
    model = _model(ir_version=3)
    editor = ModelEditor(model)
    before = model.graph.input[1].SerializeToString()
    editor.set("W", np.zeros((2, 3), np.float32))
    assert model.graph.input[1].SerializeToString() == before
    editor.set("W", np.zeros((2, 2), np.float32))
    dims = [d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert dims == [2, 2]
