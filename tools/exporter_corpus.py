"""The exporter corpus of ``tools/coverage.py --exporters``: small ReLU networks as each installed
exporter writes them, then simplified, optimised and quantized, generated into a folder at run time
(never committed).

* base models: exporter idioms written with ``onnx.helper`` as keras2onnx / tf2onnx write them (Keras
  UpSampling2D as Unsqueeze → Tile → Reshape, PReLU as ``relu(x) − α·relu(−x)``, nodes in reverse
  order), and torch modules (MLP, Conv-BN CNN, residual block, upsampling / transposed conv / PReLU /
  LeakyReLU / ReLU6) through both torch exporters (TorchScript ``dynamo=False`` and ``dynamo=True``)
  when torch is installed;
* variants of each base model: onnxsim (when installed); onnxruntime's offline optimiser at
  ORT_ENABLE_BASIC, EXTENDED and ALL; onnxruntime's quantizer: static QDQ per tensor and per channel
  (weights and activations), the per-channel one without its activation Q/DQ pairs (weights only, float
  activations), static QOperator, dynamic (weights only, QOperator, per tensor and per channel).

Every file kept is one that onnxruntime runs; what could not be produced (an exporter or optimiser
missing or failing) is listed in ``skipped``, with why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Model = onnx.ModelProto
_LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}  # where onnxruntime's quantizer folds a Relu


def _graph_model(nodes, x_shape, inits: dict[str, np.ndarray], opset: int = 13) -> Model:
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _f(rng, *shape) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def keras_upsampling(rng) -> Model:
    """Conv → Relu → UpSampling2D(2) as Unsqueeze → Tile → Reshape → Conv → Relu → GlobalAveragePool → Dense → Softmax."""
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["c0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Unsqueeze", ["r0", "ax"], ["u"]), helper.make_node("Tile", ["u", "rep"], ["t"]),
             helper.make_node("Reshape", ["t", "shp"], ["up"]), helper.make_node("Conv", ["up", "W1", "B1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "W2", "B2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"])]
    return _graph_model(nodes, [1, 2, 4, 4], {
        "W0": _f(rng, 3, 2, 3, 3), "B0": _f(rng, 3), "ax": np.array([3, 5], np.int64), "rep": np.array([1, 1, 1, 2, 1, 2], np.int64),
        "shp": np.array([1, 3, 8, 8], np.int64), "W1": _f(rng, 4, 3, 3, 3), "B1": _f(rng, 4), "W2": _f(rng, 4, 3), "B2": _f(rng, 3)})


def tf2onnx_prelu(rng) -> Model:
    """Dense → PReLU as ``relu(x) − α·relu(−x)`` (Neg) → Dense → Softmax."""
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"]), helper.make_node("Add", ["m0", "B0"], ["h"]),
             helper.make_node("Relu", ["h"], ["p"]), helper.make_node("Neg", ["h"], ["nh"]), helper.make_node("Relu", ["nh"], ["rn"]),
             helper.make_node("Mul", ["rn", "al"], ["ma"]), helper.make_node("Sub", ["p", "ma"], ["a"]),
             helper.make_node("MatMul", ["a", "W1"], ["m1"]), helper.make_node("Add", ["m1", "B1"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"])]
    return _graph_model(nodes, [1, 6], {"W0": _f(rng, 6, 8), "B0": _f(rng, 8), "al": np.abs(_f(rng, 8)) * 0.3,
                                        "W1": _f(rng, 8, 3), "B1": _f(rng, 3)})


def keras2onnx_reversed(rng) -> Model:
    """An MLP whose nodes are written in reverse topological order."""
    model = tf2onnx_prelu(rng)
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


HANDWRITTEN: dict[str, Callable[[np.random.Generator], Model]] = {
    "keras_upsampling": keras_upsampling, "tf2onnx_prelu": tf2onnx_prelu, "keras2onnx_reversed": keras2onnx_reversed}


def _torch_modules():
    """(name, module, input shape) of the torch architectures."""
    import torch
    from torch import nn

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x):
            h = self.stem(x)
            return self.head(torch.relu(h + self.body(h)))

    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 2, stride=2),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    mixed = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.PReLU(3), nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.ConvTranspose2d(3, 4, 2, stride=2), nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.ReLU6(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    return [("mlp", mlp, (1, 6)), ("cnn_bn", cnn, (1, 2, 9, 9)), ("resblock", Res(), (1, 2, 6, 6)),
            ("upsample_prelu_deconv", mixed, (1, 2, 4, 4))]


def torch_models(skipped: dict[str, str]) -> dict[str, Model]:
    """Each torch architecture through each torch exporter that works here."""
    try:
        import torch
    except ImportError as err:
        skipped["torch (both exporters)"] = f"not installed ({err})"
        return {}
    torch.manual_seed(0)
    logging.getLogger("torch").setLevel(logging.ERROR)
    out: dict[str, Model] = {}
    for name, module, shape in _torch_modules():
        module.eval()
        with torch.no_grad():  # non-trivial BN statistics
            for m in module.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
            try:
                buf = io.BytesIO()
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, (torch.randn(*shape),), buf, dynamo=dynamo, input_names=["x"])
                out[f"torch_{exporter}_{name}"] = onnx.load_from_string(buf.getvalue())
            except Exception as err:  # noqa: BLE001  (an exporter failing is a finding, listed)
                skipped[f"torch {exporter} {name}"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return out


def _input_feeds(model: Model, rng, n: int) -> list[dict[str, np.ndarray]]:
    init = {t.name for t in model.graph.initializer}
    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input if i.name not in init}
    return [{k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def _ort_optimised(model: Model, level: str, folder: Path) -> Model:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    so.optimized_model_filepath = str(folder / f"ort_{level}.tmp.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath)


def _quantized(model: Model, kind: str, folder: Path, rng) -> Model:
    from onnxruntime import quantization as oq

    src, dst = folder / "q_src.tmp.onnx", folder / "q_dst.tmp.onnx"
    onnx.save(model, src)
    if kind.startswith("dynamic"):
        oq.quantize_dynamic(str(src), str(dst), per_channel=kind.endswith("per_channel"))
    else:
        class Feeds(oq.CalibrationDataReader):
            def __init__(self):
                self.it = iter(_input_feeds(model, rng, 8))

            def get_next(self):
                return next(self.it, None)

        fmt = oq.QuantFormat.QOperator if kind.startswith("qoperator") else oq.QuantFormat.QDQ
        oq.quantize_static(str(src), str(dst), Feeds(), quant_format=fmt, per_channel=kind.endswith("per_channel"))
    return onnx.load(dst)


def _clips_at_zero(model: Model, q: onnx.NodeProto) -> bool:
    """Whether the QuantizeLinear's range starts at 0 (its zero point is the type's minimum, uint8 by default):
    the quantizer folded a Relu into it."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zp = inits.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    return zp is None or (zp.dtype.kind in "iu" and bool(np.all(zp == np.iinfo(zp.dtype).min)))


