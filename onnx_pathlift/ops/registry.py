"""The op registry: the tables every op module fills by declaration (import rules, spec rules, layer ops,
head roles, label lookups, channel rules, fold rules, graph roles, unfusing rules) and the decorators that
fill them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from onnx import NodeProto

from ..ir.dag import Dag
from .channel_api import OPERANDS, REFITS, ChannelRule, Edit, Join, Macs
from .layer_op import LayerOp

if TYPE_CHECKING:
    from .context import ImportContext

ImportRule = Callable[[NodeProto, "ImportContext"], None]

IMPORTERS: dict[str, ImportRule] = {}
LAYER_OPS: dict[str, LayerOp] = {}
#: ONNX op type -> why importing it as its own layer is worth a word (``onnx-pathlift inspect``)
IMPORT_NOTES: dict[str, str] = {}
#: what an ONNX op does when it ends a network (the importer cuts such a head off and analyses the
#: logits): "head" (monotone: the winning class is unchanged), "picker" (the index, value or one-hot of
#: the winner), "carrier" (reshapes or retypes labels and probabilities: cut only behind a head or picker)
HEAD_ROLES: dict[str, str] = {}
#: label lookups after a picker: op type -> (input index of its constant class table, or None; of the picked index)
LOOKUPS: dict[str, tuple[int | None, int]] = {}
#: how structured pruning joins, slices and counts an ONNX op's channels (:mod:`onnx_pathlift.ops.channel_api`;
#: :mod:`onnx_pathlift.pruning.channels` pins the channels of every op without a rule)
CHANNEL_RULES: dict[str, ChannelRule] = {}


def _registrar(table: dict[str, Callable], what: str, op_types: tuple[str, ...],
               notes: dict[str, str] | None = None, note: str = "") -> Callable[[Callable], Callable]:
    """A decorator that enters its function in ``table`` under each op type, once per op type (and
    ``note`` in ``notes``, when given)."""

    def register(fn: Callable) -> Callable:
        for op_type in op_types:
            if op_type in table:
                raise ValueError(f"two {what} for {op_type}")
            table[op_type] = fn
            if note and notes is not None:
                notes[op_type] = note
        return fn

    return register


def imports(*op_types: str, note: str = "") -> Callable[[ImportRule], ImportRule]:
    """Register an import rule for ONNX op types (default domain); ``note``: see :data:`IMPORT_NOTES`."""
    return _registrar(IMPORTERS, "import rules", op_types, IMPORT_NOTES, note)


#: ``(node, consts, shapes, opset) -> problem or None``: a rule of the ONNX spec that ONNX shape
#: inference does not check (onnxruntime refuses such models); ``prepare`` raises
#: :class:`~onnx_pathlift.errors.InvalidModelError` naming the node and the problem
SpecRule = Callable[[NodeProto, dict[str, np.ndarray], dict[str, tuple[int, ...]], int], "str | None"]
SPEC_RULES: dict[str, SpecRule] = {}


def spec_rule(*op_types: str) -> Callable[[SpecRule], SpecRule]:
    """Register the spec rule of ONNX op types (default domain), next to their import rule."""
    return _registrar(SPEC_RULES, "spec rules", op_types)


def head_role(role: str, *op_types: str) -> None:
    """Declare the role of ONNX op types at the end of a network (see :data:`HEAD_ROLES`)."""
    if role not in ("head", "picker", "carrier"):
        raise ValueError(f"unknown head role {role!r}")
    HEAD_ROLES.update(dict.fromkeys(op_types, role))


def channel_rule(*op_types: str, operands: str = "single", edit: Edit | None = None, macs: Macs | None = None,
                 weight: bool = False, refit: str | None = None, bias: int | None = None,
                 adds: bool = False, statistics: tuple[int, ...] = ()) -> Callable[[Join], Join]:
    """Register a channel rule's ``join`` function for ONNX op types, with its hooks (see
    :class:`~onnx_pathlift.ops.channel_api.ChannelRule`)."""
    if operands not in OPERANDS or refit not in (None, *REFITS):
        raise ValueError(f"unknown operands {operands!r} or refit {refit!r}")

    def register(join: Join) -> Join:
        rule = ChannelRule(join, operands, edit, macs, weight, refit, bias, adds, statistics)
        _registrar(CHANNEL_RULES, "channel rules", op_types)(rule)
        return join

    return register


def weight_op_types() -> list[str]:
    """The op types whose work scales with their weight's axes (Conv, Gemm, ...), as declared."""
    return [op for op, rule in CHANNEL_RULES.items() if rule.weight]


def costed_op_types() -> list[str]:
    """The op types whose MACs channel pruning counts (Conv, ConvTranspose, Gemm, MatMul, BN), as declared."""
    return [op for op, rule in CHANNEL_RULES.items() if rule.macs is not None]


#: ``(node, consts, opset) -> (lo, hi)``: where an activation passes its input with slope 1 (``lo < z < hi``)
#: and is flat elsewhere (ReLU, Clip): what data-aware pruning and recovery gate and fit through
PassRange = Callable[[NodeProto, dict[str, np.ndarray], int], tuple[float, float]]
PASS_RANGES: dict[str, PassRange] = {}


