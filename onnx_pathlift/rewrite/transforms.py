"""DAG → DAG transforms: new DAGs built from existing ones (the inputs are never modified).

* :func:`without_biases`: the bias-free network (paths starting at input neurons only).
* :func:`with_params` / :func:`with_params_of`: one architecture carrying other parameters.
* :func:`two_stream_dag`: the ``lo`` / ``Δ = hi − lo`` network whose lifted output bounds a
  path-metric (:mod:`onnx_pathlift.analyses.metric`).
* :func:`injected`, :func:`cut_at`, :func:`bypassed`: a bias added after chosen layers, chosen layers
  fed through new inputs, one-input layers removed (:mod:`onnx_pathlift.analyses.quant_bound`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS

#: suffix of the Δ stream's layers and inputs in :func:`two_stream_dag`
DELTA = "__delta"
#: suffix of the new graph input that feeds a cut layer's consumers in :func:`cut_at`
CUT = "__cut"
#: prefix of the outputs of :func:`cut_at` (each cut layer's own output)
MASS = "__mass__"


def two_stream_dag(a: Dag, b: Dag, pairs: dict[str, str]) -> Dag:
    """The DAG whose lifted network (q = 1) carries ``lo`` under the original names and ``Δ`` under
    ``name + DELTA``; the Δ inputs are extra graph inputs fed with zeros."""
    out = Dag(opset=a.opset, inputs=[n for i in a.inputs for n in (i, i + DELTA)])
    for layer in a.layers():
        d = layer.name + DELTA
        split = LAYER_OPS[layer.op].split_params(layer, b.layer(pairs[layer.name])) if layer.params else None
        if split is None:
            out.add(layer)
            out.add(replace(layer, name=d, inputs=[i + DELTA for i in layer.inputs]))
            continue
        lo, hi_linear, diff = split
        out.add(replace(layer, params=lo))
        out.add(replace(layer, name=d + "_hi", params=hi_linear, inputs=[i + DELTA for i in layer.inputs]))
        out.add(replace(layer, name=d + "_diff", params=diff))
        out.add(Layer(d, "sum", [d + "_hi", d + "_diff"], layer.shape, attrs={"signs": [1, 1]}, source=layer.source))
    for o, lname in a.outputs.items():
        out.outputs[o] = lname
        out.outputs[o + DELTA] = lname + DELTA
    return out


def without_biases(dag: Dag) -> Dag:
    """``dag`` with every bias dropped (each handler's ``without_bias``): its lifted network counts
    only the paths that start at input neurons."""
    out = Dag(opset=dag.opset, inputs=list(dag.inputs), outputs=dict(dag.outputs))
    for layer in dag.layers():
        out.add(LAYER_OPS[layer.op].without_bias(layer))
    return out


def with_params(a: Dag, params_of: Callable[[Layer], dict[str, np.ndarray]]) -> Dag:
    """A's architecture, each parameterised layer carrying ``params_of(layer)``."""
    out = Dag(opset=a.opset, inputs=list(a.inputs), outputs=dict(a.outputs))
    for layer in a.layers():
        out.add(replace(layer, params=params_of(layer)) if layer.params else layer)
    return out


def with_params_of(a: Dag, b: Dag, pairs: dict[str, str]) -> Dag:
    """A's architecture carrying B's parameters (what the certificate is about)."""
    return with_params(a, lambda layer: b.layer(pairs[layer.name]).params)


def injected(dag: Dag, eps: dict[str, np.ndarray]) -> Dag:
    """``dag`` with ``+ eps[name]`` (an affine layer's bias) after each layer ``name``."""
    out = Dag(opset=dag.opset, inputs=list(dag.inputs))
    rename: dict[str, str] = {}
    for layer in dag.layers():
        out.add(replace(layer, inputs=[rename.get(i, i) for i in layer.inputs]))
        if layer.name in eps:
            name = layer.name + "__eps"
            out.add(Layer(name, "affine", [layer.name], layer.shape, {"bias": eps[layer.name]}, source=layer.source))
            rename[layer.name] = name
    out.outputs = {o: rename.get(lname, lname) for o, lname in dag.outputs.items()}
    return out


def cut_at(dag: Dag, cuts: set[str]) -> Dag:
    """``dag`` whose layers in ``cuts`` feed their consumers through new graph inputs ``<name>`` + :data:`CUT`;
    outputs: each cut layer that is not a graph input, as :data:`MASS` + ``<name>`` (its own output)."""
    out = Dag(opset=dag.opset, inputs=list(dag.inputs))
    rename: dict[str, str] = {}
    for layer in dag.layers():
        out.add(replace(layer, inputs=[rename.get(i, i) for i in layer.inputs]))
        if layer.name in cuts:
            rename[layer.name] = layer.name + CUT
            out.add(Layer(rename[layer.name], "input", [], layer.shape, source=layer.source))
            out.inputs.append(rename[layer.name])
    out.outputs = {MASS + n: n for n in cuts if dag.layer(n).inputs}  # a graph input (no inputs) carries no mass
    return out


def bypassed(dag: Dag, names: set[str]) -> Dag:
    """``dag`` without the (one-input) layers ``names``: their consumers read their input instead."""
    out = Dag(opset=dag.opset, inputs=list(dag.inputs))
    source: dict[str, str] = {}
    for layer in dag.layers():
        if layer.name in names:
            source[layer.name] = source.get(layer.inputs[0], layer.inputs[0])
            continue
        out.add(replace(layer, inputs=[source.get(i, i) for i in layer.inputs]))
    out.outputs = {o: source.get(lname, lname) for o, lname in dag.outputs.items()}
    return out
