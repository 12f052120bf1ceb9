"""Resize and Upsample in mode ``nearest``: each output neuron copies one input neuron, so they are
selections (:mod:`onnx_pathlift.ops.selection`: lifted, adjoint and re-emitted as one Gather per moved
axis) whose index lists follow onnxruntime's nearest rule: its float32 coordinate transform, rounding
mode and clamping, so that the lifted form, the static bounds and the adjoint all use one index map, and
the re-emission check against the source model's own Resize tests that map on every model. Channel
pruning: with the batch and channel axes unscaled, channel ``c`` in and out are one channel."""

from __future__ import annotations

import numpy as np

from ..errors import RefuseNode
from .channel_api import ChannelBuilder, Layout
from .context import ImportContext
from .registry import channel_rule, imports
from .selection import add_selection, const_ints, has_input

_F32 = np.float32

_COORDINATE_MODES = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                     "tf_half_pixel_for_nn", "tf_crop_and_resize"}
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}
_POLICIES = {"stretch", "not_larger", "not_smaller"}


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``round`` on float32 values (halves away from zero), exact in float64."""
    x = x.astype(np.float64)
    return np.where(x >= 0, np.floor(x + 0.5), -np.floor(0.5 - x))


def _original_coordinate(mode: str, out_len: int, in_len: int, scale: np.float32) -> np.ndarray:
    """onnxruntime's coordinate transform, in its float32 arithmetic (float64 where it uses double)."""
    x = np.arange(out_len, dtype=_F32)
    half, lo, lr = _F32(0.5), _F32(in_len), _F32(out_len)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / scale
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if out_len > 1 else np.zeros(out_len, _F32)
    if mode == "align_corners":
        return x * (lo - _F32(1)) / (lr - _F32(1)) if out_len > 1 else np.zeros(out_len, _F32)
    if mode == "half_pixel_symmetric":
        offset = (lo / _F32(2)) * (_F32(1) - lr / (scale * lo))
        return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(scale) - 0.5).astype(_F32)
    return (x + half) / scale - half  # half_pixel


def _nearest(mode: str, x: np.ndarray, scale: np.float32) -> np.ndarray:
    """onnxruntime's nearest-pixel rule (``simple``: Resize-10 and Upsample, ceil when downsampling).
    The round modes treat a coordinate within ``1e-6`` of a half as that half: onnxruntime 1.32 does
    (measured; ``tests/test_ops_select.py`` compares this rule with onnxruntime's Resize)."""
    if mode == "simple":
        return np.ceil(x) if scale < 1 else np.trunc(x)
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    x64 = x.astype(np.float64)
    halfway = np.abs(x64 - (np.floor(x64) + 0.5)) < np.float64(_F32(1e-6))
    return np.where(halfway, np.floor(x64) if mode == "round_prefer_floor" else np.ceil(x64), _round_half_away(x))


def nearest_index(in_len: int, out_len: int, scale: float, coordinate: str, nearest: str) -> list[int]:
    """The input position each output position of a nearest Resize copies along one axis."""
    s = _F32(scale)
    x = _original_coordinate(coordinate, out_len, in_len, s)
    return [int(i) for i in np.clip(_nearest(nearest, x, s), 0, in_len - 1)]


def _resize_geometry(in_shape: tuple[int, ...], scales: list[float], sizes: list[int] | None, axes: list[int] | None,
                     policy: str) -> tuple[list[np.float32], list[int]]:
    """Per-axis float32 scales and output sizes as onnxruntime derives them: ``out = ⌊scale·in⌋`` from
    scales; ``scale = out / in`` from sizes, then ``keep_aspect_ratio_policy`` (one scale for the
    listed axes, every axis when ``axes`` is absent, and ``out = round(scale·in)``)."""
    rank = len(in_shape)
    listed = axes if axes is not None else list(range(rank))
    if sizes is None:
        full = [_F32(1)] * rank
        for ax, s in zip(listed, scales):
            full[ax] = _F32(s)
        return full, [int(s * _F32(d)) for s, d in zip(full, in_shape)]
    out = list(in_shape)
    for ax, s in zip(listed, sizes):
        out[ax] = s
    full = [_F32(o) / _F32(d) for o, d in zip(out, in_shape)]
    if policy != "stretch":
        pick = min if policy == "not_larger" else max
        s = pick(full[ax] for ax in listed)
        full = [s if ax in listed else _F32(1) for ax in range(rank)]
        out = [int(_round_half_away(np.array(s * _F32(d)))) if ax in listed else d for ax, d in enumerate(in_shape)]
    return full, out


