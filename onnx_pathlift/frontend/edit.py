"""The one model editor: a model's named constants (initializers and ``Constant`` nodes) read and replaced,
and shared ones copied before a write (copy on write).

Weight pruning (:func:`onnx_pathlift.pruning.prune.apply`), channel slimming (:mod:`onnx_pathlift.pruning.slim`),
recovery and the random rescaling (:mod:`onnx_pathlift.analyses.rescale`) all write weights back through
:class:`ModelEditor`: a value keeps its tensor's name, becomes a raw little-endian payload
(``numpy_helper.from_array``), and an IR-3 file's graph input of the same name (those files list their
initializers as inputs too) is retyped when its type or shape changes. An initializer read by several node
inputs would change them all: :func:`untie` gives each reader its own copy, :func:`retie` merges back the
copies that stayed equal.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from ..ops.plumbing import constant_value
from ..ops.registry import has_role


def copy_model(model: ModelProto) -> ModelProto:
    """A deep copy of ``model`` (edits of the copy leave ``model`` alone)."""
    out = ModelProto()
    out.CopyFrom(model)
    return out


class ModelEditor:
    """Read and replace a named constant of ``model``, in place: an initializer or a ``Constant`` node's value."""

    def __init__(self, model: ModelProto):
        self.model = model
        self.init = {t.name: t for t in model.graph.initializer}
        self.node = {n.output[0]: n for n in model.graph.node if has_role(n, "constant") and n.output}

    def __contains__(self, name: str) -> bool:
        return name in self.init or name in self.node

    def get(self, name: str) -> np.ndarray:
        """The constant's value (KeyError when ``name`` is none)."""
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        return constant_value(self.node[name])[0]

    def set(self, name: str, value: np.ndarray) -> None:
        """Replace the constant's value (same name; a ``Constant`` node's ``value`` attribute)."""
        tensor = numpy_helper.from_array(value, name)
        if name in self.init:
            old = self.init[name]
            retype = old.data_type != tensor.data_type or list(old.dims) != list(tensor.dims)
            old.CopyFrom(tensor)
            # IR-3 files list initializers as inputs too; dynamo exports give them value_info
            for vi in list(self.model.graph.input) + list(self.model.graph.value_info) if retype else ():
                if vi.name == name:
                    vi.type.CopyFrom(helper.make_tensor_type_proto(tensor.data_type, value.shape))
            return
        for a in self.node[name].attribute:
            if a.name == "value":
                a.t.CopyFrom(tensor)

    def shared(self) -> set[str]:
        """Tensors read by more than one node input (writing such an initializer changes every reader)."""
        uses = Counter(i for node in self.model.graph.node for i in node.input)
        return {name for name, n in uses.items() if n > 1}


def untie(model: ModelProto) -> tuple[ModelProto, dict[str, str]]:
    """``model`` with every initializer read by one node input only: each further reader of a shared
    initializer, and each reader of an Identity of an initializer, gets its own copy (the Identity,
    left unread, is dropped). Returns the model and ``{copy: initializer}``; :func:`retie` undoes the
    copies that stay equal. Models of IR version < 4 (initializers listed as inputs) are returned as is."""
    out = copy_model(model)
    if model.ir_version < 4:
        return out, {}
    inits = {t.name: t for t in out.graph.initializer}
    outputs = {o.name for o in out.graph.output}
    alias = {n.output[0]: n.input[0] for n in out.graph.node
             if has_role(n, "identity") and n.input and n.input[0] in inits and n.output[0] not in outputs}
    origin: dict[str, str] = {}
    seen: set[str] = set()
    taken = set(inits) | {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    for node in out.graph.node:
        if has_role(node, "identity") and node.output and node.output[0] in alias:
            continue
        for j, name in enumerate(node.input):
            base = alias.get(name, name)
            if base not in inits or (base not in seen and name == base and base not in outputs):
                seen.add(base)
                continue
            k = 1
            while f"{base}.copy{k}" in taken:
                k += 1
            copy = f"{base}.copy{k}"
            taken.add(copy)
            out.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[base]), copy))
            node.input[j], origin[copy] = copy, base
    read = {i for n in out.graph.node for i in n.input} | outputs
    keep = [n for n in out.graph.node if not (has_role(n, "identity") and n.output and n.output[0] in alias
                                               and n.output[0] not in read)]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out, origin


def retie(model: ModelProto, origin: dict[str, str]) -> ModelProto:
    """Readers of a copy made by :func:`untie` read the original again where both still hold the same
    tensor (same type, shape and bytes); the copy is dropped. Edits ``model`` in place and returns it."""
    inits = {t.name: t for t in model.graph.initializer}
    same = {c for c, b in origin.items() if c in inits and b in inits
            and inits[c].data_type == inits[b].data_type and list(inits[c].dims) == list(inits[b].dims)
            and numpy_helper.to_array(inits[c]).tobytes() == numpy_helper.to_array(inits[b]).tobytes()}
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name in same:
                node.input[j] = origin[name]
    keep = [t for t in model.graph.initializer if t.name not in same]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model
