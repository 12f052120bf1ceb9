"""Recovery of a channel-pruned model from calibration data, without training.

After channels are removed, the layers that read them (the *sinks* of the removed groups: Conv /
Gemm / MatMul nodes whose input channels were cut) see fewer inputs, and every layer after them
sees changed inputs. Each such layer ``ℓ`` is re-fitted in topological order (the reconstruction of
He et al. 2017, "Channel pruning for accelerating very deep neural networks", and ThiNet), with
``X`` the slim model's input of ``ℓ`` (so each fit sees the layers above it already recovered) and
``Y`` the original model's output of ``ℓ`` (its kept channels), both collected with onnxruntime on
the calibration samples (the tensors exposed as extra graph outputs)::

    β(λ) = argmin_β ‖A β − Y‖²_F + λ ‖D^½ (β − β₀)‖²_F = (AᵀA + λD)⁻¹ (AᵀY + λ D β₀)

(:mod:`onnx_pathlift.pruning.refit`): ``A = [patches(X), 1]`` (im2col for a conv, one fit per group: a
depthwise conv gets one small fit per channel), ``β₀`` the pruned weights and bias, ``D =
diag(AᵀA)``, ``λ`` chosen on held-out samples with ``λ = ∞`` (keep ``β₀``) among the candidates.
Two refinements of the target: a layer whose only reader is a residual Add whose other operand is
already final fits ``Y_add − X_other`` (the original sum minus the slim skip: it also absorbs the
skip's error; otherwise its own output, as for a projection shortcut computed later); a layer read
by a Relu / Clip fits what the activation passes on (:func:`refit.activation_aware`). A layer that
cannot be refit (a conv that is not 2-D, a Gemm with ``transA``) gets its bias refit alone, the
weights kept (bias correction: without an activation, the mean shift ``b += mean(Y − Ŷ)``). A layer
without a bias gets one.

The certificate of the recovered model is a pair like any other: the *recovered masked* model is
the original with each refit tensor written back at full size (kept rows × kept columns; the
removed groups' sink columns stay 0), which computes the recovered slim model's function
(:func:`slim.check_slim` confirms it). Weights change sign, so the pruning-exact case no longer
applies and :func:`metric.path_metric` takes its sign-change routes. A bias added to a layer that
had none is added, zero, to the original too (a zero bias starts no path: same ``Φ``, same function).

:func:`data_aware_mass` is the data-aware path mass of the channel groups (see its docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ..frontend.edit import ModelEditor, copy_model
from ..frontend.prepare import Prepared
from ..ops.registry import CHANNEL_RULES, PASS_RANGES
from .calibration import active_range, collect, evaluate, fresh_name, gated_model
from .channels import ChannelGraph, group_scores
from .refit import Fit, activation_aware, conv_rows, dense_rows, fit
from .slim import _cuts, check_slim, removed_channels

FIT_SAMPLES = 2048  # calibration samples the fits use (a fixed random subset when there are more)
TENSOR_BYTES = 1 << 28  # the most one collected float32 tensor may take: fewer samples for large layers


@dataclass
class LayerFit:
    """What recovery did to one layer: ``refit`` (ridge least squares), ``shift`` (the bias alone refit) or
    ``kept``; ``rows`` fitted, ``ridge`` the λ chosen (None: ∞ or not a fit), the relative error
    ``‖Y − Ŷ‖/‖Y‖`` of the layer's output against the original's on the calibration rows."""

    node: str
    op: str
    action: str
    rows: int = 0
    ridge: float | None = None
    error_before: float = 0.0
    error_after: float = 0.0
    note: str = ""


class _Recoverer:
    """Walks the slim model's Conv/Gemm/MatMul nodes in order, refitting those that read a removed
    group (the sinks) or a tensor changed upstream; a layer that cannot be refit gets a bias shift."""

    def __init__(self, original: ModelProto, slim: ModelProto, cg: ChannelGraph, removed: list[int],
                 prepared: Prepared, x: np.ndarray, input_name: str):
        self.original, self.slim, self.cg, self.p = original, copy_model(slim), cg, prepared
        self.consts = ModelEditor(self.slim)
        self.gone = removed_channels(cg, removed)
        self.sinks = {e[0] for i in removed for e in cg.groups[i].sinks}
        self.all_x = x[np.random.default_rng(0).permutation(len(x))[:FIT_SAMPLES]]
        self.x, self.input_name = self.all_x, input_name
        self.written: dict[str, np.ndarray] = {}  # slim-size values of the constants written
        self.added: dict[str, tuple[str, np.ndarray]] = {}  # added bias -> (node output, kept output channels)
        self.readers()

    def run(self) -> list[LayerFit]:
        """Refit (or shift) each weight layer that reads a removed group or a changed tensor, in order."""
        changed: set[str] = set()
        fits = []
        for node in self.slim.graph.node:
            acts = [i for i in node.input if i and i not in self.p.consts]
            rule = CHANNEL_RULES.get(node.op_type)
            weight = rule is not None and rule.weight and len(node.input) > 1 and node.input[1] in self.p.consts
            if weight and (node.input[1] in self.sinks or changed.intersection(acts)):
                stored = node.input[1] in self.consts
                fits.append(self.refit(node) if stored else LayerFit(node.name or node.output[0], node.op_type, "kept",
                                                                     note="weight computed in the graph"))
                changed.update(node.output)
            elif not weight and changed.intersection(acts):
                changed.update(node.output)
        return fits

    def attrs(self, node: NodeProto) -> dict[str, Any]:
        from ..ops.context import attributes

        return attributes(node, self.p.opset)

    def target(self, node: NodeProto) -> tuple[np.ndarray, tuple[float, float] | None]:
        """What the layer's kept output channels (axis 1) should be: the original model's output of
        ``node``; for a node whose only reader is a residual Add whose other operand is already final
        (computed earlier), the original sum minus the slim model's other operand, so the fit also
        absorbs the skip's error. With the activation that reads it (``(lo, hi)``, or None), the
        target comes as ``[target, offset]`` on axis 1, ``offset`` what the activation adds to it."""
        tensor, other = node.output[0], self.skips.get(node.output[0])
        (y,) = collect(self.original, [other[0] if other else tensor], self.x, self.input_name, self.p.elem_types)
        y = y[:, self.kept(tensor, y.shape[1])]
        offset = np.zeros_like(y) if other is None else self.slim_value(other[1])
        active = self.activation.get(other[0] if other else tensor)
        if active is None:
            return y - offset, None
        return np.concatenate([y - offset, offset], axis=1), active

    def readers(self) -> None:
        """``skips``: node output → (Add output, the Add's other operand) where the output's one reader
        is an Add of two activations whose other operand's producer comes earlier in the graph;
        ``activation``: tensor → the pass range of the Relu / Clip that is its one reader."""
        readers: dict[str, list[NodeProto]] = {}
        position = {}
        for k, node in enumerate(self.original.graph.node):
            for i in node.input:
                readers.setdefault(i, []).append(node)
            position.update(dict.fromkeys(node.output, k))
        self.skips, self.activation = {}, {}
        for tensor, k in position.items():
            only = readers.get(tensor, [])
            if len(only) != 1:
                continue
            acts = [i for i in only[0].input if i and i not in self.p.consts]
            rule = CHANNEL_RULES.get(only[0].op_type)
            if only[0].op_type in PASS_RANGES:
                self.activation[tensor] = active_range(only[0], self.p)
            if rule is not None and rule.adds and len(acts) == 2 and acts.count(tensor) == 1:
                other = acts[1] if acts[0] == tensor else acts[0]
                if position.get(other, -1) < k:
                    self.skips[tensor] = (only[0].output[0], other)

    def kept(self, tensor: str, n: int) -> np.ndarray:
        return np.array([c for c in range(n) if c not in self.gone.get(tensor, ())], dtype=np.int64)

    def slim_value(self, name: str) -> np.ndarray:
        (value,) = collect(self.slim, [name], self.x, self.input_name, self.p.elem_types)
        return value

    def use_samples(self, node: NodeProto) -> None:
        """Fit ``node`` on as many of the samples as keep its input and output within :data:`TENSOR_BYTES`."""
        per = max(math.prod(self.p.shapes.get(t, (1,))[1:]) for t in (node.input[0], node.output[0]))
        self.x = self.all_x[: max(16, min(len(self.all_x), TENSOR_BYTES // (4 * max(per, 1))))]

    def refit(self, node: NodeProto) -> LayerFit:
        self.use_samples(node)
        a, how = self.attrs(node), CHANNEL_RULES[node.op_type].refit
        w = self.consts.get(node.input[1])
        if how is None:
            return self.shift(node, f"{node.op_type} weights are not refit: bias shift only")
        if how == "kernel" and w.ndim != 4:
            return self.shift(node, "not a 2-D conv: bias shift only")
        if how == "dense" and self.has_bias(node) and (int(a.get("transA", 0)) or w.ndim != 2 or not a.get("alpha", 1.0)):
            return self.shift(node, f"{node.op_type} with transA or alpha 0: bias shift only")
        if how == "dense" and w.ndim != 2:
            return LayerFit(node.name or node.output[0], node.op_type, "kept", note=f"batched {node.op_type} weight")
        x, (y, active) = self.slim_value(node.input[0]), self.target(node)
        if how == "kernel":
            return self.refit_conv(node, w, x, y, a, active)
        return self.refit_dense(node, w, x, y, a, active)

    def has_bias(self, node: NodeProto) -> bool:
        """Whether ``node``'s op declares a bias input (it may still be absent: :meth:`bias` reads zeros)."""
        return CHANNEL_RULES[node.op_type].bias is not None

    def refit_conv(self, node: NodeProto, w: np.ndarray, x: np.ndarray, y: np.ndarray, a: dict,
                   active: tuple[float, float] | None) -> LayerFit:
        """One fit per group of the conv (a depthwise conv: one small fit per channel)."""
        groups = int(a.get("group", 1))
        cin, cout = w.shape[1], w.shape[0] // groups
        b, w_new = self.bias(node, w.shape[0]), w.astype(np.float64)
        fits = []
        for g in range(groups):
            o = slice(g * cout, (g + 1) * cout)
            beta0 = np.vstack([w_new[o].reshape(cout, -1).T, b[None, o]])
            cols = o if active is None else np.r_[o, w.shape[0] + np.arange(w.shape[0])[o]]
            fits.append(fit(conv_rows(x[:, g * cin:(g + 1) * cin], y[:, cols], a, w.shape[2:]), beta0, active))
            w_new[o], b[o] = fits[-1].beta[:-1].T.reshape(w_new[o].shape), fits[-1].beta[-1]
        self.write(node.input[1], w_new)
        self.write_bias(node, b)
        return _summary(node, fits)

    def refit_dense(self, node: NodeProto, w: np.ndarray, x: np.ndarray, y: np.ndarray, a: dict,
                    active: tuple[float, float] | None) -> LayerFit:
        """``x @ W(ᵀ)·alpha + beta·c`` (Gemm's attributes where given; a MatMul has none and no bias)."""
        trans, alpha, scale = int(a.get("transB", 0)), float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        w_io = (w.T if trans else w).astype(np.float64) * alpha
        intercept = self.has_bias(node) and scale != 0
        beta0 = np.vstack([w_io, self.bias(node, w_io.shape[1])[None, :] * scale]) if intercept else w_io
        result = fit(dense_rows(x, y, intercept), beta0, active)
        w_new = result.beta[: w_io.shape[0]] / alpha
        self.write(node.input[1], w_new.T if trans else w_new)
        if intercept:
            self.write_bias(node, result.beta[-1] / scale)
        return _summary(node, [result])

    def shift(self, node: NodeProto, note: str) -> LayerFit:
        """Refit the bias alone (weights kept): per output channel the constant ``b`` with ``Ŷ − b₀ + b``
        closest to the target (:func:`refit.activation_aware` on a column of ones, the weights' part as
        the offset: λ chosen on held-out samples, through the Relu/Clip that reads the layer, if any;
        without one the loss is the squared error and the fit the mean shift); a MatMul has no bias."""
        self.use_samples(node)
        scale = float(self.attrs(node).get("beta", 1.0))
        if not self.has_bias(node) or not scale:
            return LayerFit(node.name or node.output[0], node.op_type, "kept", note="no bias to shift")
        y, active = self.target(node)
        y_hat = self.slim_value(node.output[0])
        c = y_hat.shape[1]
        b0 = self.bias(node, c) * scale
        rest = y_hat - b0.reshape((1, c) + (1,) * (y.ndim - 2))  # what the weights give: Ŷ = rest + b
        t, o = (y[:, :c], y[:, c:]) if active else (y, np.zeros_like(y))
        both = np.moveaxis(np.concatenate([t - rest, o + rest], axis=1), 1, -1)
        rows = dense_rows(np.ones(both.shape[:-1] + (1,), np.float32), both, False)
        result = activation_aware(list(rows), b0[None, :], active or (-math.inf, math.inf))
        self.write_bias(node, result.beta[0] / scale)
        return replace(_summary(node, [result]), action="shift", note=note)

    def bias(self, node: NodeProto, n: int) -> np.ndarray:
        """The node's bias as a vector of ``n`` (zeros when it has none)."""
        if len(node.input) > 2 and node.input[2]:
            return np.broadcast_to(self.consts.get(node.input[2]).astype(np.float64).reshape(-1), (n,)).copy()
        return np.zeros(n)

    def write(self, name: str, value: np.ndarray) -> None:
        old = self.consts.get(name)
        self.written[name] = value.astype(old.dtype).reshape(old.shape)
        self.consts.set(name, self.written[name])

    def write_bias(self, node: NodeProto, value: np.ndarray) -> None:
        if len(node.input) > 2 and node.input[2]:
            old = self.consts.get(node.input[2])
            if old.size == value.size:
                return self.write(node.input[2], value)
        name = fresh_name(self.slim, f"{node.output[0]}__recovered_bias")
        dtype = self.consts.get(node.input[1]).dtype
        _add_bias(self.slim, node, name, value.astype(dtype))
        self.consts = ModelEditor(self.slim)
        self.written[name] = value.astype(dtype)
        self.added[name] = (node.output[0], self.kept(node.output[0], self.cg.layouts[node.output[0]].n)
                            if node.output[0] in self.cg.layouts else np.arange(value.size))


def _summary(node: NodeProto, fits: list[Fit]) -> LayerFit:
    """A layer's fits in one row: rows and errors summed over groups, the median λ of those refit."""
    yy = max(sum(f.yy for f in fits), 1e-300)
    lams = [f.ridge for f in fits if f.ridge is not None]
    return LayerFit(node.name or node.output[0], node.op_type, "refit", sum(f.rows for f in fits), float(np.median(lams)) if lams else None,
                    math.sqrt(sum(f.err0 for f in fits) / yy), math.sqrt(sum(f.err1 for f in fits) / yy),
                    f"{len(fits)} groups" if len(fits) > 1 else "")


def _add_bias(model: ModelProto, node: NodeProto, name: str, value: np.ndarray) -> None:
    """Give ``node`` (of ``model``) the bias input ``name`` = ``value`` (listed as a graph input too in
    files that list their initializers there, IR 3)."""
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    inputs = {i.name for i in model.graph.input}
    if any(t.name in inputs for t in model.graph.initializer):
        model.graph.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))


