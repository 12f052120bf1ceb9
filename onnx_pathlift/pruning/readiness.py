"""Whether a model can be channel-pruned, and why path mass and the certificate are left out of one the
importer refuses: what ``inspect`` reports and ``prune --structure channel`` says (channel groups need no
DAG; path mass and the path-metric need a DAG-ReLU network)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from onnx import ModelProto
from onnx.defs import has

from ..errors import UnsupportedModelError
from ..frontend.edit import untie
from ..frontend.names import layer_names
from ..frontend.prepare import Prepared, prepare
from .channels import channel_graph


def no_dag(refusal: UnsupportedModelError) -> tuple[str, str]:
    """Why path mass, and why the certificate, are left out of a model the importer refuses (its first
    refused node, and how many more)."""
    more = len(refusal.refusals) - 1
    first = str(refusal.refusals[0]) + (f" (and {more} more refused node(s))" if more else "")
    return (f"path-mass needs a DAG-ReLU network: {first}",
            f"the certificate (path-metric) needs a DAG-ReLU network: {first}")


def channel_readiness(model: ModelProto, prepared: Prepared, refusal: UnsupportedModelError | None) -> dict[str, Any]:
    """What ``prune --structure channel`` would do with ``model`` (``prepared``; ``refusal``: the importer's,
    None for a DAG-ReLU network), without scoring or running it: its channel groups (``total``, ``removable``:
    after :func:`~onnx_pathlift.pruning.slim.untie`'s copies, as pruning makes them), ``prunable`` (a
    removable group exists), the criterion it would rank by (``path-mass``, else ``l1-norm`` and
    ``criterion_reason``), whether the result is ``certified`` (else ``certificate_reason``) and the
    reasons that keep the most groups (``kept``, at most three). A node without an ONNX schema (a custom
    op) makes ``prunable`` False with a ``reason``: the slim model is checked by running it."""
    untied, origin = untie(model)
    cg = channel_graph(untied, prepare(untied, prepared.inputs) if origin else prepared, layer_names(prepared, None))
    kept = Counter(g.pinned for g in cg.groups if g.pinned).most_common(3)
    out: dict[str, Any] = {"groups": len(cg.groups), "removable": len(cg.removable()), "prunable": bool(cg.removable()),
                           "criterion": "path-mass" if refusal is None else "l1-norm", "certified": refusal is None,
                           "kept": [{"reason": why, "groups": n} for why, n in kept]}
    if refusal is not None:
        out["criterion_reason"], out["certificate_reason"] = no_dag(refusal)
    custom = next((n for n in prepared.nodes if not has(n.op_type, n.domain)), None)
    if custom is not None:
        out["prunable"] = False
        out["reason"] = (f"node {custom.name or custom.output[0]!r} ({custom.domain}:{custom.op_type}) has no ONNX schema, "
                         "and the slim model is checked by running it (prune tries onnxruntime)")
    return out
