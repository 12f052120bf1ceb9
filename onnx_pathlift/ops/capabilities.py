"""What each analysis needs from the layer ops of a DAG, and the one up-front check of it.

Every analysis calls :func:`require` on its DAG before it emits anything, so a layer op that lacks
a capability (:data:`~onnx_pathlift.ops.layer_op.CAPABILITY_METHODS`) is refused by name, with the
missing capability, as an unsupported model (exit code 3), instead of failing mid-run.
"""

from __future__ import annotations

from ..errors import Refusal, UnsupportedModelError
from ..ir.dag import Dag
from .layer_op import ADJOINT, CAPABILITY_METHODS, LIFT, LIPSCHITZ, TWO_STREAM
from .registry import LAYER_OPS

#: each analysis and the capabilities it needs of every layer op in the DAG. Rescaling needs the lifted
#: and re-emitted networks (a layer without a rescale role only ends a rescaled chain); channel pruning
#: scores by path mass (the adjoint); its slicing rules are keyed by ONNX op type in
#: :mod:`onnx_pathlift.pruning.channels`, which pins what it cannot slice
ANALYSES: dict[str, frozenset[str]] = {
    "norm": frozenset({LIFT}),
    "scores": frozenset({LIFT, ADJOINT}),
    "metric": frozenset({LIFT, TWO_STREAM}),
    "lipschitz": frozenset({LIFT, LIPSCHITZ}),
    "rescale": frozenset({LIFT}),
    "channel-prune": frozenset({LIFT, ADJOINT}),
}


def missing(op: str, analysis: str) -> list[str]:
    """The capabilities ``analysis`` needs that layer op ``op`` lacks (all of them for an unknown op)."""
    needed = ANALYSES[analysis]
    have = LAYER_OPS[op].capabilities if op in LAYER_OPS else frozenset()
    return sorted(needed - have)


def require(dag: Dag, analysis: str) -> None:
    """Raise :class:`UnsupportedModelError` naming every layer whose op lacks a capability ``analysis`` needs."""
    refusals = []
    for layer in dag.layers():
        for cap in missing(layer.op, analysis):
            how = "/".join(CAPABILITY_METHODS[cap])
            refusals.append(Refusal(layer.name, layer.op, f"{analysis} needs the {cap!r} capability, which layer op "
                                    f"{layer.op!r} lacks (it does not implement {how})"))
    if refusals:
        raise UnsupportedModelError(refusals)