# ------------------------------------------------------------------------------------------------
# the recovered pair, evaluation
# ------------------------------------------------------------------------------------------------


def _full_size(rec: _Recoverer, masked: ModelProto, original: ModelProto, removed: list[int]) -> tuple[ModelProto, ModelProto]:
    """The recovered masked model (each written tensor at full size: kept rows × kept columns set, the
    rest the masked model's) and the reference original (with a zero bias wherever one was added)."""
    out, reference = copy_model(masked), copy_model(original)
    consts = ModelEditor(out)
    cuts = _cuts(rec.cg, removed, ("sinks", "sources", "slices"))
    for name, value in rec.written.items():
        if name in rec.added:
            continue
        full = consts.get(name).copy()
        axes = cuts.get(name, {})
        full[np.ix_(*(np.delete(np.arange(n), sorted(axes.get(k, ()))) for k, n in enumerate(full.shape)))] = value
        consts.set(name, full)
    for name, (tensor, kept) in rec.added.items():
        n = rec.cg.layouts[tensor].n if tensor in rec.cg.layouts else kept.size
        full = np.zeros(n, rec.written[name].dtype)
        full[kept] = rec.written[name]
        for model, value in ((out, full), (reference, np.zeros_like(full))):
            _add_bias(model, next(nd for nd in model.graph.node if nd.output and nd.output[0] == tensor), name, value)
    return out, reference


