"""Test models, built in one place: from nodes (``make_model``) or from ONNX text (``from_text``), and the
parameter edits every test module makes on them (read, replace, zero one weight, drop a fraction,
multiplicative noise, sign flips).

Conventions, shared by every builder: float32 tensors, opset 17 and IR version 8 unless asked (the IR
version rises to the minimum a newer opset needs); an initializer given as a float64 array (numpy's
default) is stored as float32, any other dtype (int64 shapes, float16, int8 zero points) as given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from oracle import one_hidden_layer_path_norm

OPSET = 17
IR_VERSION = 8

# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def initializer(name: str, value) -> onnx.TensorProto:
    """``value`` as a named tensor: float64 becomes float32, every other dtype is kept."""
    a = np.asarray(value)
    return numpy_helper.from_array(a.astype(np.float32) if a.dtype == np.float64 else a, name)


def _value_info(spec: tuple | onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``(name, shape[, elem_type])`` (shape None: unknown rank; elem_type default float32), or a
    ``ValueInfoProto`` kept as it is."""
    if isinstance(spec, onnx.ValueInfoProto):
        return spec
    name, shape, *elem = spec
    return helper.make_tensor_value_info(name, elem[0] if elem else TensorProto.FLOAT, None if shape is None else list(shape))


def _tensors(inits: Mapping[str, object] | Iterable[onnx.TensorProto]) -> list[onnx.TensorProto]:
    return [initializer(k, v) for k, v in inits.items()] if isinstance(inits, Mapping) else list(inits)


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Iterable[tuple], outputs: Iterable[tuple],
          inits: Mapping[str, object] | Iterable[onnx.TensorProto] | None = None, *, opset: int = OPSET, name: str = "g", producer: str = "",
          extra_opsets: Mapping[str, int] | None = None, ir_version: int | None = None) -> onnx.ModelProto:
    """A model of ``nodes`` with the given graph ``inputs``/``outputs`` (``(name, shape[, elem_type])``)
    and initializers ``inits`` (``{name: array}``, see ``initializer``, or ready ``TensorProto``s).
    ``extra_opsets``: other domains' versions (``{"ai.onnx.ml": 1}``); ``ir_version``: default 8, or
    the minimum the opsets need."""
    graph = helper.make_graph(list(nodes), name, [_value_info(s) for s in inputs], [_value_info(s) for s in outputs],
                              _tensors(inits or {}))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    out = helper.make_model(graph, opset_imports=opsets, **({"producer_name": producer} if producer else {}))
    out.ir_version = ir_version or max(IR_VERSION, helper.find_min_ir_version_for(opsets))
    return out


def net(x_shape, nodes: Sequence[onnx.NodeProto], out_shape, params: Mapping[str, object], out: str = "y",
        opset: int = OPSET) -> onnx.ModelProto:
    """``make_model`` with the one input ``x`` and the one output ``out``."""
    return make_model(nodes, [("x", x_shape)], [(out, out_shape)], params, opset=opset, name="op")


def inferred_net(x_shape, nodes: Sequence[onnx.NodeProto], params: Mapping[str, object], opset: int = OPSET) -> onnx.ModelProto:
    """``net`` whose output ``y`` is typed (shape included) by ONNX's strict shape inference."""
    built = net(x_shape, nodes, None, params, opset=opset)
    inferred = onnx.shape_inference.infer_shapes(built, strict_mode=True)
    built.graph.output[0].CopyFrom(next(v for v in inferred.graph.output if v.name == "y"))
    return built


def from_text(text: str, inits: Mapping[str, object] | None = None) -> onnx.ModelProto:
    """A model from the ONNX textual syntax (``onnx.parser``), checked by ``onnx.checker``; ``inits``
    are appended as initializers (see ``initializer``), so weights need not be spelt in the text."""
    out = onnx.parser.parse_model(text)
    out.graph.initializer.extend(initializer(k, v) for k, v in (inits or {}).items())
    onnx.checker.check_model(out, full_check=True)
    return out


def ints(*v: int) -> np.ndarray:
    """An int64 vector (shapes, axes, pads given as inputs)."""
    return np.array(v, np.int64)


