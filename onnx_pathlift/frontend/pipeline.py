"""File → Dag in one call, as every command starts: read, prepare (static shapes, constants folded), import."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the audit package is not imported at run time: norm's start-up does without it)
    from onnx import ModelProto

    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared
    from ..fileio.load import ModelSource
    from ..ir.dag import Dag
    from .prepare import Prepared



def model_name(source: ModelSource) -> str:
    """How reports name a model: its path, or ``<model>`` for bytes and ``ModelProto``."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "<model>"


@dataclass
class Loaded:
    """A model as read (``model``; None where only its weights were needed), prepared (static shapes,
    constants folded) and imported."""

    model: ModelProto | None
    prepared: Prepared
    dag: Dag
    seconds: float  # wall time of the three steps


def load(source: ModelSource, input_shape: InputShape = None, outputs: list[str] | None = None,
         whole: bool = True) -> Loaded:
    """Read ``source`` (path, bytes or ``ModelProto``), fix its input shapes (``input_shape``: one
    shape, or one per input name) and import the tensors ``outputs`` (None: every analysed output).
    ``whole=False``, for analyses of the DAG alone: a file's large weights are read straight into
    arrays (:func:`~onnx_pathlift.fileio.load.load_split`) and ``model`` is None."""
    from ..fileio.load import load_model, load_split
    from .importer import import_prepared
    from .prepare import prepare

    t0 = time.perf_counter()
    model, stored = (load_model(source), None) if whole else load_split(source)
    prepared = prepare(model, input_shape, stored=stored)
    return Loaded(model if whole else None, prepared, import_prepared(prepared, outputs or None), time.perf_counter() - t0)
