"""One name per layer, shared by every command, flag and JSON record (docs/design.md, "Layer names").

A *layer* is one ONNX node of the prepared graph. Its name is, in this order:

1. the name of its **weight initializer**, when no other node reads it, no other layer has that name and
   the exporter did not make it up (:data:`GENERATED`) (``layer1.0.conv1.weight``: the module path, the key
   of ``scores -o`` and ``prune --mask``);
2. else the **ONNX node name**, when non-empty and unique;
3. else ``OpType#k``: the k-th node (from 0) of that op type in the prepared graph's topological order.

A layer's weight is the tensor of its ``W`` parameter (Conv, ConvTranspose, Gemm, MatMul), else, when
the analysis gives the node parameters (BatchNormalization, a bias Add), its first float initializer
input with a dimension. Every layer also answers to its other spellings: its ONNX node name, its weight
initializer, its output tensors and the DAG layers it became (``31/conv``, ``logits/dense``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnx import NodeProto

from ..errors import UsageError
from ..ir.dag import Dag, Layer
from ..sanitise import terminal
from .pipeline import load
from .prepare import Prepared

if TYPE_CHECKING:
    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared
    from ..fileio.load import ModelSource

#: how many valid names an unknown-name error lists
LISTED = 40
#: prefixes of initializer names an exporter generates (torch.onnx's BN-folded weights: ``onnx::Conv_146``)
GENERATED = ("onnx::",)


@dataclass(frozen=True)
class LayerName:
    """One layer's name, the ONNX node and weight initializer beside it, and every name it answers to."""

    layer: str
    onnx_node: str  # "" for an unnamed node
    initializer: str | None  # its weight initializer (None: computed, or none)
    op_type: str
    spellings: frozenset[str]
    parameterised: bool  # the analysis gives the node parameters

    def to_dict(self) -> dict:
        return {"layer": self.layer, "onnx_node": self.onnx_node, "initializer": self.initializer}


def node_key(node: NodeProto) -> str:
    """How the importer and the channel pruning refer to a node (``Layer.source``): its name, else its first output."""
    return node.name or node.output[0]


@dataclass
class LayerNames:
    """The layers of one prepared model, by node key, and by the tensors they read (alone) or write."""

    by_key: dict[str, LayerName]
    by_tensor: dict[str, LayerName]
    by_dag: dict[str, LayerName]  # the DAG layers each node became

    def of_dag(self, layer: str) -> LayerName | None:
        return self.by_dag.get(layer)

    def record(self, key: str) -> dict:
        """``layer``, ``onnx_node`` and ``initializer`` of the node ``key`` (one no layer names keeps ``key``)."""
        named = self.by_key.get(key)
        return named.to_dict() if named else {"layer": key, "onnx_node": "", "initializer": None}

    def of_tensor(self, tensor: str) -> LayerName | None:
        return self.by_tensor.get(tensor)

    def parameterised(self) -> list[LayerName]:
        return [n for n in self.by_key.values() if n.parameterised]

    def select(self, pattern: str, candidates: Iterable[LayerName], flag: str = "--layers") -> list[LayerName]:
        """The ``candidates`` that ``pattern`` names: those with a spelling equal to it, else those with
        a spelling a regular-expression search of it finds. None: a :class:`UsageError` listing the
        candidates' names."""
        candidates = list({n.layer: n for n in candidates}.values())
        chosen = [n for n in candidates if pattern in n.spellings]
        if not chosen:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise UsageError(f"{flag} {pattern!r} is no layer name and not a regular expression ({exc}); "
                                 f"{valid_names(candidates)}") from None
            chosen = [n for n in candidates if any(rx.search(s) for s in n.spellings)]
        if not chosen:
            raise UsageError(f"{flag} {pattern!r} matches no layer; {valid_names(candidates)}")
        return chosen


def describe(layer: Layer, names: LayerNames | None, node: bool = True) -> str:
    """How an error or a note names the DAG layer ``layer``: its op and layer name (``conv 'stem.0.weight'``),
    with ``node`` its ONNX node beside when named otherwise (``(ONNX node '/stem/stem.0/Conv')``); without
    ``names``, or for a layer no node made (a graph input), its DAG name (with ``node``, its source beside)."""
    named = names.of_dag(layer.name) if names is not None else None
    if named is None:
        source = layer.source if node and layer.source not in ("", layer.name) else None
        return f"{layer.op} {layer.name!r}" + (f" (from node {source!r})" if source else "")
    beside = node and named.onnx_node not in ("", named.layer)
    return f"{layer.op} {named.layer!r}" + (f" (ONNX node {named.onnx_node!r})" if beside else "")