@imports("Resize", "Upsample")
def import_resize(node, ctx: ImportContext) -> None:
    a, opset = ctx.attrs(node), ctx.prepared.opset
    in_shape = ctx.shape(node.input[0])
    rank = len(in_shape)
    mode = a["mode"]
    if mode != "nearest":
        raise RefuseNode(f"mode {mode!r} interpolates: each output neuron is a fixed weighted sum of input neurons, linear "
                         "in x, so it could be lifted like a convolution with |weights|**q, but that is not implemented; "
                         "only mode 'nearest' (each output copies one input neuron) is supported")
    sizes, axes, policy = None, None, "stretch"
    if node.op_type == "Upsample" or opset < 11:  # Upsample-7/9 and Resize-10: asymmetric, onnxruntime's 'simple' rounding
        coordinate, nearest = "asymmetric", "simple"
        scales = [float(s) for s in a["scales"]] if node.op_type == "Upsample" and opset < 9 else \
            [float(s) for s in ctx.param(node, 1, "scales").reshape(-1)]
    else:
        coordinate, nearest = a["coordinate_transformation_mode"], a["nearest_mode"]
        policy = a.get("keep_aspect_ratio_policy", "stretch")  # opset 18
        if coordinate not in _COORDINATE_MODES or nearest not in _NEAREST_MODES or policy not in _POLICIES:
            raise RefuseNode(f"unknown coordinate_transformation_mode {coordinate!r}, nearest_mode {nearest!r} or "
                             f"keep_aspect_ratio_policy {policy!r}")
        if coordinate == "tf_crop_and_resize":
            raise RefuseNode("coordinate_transformation_mode 'tf_crop_and_resize' (a region of interest, constant "
                             "extrapolation_value outside it) is not supported")
        if int(a.get("antialias", 0)):
            raise RefuseNode("antialias=1 is only defined for the linear and cubic modes")
        if "axes" in a:
            axes = [int(ax) % rank for ax in a["axes"]]
        scales = [float(s) for s in ctx.param(node, 2, "scales").reshape(-1)] if has_input(node, 2) else []
        if not scales:
            if not has_input(node, 3):
                raise RefuseNode("it has neither scales nor sizes")
            sizes = const_ints(ctx, node, 3, "sizes")
    given = scales if sizes is None else sizes
    if len(given) != (rank if axes is None else len(axes)) or min(given) <= 0:
        raise RefuseNode(f"its {'scales' if sizes is None else 'sizes'} {given} do not fit an input of shape {in_shape}")
    full, out = _resize_geometry(in_shape, scales, sizes, axes, policy)
    out_shape = ctx.shape(node.output[0])
    if tuple(out) != tuple(out_shape):
        raise RefuseNode(f"onnxruntime computes the output shape {tuple(out)}, ONNX shape inference gives {tuple(out_shape)}")
    index = []  # onnxruntime copies the tensor when no size changes, else maps every axis of scale ≠ 1
    for ax, (s, d, o) in enumerate(zip(full, in_shape, out)):
        idx = list(range(d)) if s == 1 or tuple(out) == tuple(in_shape) else nearest_index(d, o, s, coordinate, nearest)
        if idx != list(range(d)):
            index.append([ax, idx, [o]])
    add_selection(ctx, node, "select", index, node.output[0])


@channel_rule("Resize", "Upsample")
def resize_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Resize/Upsample with the batch and channel axes unscaled: each output channel is resampled from
    the same input channel alone, so channel ``c`` in and out are one channel; a constant ``sizes``
    that lists the channel axis has that entry rewritten (a computed or shared one pins)."""
    x, shape_in, shape_out = xs[0], b.shape(node.input[0]), b.shape(node.output[0])
    if x.axis != 1 or x.block != 1 or tuple(shape_in[:2]) != tuple(shape_out[:2]):
        return b.opaque(node, f"{b.label(node)} resamples the batch or channel axis")
    out = b.same(node, x)
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    axes = [int(a) % len(shape_in) for a in b.attrs(node).get("axes", range(len(shape_in)))]
    if sizes and 1 in axes and b.owned_or_pin([sizes], [out], node):
        b.width(sizes, axes.index(1), node.output[0])
