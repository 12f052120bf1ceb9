"""onnxruntime's fused contrib ops (``com.microsoft``), declared with the standard ops they are written back as.

``onnxruntime`` at ``ORT_ENABLE_EXTENDED`` (and a model saved with ``optimized_model_filepath``) fuses a
Conv or Gemm with the activation after it into ``com.microsoft`` ``FusedConv`` / ``FusedGemm``:

* ``FusedConv(X, W, B?, Z?)`` = ``activation(Conv(X, W, B) + Z)`` (``Z``: a fused residual sum);
* ``FusedGemm(A, B, C?)`` = ``activation(Gemm(A, B, C))`` with Gemm's alpha, beta, transA, transB.

The activation is named by the ``activation`` attribute with its parameters in ``activation_params``
(FusedConv) or ``activation_alpha`` / ``activation_beta`` (FusedGemm). Each fused node becomes the
standard nodes in that order (the last one keeps the node's name and output), so shape inference,
folding and the import rules see ordinary ONNX; an activation outside Relu / LeakyRelu / Clip becomes
its own standard op and is refused there with the usual reason.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper, numpy_helper

from .registry import unfuses

_MS = "com.microsoft"
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_GEMM_ATTRS = ("alpha", "beta", "transA", "transB")


def _attrs(node: NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _activation(node: NodeProto, x: str, a: dict, params: list[float], opset: int) -> list[NodeProto]:
    """The activation node(s) reading ``x`` and writing the fused node's output."""
    kind = a.get("activation", b"")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"activation {kind!r} is not an op name")
    name, out = node.name or node.output[0], node.output[0]
    if not kind:
        return [helper.make_node("Identity", [x], [out], name=name)]
    if kind == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [x], [out], name=name, alpha=params[0] if params else 0.01)]
    if kind == "Clip" and opset >= 11:
        bounds = [numpy_helper.from_array(np.array(v, np.float32)) for v in (params + [-np.inf, np.inf])[:2]]
        consts = [helper.make_node("Constant", [], [f"{out}/clip_{k}"], value=t, name=f"{name}/clip_{k}")
                  for k, t in zip(("min", "max"), bounds)]
        return [*consts, helper.make_node("Clip", [x, *(c.output[0] for c in consts)], [out], name=name)]
    if kind == "Clip":
        lo, hi = (params + [-3.4e38, 3.4e38])[:2]
        return [helper.make_node("Clip", [x], [out], name=name, min=lo, max=hi)]
    return [helper.make_node(kind, [x], [out], name=name)]  # Relu, or refused as that op (Tanh, Sigmoid, ...)


@unfuses(_MS, "FusedConv")
def _fused_conv(node: NodeProto, opset: int) -> list[NodeProto]:
    """``activation(Conv(X, W, B) + Z)``: Conv, Add (when ``Z`` is given), the activation."""
    a, name = _attrs(node), node.name or node.output[0]
    pre = node.output[0] + "/" + node.op_type
    ins = list(node.input)
    conv = helper.make_node("Conv", ins[:3], [pre], name=f"{name}/conv", **{k: a[k] for k in _CONV_ATTRS if k in a})
    nodes, x = [conv], pre
    if len(ins) > 3 and ins[3]:
        nodes.append(helper.make_node("Add", [pre, ins[3]], [pre + "/sum"], name=f"{name}/sum"))
        x = pre + "/sum"
    return nodes + _activation(node, x, a, [float(v) for v in a.get("activation_params", [])], opset)


@unfuses(_MS, "FusedGemm")
def _fused_gemm(node: NodeProto, opset: int) -> list[NodeProto]:
    """``activation(Gemm(A, B, C))``: Gemm, the activation."""
    a, name = _attrs(node), node.name or node.output[0]
    pre = node.output[0] + "/" + node.op_type
    gemm = helper.make_node("Gemm", list(node.input), [pre], name=f"{name}/gemm", **{k: a[k] for k in _GEMM_ATTRS if k in a})
    params = [float(a[k]) for k in ("activation_alpha", "activation_beta") if k in a]
    return [gemm, *_activation(node, pre, a, params, opset)]
