"""Random neuron-wise rescaling that keeps the function: the paper's test of invariance.

For a hidden channel of a conv/dense layer C whose only way onward is a chain of per-channel layers
(bias or BatchNormalization affine, ReLU, pools, reductions that keep the channel axis, a flatten)
into one conv/dense layer D: multiply
C's incoming weights and every bias on the chain by λ > 0 and D's weights from that channel by 1/λ.
ReLU and pools commute with a positive per-channel factor, so the function is unchanged, and so is
the path-lifting Φ; the weights' magnitudes are not. Channels on other structures (skips, concats,
grouped convs downstream) are left alone and counted. Each layer op declares its part
(:attr:`~onnx_pathlift.ops.LayerOp.rescale_role`, :meth:`~onnx_pathlift.ops.LayerOp.rescale_axes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from onnx import ModelProto

from ..backend.verify import VerifyReport, same_function
from ..errors import UsageError, VerificationError
from ..fileio.atomic import refuse_overwriting_input, save_model
from ..fileio.load import ModelSource
from ..frontend.edit import ModelEditor, copy_model
from ..frontend.pipeline import load
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS, require
from ..ops.layer_op import RescaleAxes
from . import Command

if TYPE_CHECKING:
    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared


@dataclass
class RescaleReport:
    neurons: int  # channels rescaled
    layers: int  # conv/dense layers whose output channels were rescaled
    shared: int = 0  # channels left alone: an initializer they would scale also feeds another node


def _role(layer: Layer) -> str | None:
    return LAYER_OPS[layer.op].rescale_role


def _axes(layer: Layer) -> RescaleAxes | None:
    """Where a per-channel factor goes in ``layer``'s weight, None if it has no "weights" role."""
    return LAYER_OPS[layer.op].rescale_axes(layer) if _role(layer) == "weights" else None


def _chain(dag: Dag, c: Layer, consumers: dict[str, list[str]]) -> tuple[list[Layer], Layer, int] | None:
    """The per-channel chain from ``c`` to the next conv/dense layer, with the channel block size
    in that layer's input (a flatten spreads one channel over its spatial positions)."""
    path, cur, block = [], c, 1
    outputs = set(dag.outputs.values())
    axis = _axes(c).channel
    while True:
        if cur.name in outputs or len(consumers.get(cur.name, [])) != 1:
            return None
        nxt = dag.layer(consumers[cur.name][0])
        into = _axes(nxt)
        if _role(nxt) == "per_channel" and LAYER_OPS[nxt.op].keeps_channel(nxt, axis):
            path.append(nxt)
        elif _role(nxt) == "flatten" and len(nxt.shape) == 2 and len(cur.shape) >= 2 and nxt.shape[0] == cur.shape[0] \
                and axis == 1:
            block = int(np.prod(cur.shape[2:]))  # (N, C, ...) flattened to (N, C·S): channel o → o·S ... o·S+S−1
            path.append(nxt)
        elif into is not None and into.into is not None and (into.flat or (block == 1 and axis == into.channel)):
            return path, nxt, block
        else:
            return None
        cur = nxt


def scaled(w: np.ndarray, factor: np.ndarray, axis: int) -> np.ndarray:
    """``w`` times ``factor`` along ``axis`` (same dtype); ValueError when the axis has another length."""
    axis %= w.ndim
    if w.shape[axis] != factor.size:
        raise ValueError(f"axis {axis} has {w.shape[axis]} entries, expected {factor.size}")
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * factor.reshape(shape)).astype(w.dtype)


def _scale_initializer(arrays: dict[str, np.ndarray], origin: tuple[str, bool], factor: np.ndarray, axis: int) -> None:
    """Multiply an initializer along ``axis`` (of its DAG layout; transposed origins flip a 2-D axis)."""
    name, transposed = origin
    try:
        arrays[name] = scaled(arrays[name], factor, 1 - axis if transposed else axis)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


@dataclass(frozen=True)
class Group:
    """The hidden channels of a conv/dense layer ``c`` that may take λ > 0 together: ``c``'s weights along
    ``axes.out`` and every bias on the per-channel ``path`` times λ, ``d``'s weights along its input
    axis times 1/λ (each channel repeated ``block`` times: a flatten)."""

    c: Layer
    axes: RescaleAxes
    path: list[Layer]
    d: Layer
    block: int

    @property
    def channels(self) -> int:
        return self.c.shape[self.axes.channel]

    def bias_axis(self, layer: Layer, bias: np.ndarray) -> int:
        """The channel axis of a chain layer's broadcast bias constant."""
        return bias.ndim - (len(layer.shape) - self.axes.channel)


def groups(dag: Dag) -> list[Group]:
    """Every rescalable channel group of ``dag``, in topological order of ``c`` (see the module doc)."""
    consumers: dict[str, list[str]] = {}
    for layer in dag.layers():
        for i in layer.inputs:
            consumers.setdefault(i, []).append(layer.name)
    out = []
    for c in dag.layers():
        axes = _axes(c)
        found = None if axes is None or "W" not in c.params else _chain(dag, c, consumers)
        if found is not None:
            out.append(Group(c, axes, *found))
    return out


def _initializers(g: Group) -> list[tuple[tuple[str, bool], str | Layer]] | None:
    """The initializers a group scales (origin, what: "W" of c, "D" of d, or the chain layer of a bias),
    None when one of them cannot be traced back to the ONNX file."""
    if "W" not in g.c.origins or "W" not in g.d.origins:
        return None
    rescaled = {layer.name: LAYER_OPS[layer.op].rescaled_params for layer in g.path}
    if any(k in layer.params and k not in layer.origins for layer in g.path for k in rescaled[layer.name]):
        return None  # a bias we cannot trace back to an initializer
    biases = [(layer.origins[key], layer) for layer in g.path for key in rescaled[layer.name] if key in layer.origins]
    return [(g.c.origins["W"], "W"), *biases, (g.d.origins["W"], "D")]


