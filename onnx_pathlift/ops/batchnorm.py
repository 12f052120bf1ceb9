"""BatchNormalization in inference mode, imported as its own per-channel affine layer.

Algebra: ``y = s·x + t`` per channel with ``s = γ/√(var + ε)``, ``t = β − μ·s``; lifted
``|s|**q·x + |t|**q`` (not fused into a preceding conv: fusing is another parameterization).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidModelError, RefuseNode
from .channel_api import ChannelBuilder, Layout, SlimEdit
from .context import ImportContext, operand
from .registry import channel_rule, imports, spec_rule


@spec_rule("BatchNormalization")
def batchnorm_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """Constant scale, bias, mean and variance of shape ``(C,)`` for an input of ``C`` channels."""
    x = operand(node, 0, shapes)
    for i, what in enumerate(("scale", "bias", "mean", "var"), start=1):
        v = operand(node, i, consts)
        if x is not None and len(x) > 1 and v is not None and v.shape != x[1:2]:
            return f"its {what} {node.input[i]!r} has shape {v.shape}, its input {x} needs ({x[1]},)"
    return None


def batchnorm_macs(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> int:
    """One multiply-add per output entry (the folded ``scale·x + shift``)."""
    return math.prod(shapes[node.output[0]])


@channel_rule("BatchNormalization", macs=batchnorm_macs, statistics=(3, 4))  # running mean and variance
def batchnorm_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Per channel: channel ``c`` in and out are one channel; its scale, bias, mean and variance
    entries ``c`` are sliced with it (on a flattened tensor the statistics do not follow: pinned)."""
    _per_channel_params(b, node, xs[0], list(node.input[1:5]))


def _per_channel_params(b: ChannelBuilder, node, x: Layout, params: list[str]) -> None:
    """Channel ``c`` in and out are one channel, and entry ``c`` of each of ``params`` is sliced with it;
    on a flattened tensor (channels no longer on axis 1) the per-channel parameters do not follow: pinned."""
    out = b.same(node, x)
    if x.axis != 1 or x.block != 1:
        return b.pin(out, f"{b.label(node)} on a flattened tensor")
    if b.owned_or_pin(params, [out], node):
        for name in params:
            b.entry(out, "slice", name, 0)


@imports("BatchNormalization", note="kept as its own per-channel affine layer (not fused into the layer before)")
def import_batchnorm(node, ctx: ImportContext) -> None:
    a = ctx.attrs(node)
    if int(a.get("training_mode", 0)):
        raise RefuseNode("training_mode=1 normalizes with batch statistics, which is not a fixed affine map")
    if int(a.get("spatial", 1)) == 0:
        raise RefuseNode("spatial=0 (per-element statistics) is not supported")
    ctx.only_first_output(node, "running statistics")
    gamma, beta, mean, var = (ctx.param(node, k, w) for k, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    channels = ctx.shape(node.input[0])[1]
    for what, v in (("scale", gamma), ("bias", beta), ("mean", mean), ("variance", var)):
        if v.size != channels:
            raise InvalidModelError(f"node {node.name!r}: BatchNormalization {what} has {v.size} entries but its "
                                    f"input has {channels} channels (onnxruntime rejects this model too)")
    eps = float(a["epsilon"])
    if np.any(var + eps <= 0):
        raise RefuseNode("variance + epsilon is not positive")
    s = gamma / np.sqrt(var + eps)
    t = beta - mean * s
    shape = ctx.shape(node.output[0])
    bshape = (-1,) + (1,) * (len(shape) - 2)
    ctx.add(node, "affine", [ctx.act(node.input[0])], shape, {"scale": s.reshape(bshape), "bias": t.reshape(bshape)},
            origins={"bias": (node.input[2], False), "mean": (node.input[3], False)})  # t scales with β and μ


@channel_rule("InstanceNormalization")
def instancenorm_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Per channel (statistics over the spatial axes of each channel ``c`` alone): channel ``c`` in
    and out are one channel; its scale and bias entries ``c`` are sliced with it. The slots may be
    GroupNorm's groups (the input reshaped to ``(N, G, -1)``: :func:`~onnx_pathlift.ops.shape.reshape_channels`)."""
    _per_channel_params(b, node, xs[0], list(node.input[1:3]))


def _set_groups(node, data: tuple[str, int], ctx: SlimEdit) -> None:
    """``num_groups`` becomes the kept channels over the channels per group (whole groups are removed)."""
    tensor, per = data
    next(a for a in node.attribute if a.name == "num_groups").i = ctx.kept[tensor] // per


@channel_rule("GroupNormalization", edit=_set_groups)
def groupnorm_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """GroupNormalization (``num_groups`` G of ``C/G`` consecutive channels, statistics per group):
    a group's channels are one channel group (only whole groups go, so removable counts are multiples
    of ``C/G``), input and output; scale and bias are sliced per channel (opset 21: size C) or per
    group (opset 18: size G); ``num_groups`` is edited to the kept groups."""
    x, groups = xs[0], int(b.attrs(node)["num_groups"])
    out = b.same(node, x)
    if x.axis != 1 or x.block != 1 or groups < 1 or x.n % groups:
        return b.pin(out, f"{b.label(node)}: {groups} groups of a flattened or uneven tensor")
    per = x.n // groups
    for g in range(groups):
        b.join(np.full(per, x.base + g * per), np.arange(x.base + g * per, x.base + (g + 1) * per))
    params = list(node.input[1:3])
    if not b.owned_or_pin(params, [out], node):
        return
    for name in params:
        if b.consts[name].size == x.n:
            b.entry(out, "slice", name, 0)
        else:  # one entry per group, taken with the group's first channel
            for g in range(groups):
                b.entry(Layout(out.base + g * per, 1, 1), "slice", name, 0, start=g)
    b.edit(node, (node.output[0], per))


@channel_rule("LayerNormalization")
def layernorm_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """LayerNormalization over axes after the channel axis (``axis`` > channel axis) acts per channel:
    sliced as such (its scale and bias have no channel axis). Over the channel axis it couples every
    channel's output to the statistics of all of them (removing one changes the others): pinned."""
    x, rank = xs[0], len(b.shape(node.input[0]))
    axis = int(b.attrs(node).get("axis", -1)) % rank
    if axis <= x.axis:
        return b.opaque(node, f"{b.label(node)} normalises over the channel axis: "
                              "every channel depends on the statistics of all of them")
    b.same(node, x)