@dataclass
class Recovery:
    """The recovered slim model, its full-size masked form and the reference original it is certified
    against, the per-layer fits and the before/after tables (``calibration``, ``eval``: per model
    ``original`` / ``pruned`` / ``recovered``, see :func:`evaluate`)."""

    slim: ModelProto
    masked: ModelProto
    reference: ModelProto
    slim_error: float
    layers: list[LayerFit]
    samples: int
    calibration: dict[str, dict[str, float]]
    eval: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict:
        return {"samples": self.samples, "layers": [f.__dict__ for f in self.layers],
                "refit": sum(f.action == "refit" for f in self.layers), "shifted": sum(f.action == "shift" for f in self.layers),
                "slim_vs_masked_max_rel_error": self.slim_error, "calibration": self.calibration, "eval": self.eval}


def recover(original: ModelProto, slim: ModelProto, masked: ModelProto, cg: ChannelGraph, removed: list[int],
            prepared: Prepared, outputs: list[str], calibration: tuple[np.ndarray, np.ndarray | None],
            eval_data: tuple[np.ndarray, np.ndarray | None] | None = None) -> Recovery:
    """Refit ``slim`` (cut from ``original`` by removing the groups ``removed`` of ``cg``) on the
    calibration samples ``(x, y)``, layer by layer (module docstring); build its full-size masked form
    (checked to compute the same function) and evaluate original, pruned and recovered models on the
    calibration and ``eval_data`` samples (analysed ``outputs``; the first is the logits)."""
    input_name = next(iter(prepared.inputs))
    rec = _Recoverer(original, slim, cg, removed, prepared, calibration[0], input_name)
    layers = rec.run()
    masked_rec, reference = _full_size(rec, masked, original, removed)
    error = check_slim(masked_rec, rec.slim, prepared, outputs)
    models = {"original": original, "pruned": slim, "recovered": rec.slim}
    result = Recovery(rec.slim, masked_rec, reference, error, layers, len(calibration[0]),
                      evaluate(models, *calibration, input_name, outputs, prepared.elem_types))
    if eval_data is not None:
        result.eval = evaluate(models, *eval_data, input_name, outputs, prepared.elem_types)
    return result