def valid_names(candidates: list[LayerName]) -> str:
    """``the layers: a, b, ...`` (at most :data:`LISTED`, each escaped: an error message keeps its newlines), for an
    error message."""
    names = [terminal(n.layer) for n in candidates]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return (f"the layers: {', '.join(names[:LISTED])}{more} (or their ONNX node or initializer names, "
            "or a regular expression)" if names else "the model has no layer with weights")


def _weight(node: NodeProto, layers: list[Layer] | None, initializers: set[str], p: Prepared) -> str | None:
    """The node's weight initializer (see the module docstring; ``layers`` None: no DAG, the node's first
    float initializer of rank ≥ 1)."""
    for layer in layers or ():
        if "W" in layer.origins:
            name = layer.origins["W"][0]
            return name if name in initializers else None
    if layers is not None and not any(layer.params for layer in layers):
        return None
    return next((i for i in node.input if i in initializers and i in p.consts and p.consts[i].dtype.kind == "f"
                 and p.consts[i].ndim), None)


def layer_names(p: Prepared, dag: Dag | None) -> LayerNames:
    """Every node's :class:`LayerName` (``dag``: the model imported, whose layers say which nodes are
    parameterised and become spellings; None for a model the importer refuses: a node is parameterised
    when it reads a float initializer)."""
    initializers = {t.name for t in p.model.graph.initializer}
    readers = Counter(i for node in p.nodes for i in set(node.input) if i)
    made: dict[str, list[Layer]] = {}
    for layer in dag.layers() if dag is not None else ():
        made.setdefault(layer.source, []).append(layer)
    weights = [_weight(node, made.get(node_key(node), []) if dag is not None else None, initializers, p)
               for node in p.nodes]
    tier1 = Counter(w for w in weights if w)
    tier2 = Counter(node.name for node in p.nodes if node.name)
    index: Counter = Counter()
    taken: set[str] = set()
    by_key, by_tensor, by_dag = {}, {}, {}
    for node, weight in zip(p.nodes, weights):
        k = index[node.op_type]
        index[node.op_type] += 1
        if weight and tier1[weight] == 1 and readers[weight] == 1 and weight not in taken and not weight.startswith(GENERATED):
            name = weight
        elif node.name and tier2[node.name] == 1 and node.name not in tier1 and node.name not in taken:
            name = node.name
        else:
            name = f"{node.op_type}#{k}"
            while name in taken or name in tier1:
                name += "'"
        taken.add(name)
        layers = made.get(node_key(node), [])
        spellings = {name, node_key(node), *node.output, *(x.name for x in layers), *([weight] if weight else [])}
        entry = LayerName(name, node.name, weight, node.op_type, frozenset(s for s in spellings if s),
                          any(x.params for x in layers) if dag is not None else weight is not None)
        by_key[node_key(node)] = entry
        by_tensor.update({t: entry for t in node.output if t})
        by_tensor.update({t: entry for t in node.input if t in p.consts and readers[t] == 1})
        by_dag.update({x.name: entry for x in layers})
    return LayerNames(by_key, by_tensor, by_dag)


def named_dag(model: ModelSource | Dag, input_shape: InputShape, names: LayerNames | None) -> tuple[Dag, LayerNames | None]:
    """``model`` as a DAG and its layer names, for a library function that takes either: a DAG and ``names``
    as given (None: it keeps its DAG names), a file (path, bytes or ``ModelProto``) imported and named."""
    if isinstance(model, Dag):
        return model, names
    loaded = load(model, input_shape, whole=False)
    return loaded.dag, layer_names(loaded.prepared, loaded.dag)


def parameters_by_node(dag: Dag) -> Counter:
    """Parameters per ONNX node (by :func:`node_key`): the sizes of the parameters of the DAG layers it became
    (``norm``'s count, :attr:`Dag.n_params`, split by node; docs/pruning.md, "Parameters")."""
    out: Counter = Counter()
    for layer in dag.layers():
        out[layer.source] += layer.n_params
    return out
