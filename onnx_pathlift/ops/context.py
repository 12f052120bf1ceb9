"""The context an import rule works in: constants, activations, shapes, attributes decoded once with the
schema's defaults filled, and ``add`` to put layers in the DAG."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import AttributeProto, NodeProto, defs, helper

from ..errors import RefuseNode
from ..ir.dag import Dag, Layer

if TYPE_CHECKING:  # prepare imports the op registry (SPEC_RULES) at run time
    from ..frontend.prepare import Prepared



class ImportContext:
    """What an import rule sees: constants, static shapes, and the DAG being built."""

    def __init__(self, prepared: Prepared, dag: Dag):
        self.prepared = prepared
        self.dag = dag
        self.producer: dict[str, str] = {}  # ONNX tensor name -> DAG layer name
        self.used: set[str] = set()  # tensors read by live nodes or analysed as outputs

    def const(self, name: str) -> np.ndarray | None:
        """The folded constant value of a tensor, or None if it is an activation."""
        return self.prepared.consts.get(name) if name else None

    def param(self, node: NodeProto, index: int, what: str, weight: bool = False) -> np.ndarray:
        """Input ``index`` of ``node`` as a float64 parameter; refuses if it is not a constant.

        ``weight``: a kernel or weight matrix stored in float32 (or narrower) stays float32, without a
        copy. Every float32 is exact in float64; each computation on weights that rounds upcasts first
        (``pow_scaled``, ``scaled_power``, ``log2_rows``, the sums of ``linf_gain``, ``split_weight``),
        and compare upcasts both networks (:func:`onnx_pathlift.ir.dag.Dag.float64_params`)."""
        name = node.input[index] if index < len(node.input) else ""
        value = self.const(name)
        if value is None:
            raise RefuseNode(f"its {what} ({name!r}) is computed at run time, not a constant")
        if value.dtype.kind not in "fiu":
            raise RefuseNode(f"its {what} ({name!r}) has non-numeric type {value.dtype}")
        narrow = weight and value.dtype.kind == "f" and value.dtype.itemsize <= 4
        value = np.asarray(value, dtype=np.float32 if narrow else np.float64)
        if not np.all(np.isfinite(value)):
            bad = np.argwhere(~np.isfinite(value))[0]
            raise RefuseNode(f"its {what} ({name!r}) holds NaN/Inf (first at index {tuple(int(i) for i in bad)})")
        return value

    def act(self, name: str) -> str:
        """The DAG layer that produces activation tensor ``name``."""
        if name not in self.producer:
            raise RefuseNode(f"input {name!r} is neither a constant nor a supported activation")
        return self.producer[name]

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.prepared.shapes.get(name)
        if shape is None:
            raise RefuseNode(f"tensor {name!r} has no static shape (try --input-shape)")
        return shape

    def attrs(self, node: NodeProto) -> dict[str, Any]:
        """The node's attributes, normalised (:func:`attributes` at the model's opset)."""
        return attributes(node, self.prepared.opset)

    def activations(self, node: NodeProto) -> list[str]:
        """Names of the node's inputs that are activations (not constants, not empty)."""
        return [n for n in node.input if n and n not in self.prepared.consts]

    def add(
        self,
        node: NodeProto,
        op: str,
        inputs: list[str],
        shape: tuple[int, ...],
        params: dict[str, np.ndarray] | None = None,
        attrs: dict[str, Any] | None = None,
        suffix: str = "",
        origins: dict[str, tuple[str, bool]] | None = None,
    ) -> str:
        """Add a layer computed by ``node``; with no suffix it produces the node's first output."""
        name = node.output[0] + suffix
        while name in self.dag.graph:
            name += "'"
        layer = Layer(name, op, inputs, tuple(shape), params or {}, attrs or {}, source=node.name or node.output[0],
                      origins=origins or {})
        self.dag.add(layer)
        if not suffix:
            self.producer[node.output[0]] = name
        return name

    def only_first_output(self, node: NodeProto, what: str) -> None:
        """Refuse a node whose secondary outputs (indices, masks, running stats) are used."""
        for extra in node.output[1:]:
            if extra and extra in self.used:
                raise RefuseNode(f"its output {extra!r} ({what}) is used; only the main output is supported")

    def alias(self, tensor: str, layer: str) -> None:
        """Tensor ``tensor`` is the same activation as layer ``layer`` (Identity, Dropout, ...)."""
        self.producer[tensor] = layer


def _decoded(value: Any) -> Any:
    """An attribute value with its strings (bytes in the protobuf) decoded."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


@cache
def _schema_defaults(op_type: str, domain: str, opset: int) -> dict[str, Any]:
    """The defaults the op's schema (the version in force at ``opset``) gives its attributes."""
    try:
        schema = defs.get_schema(op_type, opset, domain)
    except defs.SchemaError:
        return {}
    return {name: _decoded(helper.get_attribute_value(attr.default_value))
            for name, attr in schema.attributes.items() if attr.default_value.type != AttributeProto.UNDEFINED}


def attributes(node: NodeProto, opset: int) -> dict[str, Any]:
    """The node's attributes as Python values, normalised once: strings decoded, and every attribute
    its ONNX schema at ``opset`` has a default for filled with that default when the node omits it
    (float defaults are float32 values, as the runtime reads them)."""
    given = {a.name: _decoded(helper.get_attribute_value(a)) for a in node.attribute}
    defaults = _schema_defaults(node.op_type, node.domain if node.domain != "ai.onnx" else "", opset)
    return {**{k: list(v) if isinstance(v, list) else v for k, v in defaults.items()}, **given}


def operand(node: NodeProto, i: int, table: dict):
    """``table``'s entry (a shape or a constant) for the node's input ``i``, None if absent or unknown."""
    return table.get(node.input[i]) if i < len(node.input) and node.input[i] else None


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` one way (ONNX unidirectional broadcasting)."""
    return len(shape) <= len(target) and all(d in (1, t) for d, t in zip(shape[::-1], target[::-1]))
