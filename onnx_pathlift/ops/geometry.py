"""Convolution and pooling geometry shared by conv, deconv and pool: pads, strides, dilations."""

from __future__ import annotations

import math
from typing import Any

from ..errors import RefuseNode


def pads_problem(a: dict[str, Any]) -> str | None:
    """A conv or pool node may not set both explicit ``pads`` and an ``auto_pad`` other than NOTSET."""
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode(errors="replace") if isinstance(auto_pad, bytes) else auto_pad
    if "pads" in a and auto_pad not in ("", "NOTSET"):
        return f"it sets both pads {a['pads']} and auto_pad {auto_pad!r}"
    return None


def spatial_attrs(a: dict[str, Any], in_spatial: tuple[int, ...], kernel: tuple[int, ...]) -> dict[str, list[int]]:
    """Strides, dilations and explicit pads (``auto_pad`` resolved) of a conv or pool node (``a``: its
    normalised attributes)."""
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    auto_pad = a["auto_pad"]
    if auto_pad in ("", "NOTSET"):
        pads = list(a.get("pads", [0] * (2 * n)))
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                  for size, k, s, d in zip(in_spatial, kernel, strides, dilations)]
        pads = split_pads(totals, odd_at_end=auto_pad == "SAME_UPPER")
    else:
        raise RefuseNode(f"unknown auto_pad {auto_pad!r}")
    return {"strides": strides, "dilations": dilations, "pads": pads}


def split_pads(totals: list[int], odd_at_end: bool) -> list[int]:
    """Begin pads then end pads, each total padding halved; an odd unit goes at the end (SAME_UPPER)
    or at the beginning (SAME_LOWER, and ConvTranspose's output_shape)."""
    small, large = [t // 2 for t in totals], [t - t // 2 for t in totals]
    return small + large if odd_at_end else large + small
