"""Why an op without an import rule cannot be part of a ReLU network (the text users see), and the
role at the end of a network of those that end classifiers (the importer cuts them off there)."""

from __future__ import annotations

from onnx import NodeProto

from .registry import head_role, label_lookup

_SMOOTH = "a smooth nonlinearity is not piecewise-linear, so the network is not a DAG-ReLU network"
_NORM = "normalizes by statistics of its own input, which is not positively homogeneous"
REASONS: dict[str, str] = {
    **dict.fromkeys(["Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Erf", "Gelu", "Softplus", "Softsign", "Elu",
                     "Selu", "Celu", "Mish", "HardSigmoid", "HardSwish", "Sin", "Cos", "Reciprocal"], _SMOOTH),
    **dict.fromkeys(["Softmax", "LogSoftmax", "Hardmax"], "softmax in the middle of the network is not piecewise-linear"),
    **dict.fromkeys(["LRN", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
                     "LpNormalization", "MeanVarianceNormalization"], _NORM),
    **dict.fromkeys(["If", "Loop", "Scan"], "data-dependent control flow has no fixed DAG of neurons"),
    **dict.fromkeys(["Attention", "MultiHeadAttention"], "attention multiplies activations together"),
    "Pow": "a power of an activation is not positively homogeneous of degree 1",
    "Abs": "|x| is piecewise-linear but not yet supported (it needs two ReLUs)",
    "ReduceProd": "a product of activations is not positively homogeneous of degree 1",
    "ReduceSumSquare": "a sum of squared activations is not positively homogeneous of degree 1",
    "ReduceL2": "the Euclidean norm of activations is not piecewise-linear",
    "ReduceL1": "a sum of |x| is piecewise-linear but not yet supported (each |x| needs two ReLUs)",
    **dict.fromkeys(["ReduceLogSum", "ReduceLogSumExp"], _SMOOTH),
}
head_role("head", "Softmax", "LogSoftmax", "Sigmoid", "ZipMap")
head_role("picker", "ArgMax", "ArgMin", "TopK", "Hardmax")
head_role("carrier", "CastLike")
label_lookup("ArrayFeatureExtractor", 0, 1)
label_lookup("LabelEncoder", None, 0)


def reason_for(node: NodeProto) -> str:
    """The refusal text for a node that no import rule handles."""
    if node.domain not in ("", "ai.onnx"):
        return f"operator of the non-standard domain {node.domain!r}: its semantics are unknown"
    return REASONS.get(node.op_type, f"no import rule for {node.op_type} (not in the supported set)")
