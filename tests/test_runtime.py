"""The one session factory (``backend/runtime.make_session``) and the pruning measurements built on it:
real onnxruntime sessions on a small real network, their outputs checked against numpy."""

from __future__ import annotations

import os

import numpy as np
import tiny_nets

from onnx_pathlift.backend.runtime import make_session
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.pruning.ranking import node_times
from onnx_pathlift.pruning.slim import latency


def _mlp():
    model, _ = tiny_nets.mlp(0)
    return model, prepare(model)


def test_threads_and_profile_options_reach_the_session(tmp_path):
    """One thread and the profiler on: the session computes what it computed before, and the trace
    file appears under the prefix given."""
    model, prepared = _mlp()
    feeds = {n: np.ones(s, np.float32) for n, s in prepared.inputs.items()}
    plain = make_session(model).run(None, feeds)[0]
    session = make_session(model, rewrites="none", threads=1, profile=str(tmp_path / "trace"))
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().inter_op_num_threads == 1
    np.testing.assert_array_equal(session.run(None, feeds)[0], plain)
    trace = session.end_profiling()
    assert os.path.basename(trace).startswith("trace") and os.path.getsize(trace) > 0


def test_node_times_and_latency_measure_every_node():
    """``node_times`` reports one median per node (by first output), ``latency`` one positive time."""
    model, prepared = _mlp()
    times = node_times(model, prepared, repeats=3)
    assert set(times) == {n.output[0] for n in model.graph.node}
    assert all(t >= 0 for t in times.values())  # whole microseconds: a tiny kernel may read 0
    seconds = latency(model, prepared, repeats=3)
    assert seconds is not None and 0 < seconds < 60
