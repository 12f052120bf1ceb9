"""The entry point that reads a model: :func:`load_model` (path, bytes or ``ModelProto``).

The jobs behind it live in modules named for them: :mod:`onnx_pathlift.read` (safe decoding, size
limits, external data), :mod:`onnx_pathlift.fold` (constant folding) and
:mod:`onnx_pathlift.prepare` (input shapes, schema and spec checks, shape inference).
"""

from __future__ import annotations

import os
from pathlib import Path

from onnx import ModelProto

from . import prefetch
from .errors import InvalidModelError
from .read import DEFAULT_LIMITS, Limits, check_sizes, load_external_data, parse_model, refuse_external

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
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    try:
        data = prefetch.take(path) or path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read: {exc.strerror}") from exc
    model = parse_model(data, str(path))
    check_sizes(model, limits)
    load_external_data(model, path.resolve().parent)
    return model