def floats(*v: float) -> np.ndarray:
    """A float32 vector."""
    return np.array(v, np.float32)


def weight_stream(seed: int) -> Callable[..., np.ndarray]:
    """``w(*shape)``: standard normal float32 weights of ``shape``, drawn in turn from one generator."""
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.normal(size=shape).astype(np.float32)


def save(built: onnx.ModelProto, path: Path) -> Path:
    onnx.save(built, str(path))
    return path


def normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """N(0, 1/fan_in) weights of ``shape``."""
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)


def bn_params(rng: np.random.Generator, prefix: str, c: int) -> dict[str, np.ndarray]:
    """Random BatchNormalization parameters ``<prefix>_gamma`` (either sign), ``_beta``, ``_mean``, ``_var`` (> 0)."""
    return {
        f"{prefix}_gamma": rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c),
        f"{prefix}_beta": rng.normal(0.2, 0.5, c),
        f"{prefix}_mean": rng.normal(0.0, 0.5, c),
        f"{prefix}_var": rng.uniform(0.5, 2.0, c),
    }


def bn_node(prefix: str, x: str, y: str) -> onnx.NodeProto:
    """BatchNormalization ``x → y`` (ε = 1e-3) on the parameters ``bn_params`` names."""
    return helper.make_node("BatchNormalization", [x, f"{prefix}_gamma", f"{prefix}_beta", f"{prefix}_mean", f"{prefix}_var"],
                            [y], epsilon=1e-3)


# --------------------------------------------------------------------------------------------
# small networks several modules use
# --------------------------------------------------------------------------------------------

# the hand-computable network  y = W2 relu(W1 x + b1) + b2  (Gemm with transB=1: rows are neurons)
W1 = np.array([[1, -2, 0, 3], [2, 1, -1, 0], [0, 0, 1, 1]], np.float32)  # hidden x input: u_j = W1[j]
B1 = np.array([1, -1, 2], np.float32)
W2 = np.array([[1, 2, -1], [-3, 0, 1]], np.float32)  # output x hidden: v_j (per output k) = W2[k, j]
B2 = np.array([1, -2], np.float32)
HAND = {"W1": W1, "b1": B1, "W2": W2, "b2": B2}


def hand_nodes(out: str = "y") -> list[onnx.NodeProto]:
    """fc1 (Gemm transB) → relu1 → fc2 writing ``out``: the hand network's nodes on input ``x``."""
    return [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="relu1"),
            helper.make_node("Gemm", ["r", "W2", "b2"], [out], name="fc2", transB=1)]


def hand_mlp(input_shape=(1, 4), softmax: bool = False, out_shape=None) -> onnx.ModelProto:
    """The hand network on ``x[input_shape]``; ``softmax``: then a Softmax head ``p``."""
    nodes, out = hand_nodes(), "y"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["y"], ["p"], name="head_softmax", axis=1))
        out = "p"
    return make_model(nodes, [("x", input_shape)], [(out, out_shape)], HAND)


def hand_norm(q: float) -> float:
    """``||Φ||_q`` of the hand network, in closed form (float64): 49 for q = 1."""
    return one_hidden_layer_path_norm(W1, B1, W2, B2, q)


def random_mlp(seed: int, activation: str = "Relu") -> onnx.ModelProto:
    """A 4 → 8 → 3 network (Gemm, ``activation``, Gemm) with standard normal weights from ``seed``."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node(activation, ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"])]
    weights = {"w1": rng.standard_normal((4, 8)), "b1": rng.standard_normal(8), "w2": rng.standard_normal((8, 3)),
               "b2": rng.standard_normal(3)}
    return make_model(nodes, [("x", [1, 4])], [("y", [1, 3])], weights)


def write_mlps(folder: Path, names: list[str], unsupported: int = 0, invalid: int = 0) -> Path:
    """``names``: distinct ReLU MLPs; then ``unsupported`` Tanh nets and ``invalid`` non-ONNX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        (folder / f"{name}.onnx").write_bytes(random_mlp(seed).SerializeToString())
    for k in range(unsupported):
        (folder / f"tanh_{k}.onnx").write_bytes(random_mlp(100 + k, "Tanh").SerializeToString())
    for k in range(invalid):
        (folder / f"garbage_{k}.onnx").write_bytes(b"this is not an ONNX model")
    return folder