def data_aware_mass(cg: ChannelGraph, model: ModelProto, prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """Data-aware path mass of each channel group of ``cg`` (``model``'s), in :func:`channels.group_scores`'
    order (NaN for pinned groups), as a fraction of the total.

    On an input ``x`` a ReLU network is ``R(x) = Σ_p Φ_p(θ)·a_p(x)·x_p`` over paths ``p`` (``x_p``: the
    input at its start, 1 for a bias path; ``a_p(x) ∈ {0, 1}``: every activation on it passes, Relu
    ``z > 0``, Clip ``lo < z < hi``). The score weights each path of the group's path mass by how
    often its neurons pass and by how large its input is on the calibration samples::

        S(g) = Σ_{p through g's sink weights} |Φ_p(θ)| · Π_{v ∈ p} P(v passes) · E|x_p|

    = the path mass of :func:`gated_model`, computed by :func:`channels.group_scores` on it.

    Rescaling invariance: a neuron-wise rescaling ``θ → θ'`` (incoming weights and bias of a
    ReLU/identity neuron ``v`` times ``λ_v > 0``, its outgoing weights times ``1/λ_v``) keeps the
    function of every neuron up to the factor ``λ_v``, so ``z_v' = λ_v·z_v`` has the sign of
    ``z_v``: every ``P(v passes)`` is unchanged (a rescaling does not cross a Clip, whose bounds
    would not scale), ``E|x_p|`` does not involve θ, and every ``Φ_p`` is unchanged (each ``λ_v``
    enters a path once as ``λ_v`` and once as ``1/λ_v``); so every term, and ``S(g)``, is unchanged.
    """
    from ..frontend.importer import import_model

    gated = gated_model(model, prepared, x)
    dag = import_model(gated, {n: list(s) for n, s in prepared.inputs.items()})
    return group_scores(cg, prepared, "path-mass", dag)
