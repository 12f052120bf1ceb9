"""File → Dag in one call, as every command starts: read, prepare (static shapes, constants folded), import."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the audit package is not imported at run time: norm's start-up does without it)
    from onnx import ModelProto

    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared
    from ..errors import UnsupportedModelError
    from ..fileio.load import ModelSource
    from ..ir.dag import Dag
    from .prepare import Prepared



def model_name(source: ModelSource) -> str:
    """How reports name a model: its path, or ``<model>`` for bytes and ``ModelProto``."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "<model>"


@dataclass
class Loaded:
    """A model as read (``model``; None where only its weights were needed), prepared (static shapes,
    constants folded) and imported (``dag``; None only from ``load(need_dag=False)`` when the importer
    refused: ``refusal`` says why, ``analysed`` holds the outputs it had chosen, heads cut)."""

    model: ModelProto | None
    prepared: Prepared
    dag: Dag | None
    seconds: float  # wall time of the three steps
    refusal: UnsupportedModelError | None = None
    analysed: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        """The analysed outputs: the DAG's, or those the refused import had chosen."""
        return list(self.dag.outputs) if self.dag is not None else list(self.analysed)

    @property
    def first_input(self) -> tuple[str, tuple[int, ...]]:
        """The first analysed input and its static shape (without a DAG: the first graph input a node reads)."""
        if self.dag is not None:
            return self.dag.inputs[0], tuple(self.dag.layer(self.dag.inputs[0]).shape)
        read = {name for node in self.prepared.nodes for name in node.input}
        name = next((n for n in self.prepared.inputs if n in read), next(iter(self.prepared.inputs)))
        return name, tuple(self.prepared.inputs[name])


def load(source: ModelSource, input_shape: InputShape = None, outputs: list[str] | None = None,
         whole: bool = True, need_dag: bool = True) -> Loaded:
    """Read ``source`` (path, bytes or ``ModelProto``), fix its input shapes (``input_shape``: one
    shape, or one per input name) and import the tensors ``outputs`` (None: every analysed output).
    ``whole=False``, for analyses of the DAG alone: a file's large weights are read straight into
    arrays (:func:`~onnx_pathlift.fileio.load.load_split`) and ``model`` is None. ``need_dag=False``,
    for what needs the prepared graph alone (channel groups): an import refusal is kept in
    ``refusal`` instead of raised, unless it left no analysed output."""
    from ..errors import UnsupportedModelError
    from ..fileio.load import load_model, load_split
    from .importer import ImportTrace, import_prepared
    from .prepare import prepare

    t0 = time.perf_counter()
    model, stored = (load_model(source), None) if whole else load_split(source)
    prepared = prepare(model, input_shape, stored=stored, read=isinstance(source, (str, os.PathLike)))  # a path: checked as read
    model = model if whole else None
    if need_dag:
        return Loaded(model, prepared, import_prepared(prepared, outputs or None), time.perf_counter() - t0)
    trace = ImportTrace()
    try:
        dag = import_prepared(prepared, outputs or None, trace, suggest=False)
    except UnsupportedModelError as err:
        if not trace.analysed:
            raise
        return Loaded(model, prepared, None, time.perf_counter() - t0, err, list(trace.analysed))
    return Loaded(model, prepared, dag, time.perf_counter() - t0)