def rescale(model: ModelProto, dag: Dag, seed: int = 0, low: float = 1 / 8, high: float = 8.0) -> tuple[ModelProto, RescaleReport]:
    """A copy of ``model`` with random per-channel factors λ ~ log-uniform[low, high]; the channels of a
    group with an initializer that also feeds another node are left alone (counted)."""
    require(dag, "rescale")
    rng = np.random.default_rng(seed)
    out = copy_model(model)
    editor = ModelEditor(out)
    arrays = {name: editor.get(name) for name in editor.init}
    shared = editor.shared()
    report = RescaleReport(0, 0)
    for g in groups(dag):
        found = _initializers(g)
        if found is None or any(origin[0] not in arrays for origin, _ in found):
            continue
        if any(origin[0] in shared for origin, _ in found):
            report.shared += g.channels
            continue
        lam = np.exp(rng.uniform(np.log(low), np.log(high), g.channels))
        try:
            staged = dict(arrays)
            for (name, transposed), what in found:
                if what == "W":
                    _scale_initializer(staged, (name, transposed), lam, g.axes.out)
                elif what == "D":
                    _scale_initializer(staged, (name, transposed), np.repeat(1.0 / lam, g.block), _axes(g.d).into)
                else:
                    _scale_initializer(staged, (name, False), lam, g.bias_axis(what, staged[name]))
        except ValueError:
            continue  # a broadcast layout this rule does not handle: leave the channel alone
        arrays = staged
        report.neurons += g.channels
        report.layers += 1
    for name, value in arrays.items():
        editor.set(name, value)
    return out, report


@dataclass
class RescaleResult:
    """``onnx-pathlift rescale``: the rescaled model and the check that it computes the same function."""

    written: str | None
    model: ModelProto
    neurons: int  # hidden channels rescaled
    layers: int  # conv/dense layers whose output channels were rescaled
    check: VerifyReport  # one random input (the seed's), relative tolerance 1e-4
    seed: int
    low: float  # λ drawn log-uniformly in [low, high]
    high: float
    shared: int = 0  # channels left alone: an initializer they would scale also feeds another node

    @property
    def note(self) -> str | None:
        """What was left alone, said when anything was (and that the output is a copy when nothing moved)."""
        skipped = (f"{self.shared} channel(s) left alone: an initializer they would scale also feeds another node"
                   if self.shared else "")
        if self.neurons:
            return skipped or None
        return "rescaled nothing: the output is an unchanged copy" + (
            f" ({skipped})" if skipped else " (no hidden channel has a rescalable chain whose weights and biases are all initializers)")

    @property
    def max_rel_output_change(self) -> float:
        return max(self.check.max_rel_error.values(), default=0.0)

    def to_dict(self) -> dict:
        return {"written": self.written, "neurons": self.neurons, "layers": self.layers, "shared": self.shared,
                "note": self.note, "max_rel_output_change": self.max_rel_output_change}


def rescale_model(source: ModelSource, out: str | os.PathLike | None = None, seed: int = 0, low: float = 1 / 8,
                  high: float = 8.0, input_shape: InputShape = None, outputs: list[str] | None = None) -> RescaleResult:
    """A copy of ``source`` with every rescalable hidden channel's incoming weights (and biases) times
    λ and its outgoing weights times 1/λ, λ drawn log-uniformly in [``low``, ``high``] (``seed``): the
    same function and path-lifting, other weights. Checked on one random input (``seed``) by
    :func:`onnx_pathlift.backend.verify.same_function`; written to ``out`` (when given) only once checked.
    Raises :class:`UsageError` unless ``0 < low ≤ high`` or when ``out`` is the input, and
    :class:`VerificationError` (exit code 1) when the outputs changed by more than 1e-4 (relative)."""
    if out is not None and isinstance(source, (str, os.PathLike)):
        refuse_overwriting_input(out, source)
    loaded = load(source, input_shape, outputs)
    if not 0 < low <= high:
        raise UsageError(f"--range needs 0 < LO ≤ HI (got {low} {high})")
    rescaled, report = rescale(loaded.model, loaded.dag, seed=seed, low=low, high=high)
    check = same_function(loaded.model, rescaled, loaded.dag, trials=1, seed=seed)
    result = RescaleResult(None if out is None else str(out), rescaled, report.neurons, report.layers, check, seed, low,
                           high, report.shared)
    if not check.passed:
        raise VerificationError(f"the rescaled model changed the outputs (max relative error "
                                f"{result.max_rel_output_change:.3g})")
    if out is not None:
        save_model(rescaled, out)
    return result


def _print(r: RescaleResult, args) -> None:
    print(f"rescaled {r.neurons} neurons in {r.layers} layers (λ log-uniform in [{r.low:g}, {r.high:g}], seed "
          f"{r.seed}); outputs unchanged to {r.max_rel_output_change:.2g}; wrote {r.written}")
    if r.note:
        print(f"  note: {r.note}")


def _options(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the random scale factors (and of the check's inputs)")
    parser.add_argument("--range", type=float, nargs=2, default=[1 / 8, 8.0], metavar=("LO", "HI"),
                        help="each hidden neuron's factor λ is drawn log-uniformly in [LO, HI]")
    parser.add_argument("-o", "--out", required=True, help="where to write the rescaled model")


def _run(args, common: dict) -> RescaleResult:
    lo, hi = args.range
    return rescale_model(args.model, args.out, seed=args.seed, low=lo, high=hi, **common)


COMMAND = Command("rescale", _options, _run, _print, rescale_model)
