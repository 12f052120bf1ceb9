"""The entry point that reads a model: :func:`load_model` (path, bytes or ``ModelProto``).

The jobs behind it live in modules named for them: :mod:`onnx_pathlift.fileio.read` (safe decoding, size
limits, external data), :mod:`onnx_pathlift.frontend.fold` (constant folding) and
:mod:`onnx_pathlift.frontend.prepare` (input shapes, schema and spec checks, shape inference).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from ..errors import InvalidModelError, OutOfMemoryError
from . import prefetch
from .read import DEFAULT_LIMITS, Limits, check_sizes, load_external_data, parse_model, read_model_file, refuse_external
from .wire import split_file

ModelSource = str | os.PathLike | bytes | ModelProto


def load_model(source: ModelSource, limits: Limits = DEFAULT_LIMITS) -> ModelProto:
    """Read an ONNX model from a path, raw bytes or an existing ``ModelProto``.

    External data files are resolved inside the model's folder only; a location that escapes it
    (``..``, an absolute path, a symlink pointing elsewhere) is refused with :class:`InvalidModelError`,
    and so is external data in a model given as bytes or ``ModelProto`` (it has no folder).
    """
    if isinstance(source, ModelProto):
        refuse_external(source)
        return source
    if isinstance(source, (bytes, bytearray)):
        model = parse_model(bytes(source), "<bytes>")
        refuse_external(model)
        return model
    path = Path(source)
    model = parse_model(_read(path), str(path))
    load_external_data(model, path.resolve().parent, check_sizes(model, limits))
    return model


def _read(path: Path) -> bytes:
    """The model file's bytes: those :mod:`~onnx_pathlift.fileio.prefetch` read, else read here (a regular file
    within the size limit: :func:`~onnx_pathlift.fileio.read.read_model_file`)."""
    if not os.path.lexists(path):
        raise InvalidModelError(f"{path}: no such file")
    data = prefetch.take(path)
    return data if data is not None else read_model_file(path)


#: initializer types whose payload is read straight into an array (raw little-endian, as numpy reads them)
_SPLIT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE})


def load_split(source: ModelSource, limits: Limits = DEFAULT_LIMITS) -> tuple[ModelProto, dict[int, np.ndarray]]:
    """For the analyses, which read a model's weights but never run, write or re-serialise the model
    itself: the model with its large float32/float64 initializers left without data, and those
    initializers as read-only arrays by index in ``graph.initializer``, read from the file straight
    into aligned arrays (:mod:`onnx_pathlift.fileio.wire`: one copy of the weights instead of three). A
    source that is not a path, or a file the splitter leaves to protobuf, is loaded whole
    (:func:`load_model`, no arrays); so is any initializer whose payload does not fit its declared
    shape exactly, which then meets the usual checks."""
    if isinstance(source, (ModelProto, bytes, bytearray)) or sys.byteorder != "little":
        return load_model(source, limits), {}
    path = Path(source)
    data = _read(path)
    try:
        split = split_file(data)
    except MemoryError:
        raise OutOfMemoryError(f"{path}: out of memory reading its weights") from None
    if split is None:
        model, payloads = parse_model(data, str(path)), {}
    else:
        size = len(data)
        del data
        model, payloads = parse_model(split[0], str(path), size), split[1]
    for index in [i for i in payloads if model.graph.initializer[i].data_location != TensorProto.DEFAULT]:
        model.graph.initializer[index].raw_data = payloads.pop(index).tobytes()  # external data replaces it, as it would have
    load_external_data(model, path.resolve().parent, check_sizes(model, limits))
    return model, _arrays(model, payloads)


def _arrays(model: ModelProto, payloads: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Each payload as its initializer's array, where type, shape and size agree; any other goes back
    into its tensor's ``raw_data``, as the file had it."""
    arrays = {}
    for index, payload in payloads.items():
        tensor = model.graph.initializer[index]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type) if tensor.data_type in _SPLIT_TYPES else None
        if dtype is None or payload.nbytes != math.prod(tensor.dims) * dtype.itemsize:
            tensor.raw_data = payload.tobytes()
            continue
        array = payload.view(dtype).reshape(tuple(tensor.dims))
        array.flags.writeable = False
        arrays[index] = array
    return arrays