def _weights_only(model: Model) -> Model:
    """A QDQ model without its activation QuantizeLinear → DequantizeLinear pairs: quantized weights, float
    activations (what a weights-only QDQ export writes); a pair right after a linear op whose range starts at 0
    (a Relu the quantizer folded into it) becomes that Relu again."""
    producer = {o: n for n in model.graph.node for o in n.output}
    rename: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            rename[node.output[0]] = q.input[0]
            if _clips_at_zero(model, q) and getattr(producer.get(q.input[0]), "op_type", "") in _LINEAR_OPS:
                rename[node.output[0]] = node.output[0] + "/relu"
                kept.append(helper.make_node("Relu", [q.input[0]], [node.output[0] + "/relu"]))
        elif node.op_type != "QuantizeLinear":
            kept.append(node)
    out = Model()
    out.CopyFrom(model)
    del out.graph.node[:]
    for node in kept:
        node.input[:] = [rename.get(i, i) for i in node.input]
        out.graph.node.append(node)
    for o in out.graph.output:
        if o.name in rename:
            out.graph.node.append(helper.make_node("Identity", [rename[o.name]], [o.name]))
    return out


def variants(model: Model, folder: Path, rng, skipped: dict[str, str], name: str) -> dict[str, Model]:
    """The model as onnxsim, onnxruntime's optimiser and its quantizer rewrite it."""
    makers: dict[str, Callable[[], Model]] = {}
    try:
        import onnxsim

        makers["onnxsim"] = lambda: onnxsim.simplify(model)[0]
    except ImportError:
        skipped.setdefault("onnxsim", "not installed (pip install onnxsim)")
    for level in ("BASIC", "EXTENDED", "ALL"):
        makers[f"ort_{level.lower()}"] = lambda level=level: _ort_optimised(model, level, folder)
    for kind in ("qdq_per_tensor", "qdq_per_channel", "qoperator_per_tensor", "dynamic_per_tensor", "dynamic_per_channel"):
        makers[kind] = lambda kind=kind: _quantized(model, kind, folder, rng)
    makers["qdq_weights_only_per_channel"] = lambda: _weights_only(_quantized(model, "qdq_per_channel", folder, rng))
    out = {}
    for variant, make in makers.items():
        try:
            out[variant] = make()
        except Exception as err:  # noqa: BLE001  (a tool failing on a model is listed, not fatal)
            skipped[f"{name} {variant}"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return out


def _runs_in_onnxruntime(model: Model, rng) -> str | None:
    """None if onnxruntime runs the model on a random input, else why not."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        sess.run(None, _input_feeds(model, rng, 1)[0])
        return None
    except Exception as err:  # noqa: BLE001
        return f"onnxruntime cannot run it: {type(err).__name__}: {str(err).splitlines()[0][:200]}"


def generate(folder: Path, seed: int = 0, with_torch: bool = True) -> tuple[list[Path], dict[str, str]]:
    """Write the corpus into ``folder``; returns the files and what was skipped (with why)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    skipped: dict[str, str] = {}
    bases = {name: make(rng) for name, make in HANDWRITTEN.items()}
    if with_torch:
        bases.update(torch_models(skipped))
    by_hand = {"tf2onnx": "; its idioms are written by hand instead (keras_upsampling, tf2onnx_prelu, keras2onnx_reversed)"}
    for package, what in (("tf2onnx", "Keras/TensorFlow"), ("jax2onnx", "JAX"), ("paddle2onnx", "PaddlePaddle")):
        if importlib.util.find_spec(package) is None:
            skipped[f"{package} ({what})"] = "not installed here" + by_hand.get(package, "")
    files: list[Path] = []
    for name, base in bases.items():
        for variant, model in {"float": base, **variants(base, folder, rng, skipped, name)}.items():
            why = _runs_in_onnxruntime(model, rng)
            if why:
                skipped[f"{name} {variant}"] = why
                continue
            path = folder / f"{name}__{variant}.onnx"
            onnx.save(model, path)
            files.append(path)
    for tmp in folder.glob("*.tmp.onnx"):
        tmp.unlink()
    return files, skipped