def sandwich(nodes: list, params: dict, x_shape=(1, 2, 5, 6), opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """x → Conv(2x2, bias) (or Gemm for a rank-2 x) → Relu = r → ``nodes`` (r → m) → Flatten → Gemm(bias) → y[.., 3]."""
    rng = np.random.default_rng(seed)
    if len(x_shape) == 2:
        head, w1 = [helper.make_node("Gemm", ["x", "W1", "B1"], ["c"])], rng.normal(size=(x_shape[1], 3))
    else:
        head, w1 = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], kernel_shape=[2, 2])], rng.normal(size=(3, x_shape[1], 2, 2))
    head.append(helper.make_node("Relu", ["c"], ["r"]))
    weights = {"W1": w1, "B1": rng.normal(size=3), **params}
    body = net(list(x_shape), head + nodes, None, weights, out="m", opset=opset)
    dims = ort.InferenceSession(body.SerializeToString()).run(["m"], {"x": np.zeros(x_shape, np.float32)})[0].shape
    features = int(np.prod(dims[1:]))
    tail = [helper.make_node("Flatten", ["m"], ["f"], axis=1), helper.make_node("Gemm", ["f", "W2", "B2"], ["y"])]
    return net(list(x_shape), head + nodes + tail, [dims[0], 3],
               {**weights, "W2": rng.normal(size=(features, 3)), "B2": rng.normal(size=3)}, opset=opset)


def one_op(op: str, inputs: list[str], params: dict, opset: int = OPSET, x_shape=(1, 2, 5, 6), **attrs) -> onnx.ModelProto:
    """``sandwich`` around the one node ``op(r, *inputs) → m``."""
    return sandwich([helper.make_node(op, ["r", *inputs], ["m"], **attrs)], params, x_shape, opset)


# --------------------------------------------------------------------------------------------
# parameters: read, replace, zero, drop, perturb
# --------------------------------------------------------------------------------------------


def inits(built: onnx.ModelProto, dtype=None) -> dict[str, np.ndarray]:
    """Every initializer as an array; ``dtype``: as writable copies of that dtype."""
    arrays = {i.name: numpy_helper.to_array(i) for i in built.graph.initializer}
    return arrays if dtype is None else {k: v.astype(dtype) for k, v in arrays.items()}


