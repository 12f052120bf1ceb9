"""An independent float64 evaluation of a DAG's lifted network in torch (q = 1): every parameter
replaced by its absolute value, activations removed, a max-pool replaced by the sum over its window,
an average-pool by ``1/divisor`` per position it counts, on all-ones inputs. The sum of the outputs
is ``‖Φ(θ)‖_1``; the gradient of that sum with respect to ``|W|`` gives each weight's share
``|w| · ∂‖Φ‖_1/∂|w|``. Written from the path-lifting definitions, sharing no code with the
package's emission; validated against the brute-force oracle on the tiny nets (test_metric)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import onnx_pathlift as pl


def _torch():
    return pytest.importorskip("torch")


def _abs64(a):
    return _torch().as_tensor(np.abs(np.asarray(a, np.float64)))


def _pad(x, begin, end, value: float = 0.0):
    """``x`` padded on its spatial axes (``begin``/``end`` per axis, first axis first)."""
    spec = []
    for b, e in zip(reversed(begin), reversed(end)):
        spec += [int(b), int(e)]
    return _torch().nn.functional.pad(x, spec, value=value)


def _window_sum(x, layer, pads_value: float = 0.0):
    """Σ over each pool window of ``layer`` (its pads filled with ``pads_value``, the ceil-mode end
    extension with zeros), cropped to the layer's output size."""
    torch, a = _torch(), layer.attrs
    k, n = a["kernel_shape"], len(a["kernel_shape"])
    strides, dil = a["strides"], a.get("dilations", [1] * n)
    x = _pad(x, a["pads"][:n], a["pads"][n:], pads_value)
    out = layer.shape[2:]
    extra = [max(0, (out[i] - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - x.shape[2 + i]) for i in range(n)]
    x = _pad(x, [0] * n, extra)
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[n - 1]
    y = conv(x, torch.ones((x.shape[1], 1, *k), dtype=torch.float64), stride=strides, dilation=dil, groups=x.shape[1])
    return y[(slice(None), slice(None), *[slice(0, o) for o in out])]


def _weighted(layer, x, w):
    """A conv or dense layer on ``x`` with the lifted weight ``w`` (and the lifted bias)."""
    torch, a, p = _torch(), layer.attrs, layer.params
    if layer.op == "conv":
        n = w.dim() - 2
        conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[n - 1]
        y = conv(_pad(x, a["pads"][:n], a["pads"][n:]), w, stride=a["strides"], dilation=a["dilations"], groups=a["group"])
        return y + _abs64(p["B"]).reshape(1, -1, *[1] * n) if "B" in p else y
    y = x @ w if a["side"] == "right" else w @ x
    return y + _abs64(p["B"]) if "B" in p else y


def _pooled(layer, x):
    """A max-, average- or global pool of the lifted network."""
    a = layer.attrs
    if layer.op == "maxpool":
        return _window_sum(x, layer)
    if layer.op == "avgpool":  # divisor: the positions the window counts (padding too with count_include_pad)
        return _window_sum(x, layer) / _window_sum(_torch().ones_like(x), layer, 1.0 if a.get("count_include_pad", 0) else 0.0)
    y = x.sum(dim=tuple(range(2, x.dim())), keepdim=True)
    return y if a["mode"] == "max" else y / math.prod(x.shape[2:])


def _unweighted(layer, xs):
    """Every other layer of the lifted network on its inputs ``xs``."""
    a, p, op = layer.attrs, layer.params, layer.op
    if op == "input":
        return _torch().ones(layer.shape, dtype=_torch().float64)
    if op == "affine":
        y = xs[0] * _abs64(p["scale"]) if "scale" in p else xs[0]
        return y + _abs64(p["bias"]) if "bias" in p else y
    if op in ("maxpool", "avgpool", "globalpool"):
        return _pooled(layer, xs[0])
    moves = {"relu": lambda: xs[0], "sum": lambda: sum(xs[1:], xs[0]), "concat": lambda: _torch().cat(xs, dim=a["axis"]),
             "reshape": lambda: xs[0].reshape(layer.shape), "transpose": lambda: xs[0].permute(*a["perm"])}
    if op not in moves:
        raise AssertionError(f"the torch evaluator does not know layer op {op!r}")
    return moves[op]()


def lifted_outputs(dag: pl.Dag, grad: bool = False) -> tuple[list, dict]:
    """The lifted network's output tensors and its weight leaves ``{layer name: |W|}`` (with
    ``grad``: leaves that require a gradient)."""
    values, leaves = {}, {}
    for layer in dag.layers():
        xs = [values[i] for i in layer.inputs]
        if layer.op in ("conv", "dense"):
            leaves[layer.name] = _abs64(layer.params["W"]).requires_grad_(grad)
            y = _weighted(layer, xs[0], leaves[layer.name])
        else:
            y = _unweighted(layer, xs)
        y = _torch().broadcast_to(y, layer.shape)
        assert tuple(y.shape) == tuple(layer.shape), (layer.name, tuple(y.shape), layer.shape)
        values[layer.name] = y
    return [values[name] for name in dag.outputs.values()], leaves


def lifted_norm(dag: pl.Dag) -> float:
    """‖Φ(θ)‖_1 in float64 (outputs summed with fsum)."""
    with _torch().no_grad():
        outputs, _ = lifted_outputs(dag)
        return math.fsum(float(y.sum()) for y in outputs)


def lifted_fractions(dag: pl.Dag) -> dict[str, np.ndarray]:
    """Each weight's share of ‖Φ‖_1, ``|w| · ∂‖Φ‖_1/∂|w| / ‖Φ‖_1`` by autograd, in the initializer
    layout (transposed back where the DAG stores a weight transposed; summed over layers sharing it)."""
    outputs, leaves = lifted_outputs(dag, grad=True)
    norm = sum(y.sum() for y in outputs)
    norm.backward()
    out = {}
    for lname, w in leaves.items():
        frac = (w * w.grad).detach().numpy() / norm.item()
        name, transposed = dag.layer(lname).origins.get("W", (lname, False))
        out[name] = out.get(name, 0) + (frac.T if transposed else frac)
    return out
