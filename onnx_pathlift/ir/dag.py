"""The intermediate representation: typed layer records on a ``networkx.DiGraph``.

Every DAG node is one :class:`Layer` (stored under the node attribute ``"layer"``, with its op's
``kind`` copied to ``"kind"`` for plain networkx users). Edges run from producer to consumer and
carry the consumer's input ``slot``; ``Layer.inputs`` keeps the ordered list. Parameters are float64
numpy arrays holding the *signed* values of the source model; shapes are static and include the
batch dimension.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import numpy as np


@dataclass
class Layer:
    """One node of the DAG: op (handler key), ordered inputs, static output shape, parameters."""

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: where a parameter comes from in the ONNX file: key -> (tensor name, stored transposed)
    origins: dict[str, tuple[str, bool]] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))


@dataclass(frozen=True)
class ActivationQuantizer:
    """A QuantizeLinear→DequantizeLinear pair on an activation ``u`` (the layer ``input_layer``):
    ``Q(u) = (clip(round(u/s) + z, q_min, q_max) − z)·s``, ``s`` and ``z`` per tensor or along ``axis``.
    ``output_layer`` stands for ``Q(u)`` in the DAG (a ReLU when the range starts at 0, else
    ``input_layer`` itself); ``undone``: the DequantizeLinear has the same scale and zero point."""

    node: str
    input_layer: str
    output_layer: str
    scale: np.ndarray
    zero_point: np.ndarray
    q_min: int
    q_max: int
    axis: int
    undone: bool


@dataclass
class Dag:
    """A ReLU network as a DAG of layers, with its ordered graph inputs and analysed outputs."""

    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    inputs: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # analysed ONNX tensor name -> layer name
    opset: int = 17
    notes: list[str] = field(default_factory=list)
    activation_qdq: int = 0  # QuantizeLinear→DequantizeLinear pairs on activations, imported as identity
    quantizers: list[ActivationQuantizer] = field(default_factory=list)  # those pairs, for the activation bound

    def add(self, layer: Layer) -> Layer:
        """Add ``layer`` (its inputs must already be present) and the edges from its inputs."""
        if layer.name in self.graph:
            raise ValueError(f"duplicate layer name {layer.name!r}")
        self.graph.add_node(layer.name, layer=layer)
        for slot, src in enumerate(layer.inputs):
            self.graph.add_edge(src, layer.name, slot=slot)
        return layer

    def layer(self, name: str) -> Layer:
        return self.graph.nodes[name]["layer"]

    def layers(self) -> Iterator[Layer]:
        """Layers in a topological order (stable: ties broken by insertion order)."""
        for name in nx.topological_sort(self.graph):
            yield self.graph.nodes[name]["layer"]

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers())

    def float64_params(self) -> Dag:
        """The same DAG with every parameter in float64 (weights import as float32, exactly; compare's
        arithmetic on two parameter sets, ``|a| − |b|`` and signs of products, must not round)."""
        out = Dag(opset=self.opset, inputs=list(self.inputs), outputs=dict(self.outputs), notes=list(self.notes),
                  activation_qdq=self.activation_qdq, quantizers=list(self.quantizers))
        for layer in self.layers():
            params = {k: np.asarray(v, dtype=np.float64) for k, v in layer.params.items()}
            out.add(replace(layer, params=params) if params else layer)
        return out

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.layer(name).shape for name in self.inputs}