def replace_inits(built: onnx.ModelProto, new: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``built`` with the named initializers replaced (each keeps its own dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(built)
    for init in out.graph.initializer:
        if init.name in new:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(np.asarray(new[init.name]).astype(dtype), init.name))
    return out


def zeroed(built: onnx.ModelProto, name: str, index: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of ``built`` with entry ``index`` of initializer ``name`` set to 0 (every other byte kept)."""
    weights = inits(built)[name].copy()
    weights[index] = 0
    return replace_inits(built, {name: weights})


def param_roles(built: onnx.ModelProto) -> tuple[list[str], list[str], list[list[str]]]:
    """Initializers that are Conv/Gemm/MatMul weights, their biases, and BN (γ, β, μ, var) names."""
    names = {i.name for i in built.graph.initializer if numpy_helper.to_array(i).dtype.kind == "f"}
    weights, biases, bns = [], [], []
    for node in built.graph.node:
        ins = list(node.input)
        if node.op_type == "Conv":
            weights += [n for n in ins[1:2] if n in names]
            biases += [n for n in ins[2:3] if n in names]
        elif node.op_type in ("Gemm", "MatMul"):
            weights += [n for n in ins[:2] if n in names]
            if node.op_type == "Gemm":
                biases += [n for n in ins[2:3] if n in names]
        elif node.op_type == "BatchNormalization":
            bns.append(ins[1:5])
    return list(dict.fromkeys(weights)), list(dict.fromkeys(biases)), bns


def dropped(built: onnx.ModelProto, rng: np.random.Generator, frac: float, names: Iterable[str] | None = None) -> onnx.ModelProto:
    """Zero a random ``frac`` of each initializer in ``names`` (default: every Conv/Gemm/MatMul weight):
    each entry independently, with probability ``frac``."""
    p = inits(built)
    names = param_roles(built)[0] if names is None else list(names)
    assert names
    new = {}
    for n in names:
        a = p[n].astype(np.float64)
        a[rng.random(a.shape) < frac] = 0.0
        new[n] = a
    return replace_inits(built, new)


def noise(built: onnx.ModelProto, rng: np.random.Generator, everything: bool = True) -> onnx.ModelProto:
    """Multiplicative noise U(0.5, 1.5) per coordinate: signs are kept.

    ``everything``: every float initializer (weights, biases, Sub/Mul/Add constants); otherwise only
    Conv/Gemm/MatMul weights and biases. BatchNormalization is imported as ``s = γ/√(var+ε)``,
    ``t = β − μ s``: noise on γ alone could flip the sign of ``t``, so γ and β get the *same*
    per-channel factor (then ``s`` and ``t`` both scale by it) and μ, var stay."""
    p = inits(built)
    weights, biases, bns = param_roles(built)
    bn_fixed = {n for bn in bns for n in bn}
    targets = weights + biases
    if everything:
        targets += [n for n, v in p.items() if v.dtype.kind == "f" and n not in bn_fixed]
    new = {n: p[n].astype(np.float64) * rng.uniform(0.5, 1.5, p[n].shape) for n in dict.fromkeys(targets)}
    for gamma, beta, _, _ in bns:
        f = rng.uniform(0.5, 1.5, p[gamma].shape)
        new[gamma], new[beta] = p[gamma] * f, p[beta] * f
    return replace_inits(built, new)


def flip(built: onnx.ModelProto, rng: np.random.Generator, frac: float) -> tuple[onnx.ModelProto, dict]:
    """Flip the sign of a random ``frac`` of every Conv/Gemm/MatMul weight (at least one per
    tensor); also return the boolean masks of the flipped coordinates."""
    p = inits(built)
    new, masks = {}, {}
    for n in param_roles(built)[0]:
        a = p[n].astype(np.float64)
        mask = (rng.random(a.shape) < frac) & (a != 0)
        mask.flat[rng.choice(np.flatnonzero(a))] = True
        new[n], masks[n] = np.where(mask, -a, a), mask
    return replace_inits(built, new), masks


def noisy_flip(built: onnx.ModelProto, rng: np.random.Generator, frac: float) -> onnx.ModelProto:
    """Multiplicative noise on every parameter, then sign flips: a fine-tuning-like pair."""
    return flip(noise(built, rng), rng, frac)[0]


def qdq(model: onnx.ModelProto, tmp_path: Path, calibration: list[dict], act: str = "QInt8",
        per_channel: bool = True) -> onnx.ModelProto:
    """onnxruntime's static QDQ quantizer (weights and activations), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / f"src_{act}.onnx", tmp_path / f"qdq_{act}.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8)
    return onnx.load(dst)


def shared_bias_net(seed: int = 0) -> onnx.ModelProto:
    """conv1 and conv2 read ONE bias initializer ``B`` (bit-identical biases stored once): conv1
    directly, conv2 through an Identity; conv3 reads ``B`` directly as well."""
    rng = np.random.default_rng(seed)
    params = {"W1": normal(rng, (8, 2, 3, 3), 18), "W2": normal(rng, (8, 8, 3, 3), 72), "W3": normal(rng, (8, 8, 1, 1), 8),
              "B": rng.normal(0, 0.2, 8).astype(np.float32), "Wf": normal(rng, (8 * 25, 4), 200)}
    nodes = [helper.make_node("Identity", ["B"], ["B_read"]),
             helper.make_node("Conv", ["x", "W1", "B"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "B_read"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "W3", "B"], ["c3"]),
             helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("Flatten", ["r3"], ["f"]),
             helper.make_node("MatMul", ["f", "Wf"], ["y"])]
    return make_model(nodes, [("x", (1, 2, 5, 5))], [("y", (1, 4))], params)
