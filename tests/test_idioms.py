"""Exporter idioms (issue 14): nodes out of topological order (keras2onnx writes them reversed), against
the brute-force oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from oracle import brute_force_path_norm
from tiny_nets import conv_bn_pool, residual_concat

import onnx_pathlift as pl


def _reversed(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(model.graph.node)[::-1]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


@pytest.mark.parametrize("build", [conv_bn_pool, residual_concat])
def test_nodes_in_reverse_order_give_the_same_path_norm(build) -> None:
    model, _ = build(0)
    backwards = _reversed(model)
    assert [n.output[0] for n in backwards.graph.node] != [n.output[0] for n in model.graph.node]
    for q in (1.0, 2.0):
        want = brute_force_path_norm(model, q) ** (1 / q)
        assert pl.path_norm(model, q=q).value == pytest.approx(want, rel=1e-6)
        assert pl.path_norm(backwards, q=q).value == pytest.approx(want, rel=1e-6)
    assert np.isfinite(pl.path_norm(backwards, q=4).log10)