def pass_range(*op_types: str) -> Callable[[PassRange], PassRange]:
    """Register where activations of ``op_types`` pass their input (see :data:`PASS_RANGES`)."""
    return _registrar(PASS_RANGES, "pass ranges", op_types)


#: ``(node, args, shapes, opset) -> values or None``: how an ONNX op folds when constant, in numpy (``args``:
#: its inputs' values, None where not constant; ``shapes``: the static shapes; ``opset``: the model's
#: default-domain version); see :func:`folds`. None: not folded here (a rule that runs on constant inputs
#: declines so, and ONNX's reference evaluator folds the node instead)
FoldRule = Callable[[NodeProto, list, dict, int], "list[np.ndarray] | None"]
#: op type -> (its fold rule, whether it is asked before the inputs are known constants)
FOLDS: dict[str, tuple[FoldRule, bool]] = {}
#: ``(node, args) -> elements or None``: the element count of the largest output an ONNX op computes from
#: the constant inputs ``args``, known from their values alone (None: not known so; ONNX shape inference
#: then sizes it); :mod:`onnx_pathlift.frontend.fold` checks it against the limit before the op runs
FoldSize = Callable[[NodeProto, list], "int | None"]
FOLD_SIZES: dict[str, FoldSize] = {}
#: ONNX ops never folded, even on constant inputs (they draw random numbers)
NEVER_FOLDED: set[str] = set()
#: ONNX op types by the part they play in the graph's plumbing, asked outside ``ops/`` instead of op names:
#: "identity" (``y = x``), "constant" (a node holding a tensor), "relu" (the ReLU itself), "quantize" and
#: "dequantize" (the two halves of a QDQ pair)
GRAPH_ROLES: dict[str, str] = {}
#: ``(domain, op type) -> rule``: a fused op of another domain written back as the standard nodes it fuses
#: (``rule(node, opset) -> nodes``; :mod:`onnx_pathlift.frontend.unfuse` runs them before anything else)
UNFUSERS: dict[tuple[str, str], Callable[[NodeProto, int], list[NodeProto]]] = {}


def folds(*op_types: str, early: bool = False) -> Callable[[FoldRule], FoldRule]:
    """Register how ONNX op types fold in numpy: ``early`` rules read what is known before the inputs are
    constant (a ``Constant``'s attribute, the static shape behind ``Shape``); the others run on constant
    inputs only, after the output size is checked."""

    def register(fn: FoldRule) -> FoldRule:
        for op_type in op_types:
            if op_type in FOLDS:
                raise ValueError(f"two fold rules for {op_type}")
            FOLDS[op_type] = (fn, early)
        return fn

    return register


def fold_size(*op_types: str) -> Callable[[FoldSize], FoldSize]:
    """Register how large the outputs of ONNX op types are, folded (see :data:`FOLD_SIZES`)."""
    return _registrar(FOLD_SIZES, "fold sizes", op_types)


def never_folds(*op_types: str) -> None:
    """Declare ONNX op types never folded (see :data:`NEVER_FOLDED`)."""
    NEVER_FOLDED.update(op_types)


def graph_role(role: str, *op_types: str) -> None:
    """Declare the plumbing role of ONNX op types (see :data:`GRAPH_ROLES`)."""
    if role not in ("identity", "constant", "relu", "quantize", "dequantize"):
        raise ValueError(f"unknown graph role {role!r}")
    GRAPH_ROLES.update(dict.fromkeys(op_types, role))


def has_role(node: NodeProto | str | None, role: str) -> bool:
    """Whether a node (or an op type) plays ``role`` (see :data:`GRAPH_ROLES`)."""
    if node is None:
        return False
    return GRAPH_ROLES.get(node if isinstance(node, str) else node.op_type) == role


def unfuses(domain: str, *op_types: str) -> Callable:
    """Register how fused ops of ``domain`` are written back as standard nodes (see :data:`UNFUSERS`)."""
    return _registrar(UNFUSERS, "unfusing rules", tuple((domain, t) for t in op_types))  # type: ignore[arg-type]


def label_lookup(op_type: str, table: int | None, index: int) -> None:
    """Declare ``op_type`` a label lookup after a picker (see :data:`LOOKUPS`)."""
    LOOKUPS[op_type] = (table, index)


def layer_op(cls: type[LayerOp]) -> type[LayerOp]:
    """Register a :class:`LayerOp` subclass under its ``op`` key."""
    if cls.op in LAYER_OPS:
        raise ValueError(f"two layer ops named {cls.op}")
    LAYER_OPS[cls.op] = cls()
    return cls


def kind_counts(dag: Dag, graph_inputs: bool = True) -> dict[str, int]:
    """How many layers of each kind (:attr:`LayerOp.kind`) the DAG holds, in order of first appearance
    (graph inputs, kind ``"input"``, left out when ``graph_inputs`` is false)."""
    layers = (data["layer"] for _, data in dag.graph.nodes(data=True))
    return dict(Counter(LAYER_OPS[layer.op].kind for layer in layers if graph_inputs or layer.inputs))
