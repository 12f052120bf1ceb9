#!/usr/bin/env python
"""Generate the small reference ONNX models used by ``onnx_pathlift``.

Two classifiers are trained on scikit-learn's bundled 8x8 ``digits`` data set
(no network access needed) and exported to ONNX:

* ``digits_mlp_sklearn.onnx`` -- a scikit-learn ``MLPClassifier`` (64 -> 64 -> 32
  -> 10, ReLU) converted with skl2onnx (``zipmap`` disabled, so the outputs are
  a ``label`` tensor and a ``probabilities`` tensor).
* ``digits_cnn_torch.onnx`` -- a tiny PyTorch CNN with a residual block,
  exported with the TorchScript exporter (``dynamo=False``).  In eval mode the
  exporter folds each BatchNorm that follows a convolution into that
  convolution, so the ONNX graph contains no ``BatchNormalization`` nodes.

Every exported model is checked with ``onnx.checker`` and run with
onnxruntime on the held-out test split; its outputs must match the framework's
own predictions (max abs diff < 1e-4, identical argmax).  The test split is
written to ``digits_test.npz`` (``x``: float32 ``[N, 64]`` pixels in [0, 1],
``y``: int64 labels), and the facts about each model are written to
``README.md`` and ``models.json``.

The script is deterministic: fixed seeds, single-threaded BLAS / torch /
onnxruntime, torch deterministic algorithms, a fixed ONNX graph name for the
skl2onnx model and fixed timestamps inside the ``.npz`` archive.  With the same
library versions on the same machine, re-running it reproduces the outputs
(accuracies always; in practice also the files byte for byte).  Floating-point
results may differ in the last bits on other CPUs / BLAS builds.

Usage::

    python tools/make_models.py [--out models]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import sys
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Pin the BLAS/OpenMP thread pools to one thread before numpy / torch /
# onnxruntime are imported, so results do not depend on the core count.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import skl2onnx  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from onnx import version_converter  # noqa: E402
from skl2onnx import convert_sklearn  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from torch import nn  # noqa: E402

SEED: int = 0
OPSET: int = 17
INPUT_NAME: str = "input"
N_CLASSES: int = 10
TOLERANCE: float = 1e-4

MLP_FILE: str = "digits_mlp_sklearn.onnx"
CNN_FILE: str = "digits_cnn_torch.onnx"
CNN_BN_FILE: str = "digits_cnn_torch_bn.onnx"
INT8_FILE: str = "digits_cnn_torch_bn_int8.onnx"
PRUNED_FILE: str = "digits_cnn_torch_bn_pruned50.onnx"
TEST_FILE: str = "digits_test.npz"

# CNN training hyper-parameters (a few seconds on one CPU core).
CNN_EPOCHS: int = 30
CNN_BATCH_SIZE: int = 64
CNN_LR: float = 1e-2
CNN_MIN_ACCURACY: float = 0.9


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSplit:
    """Train/test split of the digits data, pixels scaled to [0, 1]."""

    x_train: np.ndarray  # float32 [N_train, 64]
    y_train: np.ndarray  # int64 [N_train]
    x_test: np.ndarray  # float32 [N_test, 64]
    y_test: np.ndarray  # int64 [N_test]


def load_split() -> DigitsSplit:
    """Load sklearn's digits, scale to [0, 1] and split 80/20 (stratified)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )
    return DigitsSplit(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
    )


def save_test_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` and ``y`` as a compressed ``.npz`` with fixed timestamps.

    ``np.savez_compressed`` stamps the current time into the zip headers; this
    writes an equivalent archive (readable by ``np.load``) whose bytes depend
    only on the arrays.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("x", x), ("y", y)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------


def make_deterministic(seed: int = SEED) -> None:
    """Seed every RNG and force single-threaded, deterministic torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def ort_session(path: Path) -> ort.InferenceSession:
    """A single-threaded onnxruntime CPU session for ``path``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


# --------------------------------------------------------------------------
# Model description helpers
# --------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """Facts about one exported model (serialised into ``models.json``)."""

    file: str
    description: str
    architecture: str
    input_name: str
    input_shape: list[int | str | None]
    output_names: list[str]
    test_accuracy: float
    n_params: int
    n_onnx_weights: int
    ops: dict[str, int]
    size_bytes: int
    sha256: str
    producer: str
    opset: dict[str, int]
    max_abs_diff: float
    extra: dict[str, Any] = field(default_factory=dict)


def _iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Yield every node of ``graph``, including those of nested subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_nodes(sub)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Count nodes by op type; ops outside the default domain get a ``domain:`` prefix."""
    counts: Counter[str] = Counter()
    for node in _iter_nodes(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        counts[key] += 1
    return dict(sorted(counts.items()))


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default (``ai.onnx``) opset imported by ``model``."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    raise KeyError("model imports no default-domain opset")


def input_shape(model: onnx.ModelProto, name: str) -> list[int | str | None]:
    """Shape of graph input ``name``: ints, symbolic names, or ``None`` if unknown."""
    for value in model.graph.input:
        if value.name == name:
            dims: list[int | str | None] = []
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value"):
                    dims.append(int(dim.dim_value))
                elif dim.HasField("dim_param"):
                    dims.append(dim.dim_param)
                else:
                    dims.append(None)
            return dims
    raise KeyError(f"graph has no input named {name!r}")


def onnx_weight_count(model: onnx.ModelProto) -> int:
    """Total number of elements in floating-point initializers."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    return sum(
        int(np.prod(init.dims, dtype=np.int64))
        for init in model.graph.initializer
        if init.data_type in float_types
    )


def describe(
    path: Path,
    *,
    description: str,
    architecture: str,
    test_accuracy: float,
    n_params: int,
    max_abs_diff: float,
    extra: dict[str, Any] | None = None,
) -> ModelInfo:
    """Collect the :class:`ModelInfo` of the ONNX file at ``path``."""
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    return ModelInfo(
        file=path.name,
        description=description,
        architecture=architecture,
        input_name=INPUT_NAME,
        input_shape=input_shape(model, INPUT_NAME),
        output_names=[o.name for o in model.graph.output],
        test_accuracy=round(test_accuracy, 6),
        n_params=n_params,
        n_onnx_weights=onnx_weight_count(model),
        ops=count_ops(model),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opset=dict(sorted((o.domain or "ai.onnx", int(o.version)) for o in model.opset_import)),
        max_abs_diff=max_abs_diff,
        extra=extra or {},
    )


def check_agreement(
    name: str, reference: np.ndarray, onnx_out: np.ndarray
) -> float:
    """Assert ONNX outputs match the framework's; return the max abs diff."""
    if reference.shape != onnx_out.shape:
        raise AssertionError(f"{name}: shape {onnx_out.shape} != reference {reference.shape}")
    diff = float(np.max(np.abs(reference.astype(np.float64) - onnx_out.astype(np.float64))))
    if not diff < TOLERANCE:
        raise AssertionError(f"{name}: max abs diff {diff:.3g} >= {TOLERANCE}")
    if not np.array_equal(reference.argmax(axis=1), onnx_out.argmax(axis=1)):
        raise AssertionError(f"{name}: argmax differs between framework and ONNX")
    return diff


# --------------------------------------------------------------------------
# scikit-learn MLP
# --------------------------------------------------------------------------


def build_sklearn_mlp(split: DigitsSplit, out_dir: Path) -> ModelInfo:
    """Train the sklearn MLP, export it with skl2onnx and verify it."""
    clf = MLPClassifier(
        hidden_layer_sizes=(64, 32),
        activation="relu",
        max_iter=500,
        random_state=SEED,
    )
    clf.fit(split.x_train, split.y_train)
    if not np.array_equal(clf.classes_, np.arange(N_CLASSES)):
        raise AssertionError(f"unexpected classes {clf.classes_}")

    onx = convert_sklearn(
        clf,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=OPSET,
        name="digits_mlp_sklearn",  # default is a random uuid -> non-reproducible bytes
    )
    # skl2onnx declares the lowest opset its ops need (16 here); upgrade the
    # declared default-domain opset to OPSET so both models target the same one.
    if default_opset(onx) < OPSET:
        onx = version_converter.convert_version(onx, OPSET)
        # The converter runs shape inference and records value_info that skl2onnx
        # did not emit; drop it so the graph is otherwise exactly skl2onnx's.
        del onx.graph.value_info[:]
    # skl2onnx collects the opset domains in a set, so their order follows
    # Python's (randomised) string hashing; sort them for reproducible bytes.
    opsets = sorted(
        (onnx.helper.make_opsetid(o.domain, o.version) for o in onx.opset_import),
        key=lambda o: o.domain,
    )
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    onnx.checker.check_model(onx, full_check=True)
    path = out_dir / MLP_FILE
    path.write_bytes(onx.SerializeToString())

    session = ort_session(path)
    labels, probabilities = session.run(["label", "probabilities"], {INPUT_NAME: split.x_test})
    reference = clf.predict_proba(split.x_test)
    diff = check_agreement(MLP_FILE, reference, probabilities)
    if not np.array_equal(labels.astype(np.int64), clf.predict(split.x_test)):
        raise AssertionError(f"{MLP_FILE}: label output differs from clf.predict")
    accuracy = float(np.mean(probabilities.argmax(axis=1) == split.y_test))

    n_params = sum(w.size for w in clf.coefs_) + sum(b.size for b in clf.intercepts_)
    return describe(
        path,
        description="scikit-learn MLPClassifier (skl2onnx, zipmap off)",
        architecture="Dense 64->64 ReLU -> 64->32 ReLU -> 32->10 softmax",
        test_accuracy=accuracy,
        n_params=int(n_params),
        max_abs_diff=diff,
        extra={"n_iter": int(clf.n_iter_)},
    )


# --------------------------------------------------------------------------
# PyTorch CNN
# --------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` with 8 channels, 3x3 kernels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class DigitsCNN(nn.Module):
    """Tiny CNN for 1x8x8 digits with one residual block and global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.block = ResidualBlock(8)
        self.head = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def _as_images(x: np.ndarray) -> torch.Tensor:
    """Flat ``[N, 64]`` pixels -> ``[N, 1, 8, 8]`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 1, 8, 8)))


def train_cnn(split: DigitsSplit) -> tuple[DigitsCNN, float]:
    """Train :class:`DigitsCNN` with Adam; return the eval-mode model and its test accuracy."""
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=CNN_LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=CNN_EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)

    x_train, y_train = _as_images(split.x_train), torch.from_numpy(split.y_train)
    x_test, y_test = _as_images(split.x_test), torch.from_numpy(split.y_test)

    for _epoch in range(CNN_EPOCHS):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), CNN_BATCH_SIZE):
            idx = order[start : start + CNN_BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
        scheduler.step()

    model.eval()
    with torch.no_grad():
        n_correct = int((model(x_test).argmax(dim=1) == y_test).sum())
    accuracy = n_correct / len(y_test)
    if accuracy <= CNN_MIN_ACCURACY:
        raise RuntimeError(f"CNN test accuracy {accuracy:.4f} <= {CNN_MIN_ACCURACY}")
    return model, accuracy


def build_torch_cnn(split: DigitsSplit, out_dir: Path) -> list[ModelInfo]:
    """Train the CNN once; export it with BatchNorm folded into the convs (the exporter's default in
    eval mode) and with BatchNorm kept as its own nodes (``TrainingMode.PRESERVE`` on an eval model)."""
    model, torch_accuracy = train_cnn(split)
    model.eval()
    return [_export_cnn(model, torch_accuracy, split, out_dir / CNN_FILE, keep_bn=False),
            _export_cnn(model, torch_accuracy, split, out_dir / CNN_BN_FILE, keep_bn=True)]


def _export_cnn(model: DigitsCNN, torch_accuracy: float, split: DigitsSplit, path: Path, keep_bn: bool) -> ModelInfo:
    """Export with the TorchScript exporter and verify against torch on the test split."""
    CNN_FILE = path.name  # noqa: N806  (used in messages below)
    dummy = torch.zeros(1, 1, 8, 8)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; we use it on purpose.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=["logits"],
            dynamic_axes={INPUT_NAME: {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not keep_bn,
        )
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    if default_opset(exported) != OPSET:
        raise AssertionError(f"{CNN_FILE}: opset {default_opset(exported)} != {OPSET}")

    x_test = split.x_test.reshape(-1, 1, 8, 8)
    session = ort_session(path)
    (logits,) = session.run(["logits"], {INPUT_NAME: x_test})
    with torch.no_grad():
        reference = model(torch.from_numpy(np.ascontiguousarray(x_test))).numpy()
    diff = check_agreement(CNN_FILE, reference, logits)
    accuracy = float(np.mean(logits.argmax(axis=1) == split.y_test))
    if accuracy != torch_accuracy:
        raise AssertionError(f"{CNN_FILE}: ONNX accuracy {accuracy} != torch {torch_accuracy}")

    n_params = sum(p.numel() for p in model.parameters())
    return describe(
        path,
        description="PyTorch CNN with a residual block (TorchScript exporter, "
        + ("BatchNormalization kept as nodes)" if keep_bn else "BN folded)"),
        architecture=(
            "Conv(1->8,3x3,p1)+BN, ReLU, MaxPool(2,ceil) -> "
            "Res[Conv(8->8)+BN, ReLU, Conv(8->8)+BN, Add, ReLU] -> "
            "Conv(8->16,3x3,p1), ReLU -> GlobalAvgPool -> Flatten -> Linear(16->10)"
        ),
        test_accuracy=accuracy,
        n_params=int(n_params),
        max_abs_diff=diff,
        extra={"epochs": CNN_EPOCHS, "batch_size": CNN_BATCH_SIZE, "lr": CNN_LR},
    )


# --------------------------------------------------------------------------
# Variants of the BN CNN: int8 QDQ quantization and 50% magnitude pruning
# --------------------------------------------------------------------------


def _onnx_accuracy(path: Path, split: DigitsSplit) -> float:
    session = ort_session(path)
    (logits,) = session.run(["logits"], {INPUT_NAME: split.x_test.reshape(-1, 1, 8, 8)})
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


def build_variants(split: DigitsSplit, out_dir: Path, n_params: int) -> list[ModelInfo]:
    """Models derived from ``digits_cnn_torch_bn.onnx`` by other tools, for path-metric examples:
    onnxruntime's static QDQ int8 quantizer (per-channel weights, calibrated on 100 training images)
    and global magnitude pruning of 50% of the Conv/Gemm weights (same signs, |θ'| ≤ |θ|). ``n_params``:
    the source's parameter count, which both keep (same architecture; pruned weights still count)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source = out_dir / CNN_BN_FILE

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({INPUT_NAME: split.x_train[i : i + 1].reshape(1, 1, 8, 8)} for i in range(100))

        def get_next(self):
            return next(self.batches, None)

    int8 = out_dir / INT8_FILE
    quantize_static(str(source), str(int8), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    model = onnx.load(str(int8))
    model.graph.name = "digits_cnn_int8"
    onnx.save(model, str(int8))

    model = onnx.load(str(source))
    consumers = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    weights = [t for t in model.graph.initializer if t.name in consumers]
    magnitudes = np.concatenate([np.abs(onnx.numpy_helper.to_array(t)).ravel() for t in weights])
    threshold = np.sort(magnitudes)[len(magnitudes) // 2]
    for t in weights:
        w = onnx.numpy_helper.to_array(t)
        t.CopyFrom(onnx.numpy_helper.from_array(np.where(np.abs(w) < threshold, 0, w).astype(w.dtype), t.name))
    pruned = out_dir / PRUNED_FILE
    onnx.save(model, str(pruned))
    return [
        describe(int8, description="digits_cnn_torch_bn quantized by onnxruntime's static QDQ int8 quantizer",
                 architecture="same as digits_cnn_torch_bn; QuantizeLinear/DequantizeLinear on weights and activations",
                 test_accuracy=_onnx_accuracy(int8, split), n_params=n_params, max_abs_diff=float("nan")),
        describe(pruned, description="digits_cnn_torch_bn with 50% of its Conv/Gemm weights zeroed (global magnitude)",
                 architecture="same as digits_cnn_torch_bn", test_accuracy=_onnx_accuracy(pruned, split),
                 n_params=n_params, max_abs_diff=float("nan")),
    ]


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced the models."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def _fmt_shape(shape: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fmt_ops(ops: dict[str, int]) -> str:
    return ", ".join(f"{op}×{n}" for op, n in ops.items())


def write_readme(
    path: Path, infos: list[ModelInfo], n_test: int, test_size: int, versions: dict[str, str]
) -> None:
    """Write the human-readable model table to ``path``."""
    lines = [
        "# Reference models",
        "",
        "Small classifiers for the 8x8 scikit-learn `digits` data set, used as test",
        "inputs for `onnx_pathlift`. Generated by:",
        "",
        "```",
        "python tools/make_models.py            # writes into models/",
        "```",
        "",
        "The script is deterministic (fixed seeds, single-threaded BLAS/torch/onnxruntime,",
        "torch deterministic algorithms): with the library versions below on the same",
        "machine, re-running it reproduces these files (same weights and accuracies; the",
        "`sha256` values in `models.json` identify the exact bytes). Other CPUs or BLAS",
        "builds may change weights in the last bits.",
        "",
        "| file | what | architecture | input | ops (by type) | params | test acc | size (bytes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for info in infos:
        lines.append(
            f"| `{info.file}` | {info.description} | {info.architecture} | "
            f"`{info.input_name}` float32 {_fmt_shape(info.input_shape)} | "
            f"{_fmt_ops(info.ops)} ({sum(info.ops.values())} nodes) | "
            f"{info.n_params} | {info.test_accuracy:.4f} | {info.size_bytes} |"
        )
    lines += [
        f"| `{TEST_FILE}` | test split: `x` float32 [{n_test}, 64] pixels in [0, 1], "
        f"`y` int64 [{n_test}] | — | — | — | — | — | {test_size} |",
        "",
        "Notes:",
        "",
        "- Data: `sklearn.datasets.load_digits()`, pixels divided by 16, stratified",
        "  80/20 split (`test_size=0.2, random_state=0`). The CNN consumes",
        "  `x.reshape(-1, 1, 8, 8)`.",
        "- `digits_mlp_sklearn.onnx` outputs `label` (int64 [N]) and `probabilities`",
        "  (float32 [N, 10]); converted with skl2onnx, `zipmap` disabled.",
        "- `digits_cnn_torch.onnx` outputs `logits` (float32 [batch, 10]); exported with",
        "  `torch.onnx.export(dynamo=False)` in eval mode, so each BatchNorm after a",
        "  convolution is folded into that convolution.",
        "- `params` is the trainable parameter count in the source framework (the int8 and",
        "  pruned variants: their source's, the same architecture); the ONNX",
        "  files hold the following number of float weights (after BN folding):",
    ]
    lines += [f"  `{info.file}`: {info.n_onnx_weights}." for info in infos]
    lines += [
        "- Every model was checked with `onnx.checker` and with onnxruntime against the",
        "  framework's own predictions on the test split (max abs diff < 1e-4,",
        "  identical argmax); test accuracy is computed from the ONNX outputs.",
        "",
        "Library versions:",
        "",
    ]
    lines += [f"- {name} {version}" for name, version in versions.items()]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_json(
    path: Path, infos: list[ModelInfo], n_test: int, versions: dict[str, str]
) -> None:
    """Write the machine-readable description of the models to ``path``."""
    payload = {
        "generator": "tools/make_models.py",
        "dataset": {
            "name": "sklearn digits",
            "file": TEST_FILE,
            "n_test": n_test,
            "x": {"dtype": "float32", "shape": [n_test, 64], "range": [0.0, 1.0]},
            "y": {"dtype": "int64", "shape": [n_test]},
            "split": {"test_size": 0.2, "random_state": SEED, "stratify": True},
        },
        "versions": versions,
        "models": [asdict(info) for info in infos],
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("models"), help="output directory (default: models)"
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    make_deterministic()
    split = load_split()

    test_path = out_dir / TEST_FILE
    save_test_split(test_path, split.x_test, split.y_test)

    infos = [build_sklearn_mlp(split, out_dir), *build_torch_cnn(split, out_dir)]
    infos += build_variants(split, out_dir, next(i.n_params for i in infos if i.file == CNN_BN_FILE))

    versions = library_versions()
    n_test = len(split.y_test)
    write_readme(out_dir / "README.md", infos, n_test, test_path.stat().st_size, versions)
    write_json(out_dir / "models.json", infos, n_test, versions)

    for info in infos:
        print(
            f"{info.file}: acc={info.test_accuracy:.4f} params={info.n_params} "
            f"size={info.size_bytes}B max|diff|={info.max_abs_diff:.2e} ops={_fmt_ops(info.ops)}"
        )
    print(f"{TEST_FILE}: n={n_test} size={test_path.stat().st_size}B")
    print(f"done in {time.perf_counter() - started:.1f}s -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
