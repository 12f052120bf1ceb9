"""Checks of the package against the independent oracles, shared by several test modules: path-magnitude
scores against brute-force drops, certified bounds against onnxruntime runs of the ONNX files on sampled
and searched inputs, and the slim model of channel pruning against the masked one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from builders import inits, zeroed
from onnx import TensorProto, helper
from oracle import brute_force_path_norm

from onnx_pathlift.analyses.check import _change, search_box
from onnx_pathlift.analyses.scores import path_magnitude
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.pruning.channels import channel_graph

# --------------------------------------------------------------------------------------------
# scores: the fraction of ‖Φ‖_1 a weight's paths carry is the brute-force drop when it is zeroed
# --------------------------------------------------------------------------------------------


def drop_fraction(model: onnx.ModelProto, name: str, idx: tuple[int, ...], total: float) -> float:
    """(‖Φ(θ)‖_1 − ‖Φ(θ with this weight zeroed)‖_1) / ‖Φ(θ)‖_1 by brute force: the score's definition
    (``total``: ‖Φ(θ)‖_1)."""
    return (total - brute_force_path_norm(zeroed(model, name, idx), 1)) / total


def scored_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weight initializers of Conv / Gemm / MatMul nodes (input 1, or the constant MatMul operand)."""
    arrays = inits(model)
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            out[node.input[1]] = arrays[node.input[1]]
        elif node.op_type in ("Gemm", "MatMul"):
            for i in node.input[:2]:
                if i in arrays:
                    out[i] = arrays[i]
    return out


def sample(f: np.ndarray, cap: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every index of ``f`` if it has at most ``cap`` entries, else the largest, the smallest and random others."""
    flat = np.arange(f.size)
    if f.size > cap:
        ends = {int(np.argmax(f)), int(np.argmin(f))}
        rest = rng.choice(np.setdiff1d(flat, list(ends)), cap - len(ends), replace=False)
        flat = np.sort(np.concatenate([list(ends), rest]))
    return [np.unravel_index(int(i), f.shape) for i in flat]


def assert_scores_are_brute_force_drops(model: onnx.ModelProto, cap: int = 4) -> None:
    """Each sampled weight's path-magnitude fraction equals the brute-force drop of ‖Φ‖_1 when it is
    zeroed, divided by ‖Φ‖_1 (to 1e-5 relative)."""
    scores = path_magnitude(model)
    full = brute_force_path_norm(model, 1)
    rng = np.random.default_rng(0)
    for k in sorted(scored_initializers(model)):
        f = scores.fraction[k]
        for idx in sample(f, cap, rng):
            want = drop_fraction(model, k, idx, full)
            assert abs(f[idx] - want) <= 1e-5 * abs(want) + 1e-9, (k, idx, f[idx], want)


# --------------------------------------------------------------------------------------------
# bounds: the ONNX files themselves, run by onnxruntime
# --------------------------------------------------------------------------------------------


class Runner:
    """onnxruntime session of an ONNX file exposing the given tensors as outputs (float32 run)."""

    def __init__(self, model: onnx.ModelProto, names: list[str]):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.output[:]
        for n in names:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.names = names

    def __call__(self, feeds) -> np.ndarray:
        return np.concatenate([np.asarray(v, np.float64).ravel() for v in self.sess.run(self.names, feeds)])


def sample_and_search(model_a, model_b, dag, bound: float, r: float, rng, samples: int = 20, steps: int = 40) -> float:
    """Largest ‖A(x) − B(x)‖_1 over samples and a search of the box ``[-r, r]``, running the ONNX files
    themselves; asserts the bound holds at every evaluation (float32 noise allowed)."""
    names = list(dag.outputs)
    run_a, run_b = Runner(model_a, names), Runner(model_b, names)
    change = _change(lambda x: [run_a(x)], lambda x: [run_b(x)])
    shapes = {n: dag.layer(n).shape for n in dag.inputs}
    seen = [change({n: rng.uniform(-r, r, s).astype(np.float32) for n, s in shapes.items()}) for _ in range(samples)]
    corner = {n: r * rng.choice([-1.0, 1.0], s) for n, s in shapes.items()}
    seen += search_box(lambda x: change({n: v.astype(np.float32) for n, v in x.items()}), corner, r, steps, rng)
    for diff, slack in seen:
        assert diff <= bound * (1 + 1e-6) + slack, (diff, bound)
    return max(d for d, _ in seen)


# --------------------------------------------------------------------------------------------
# channel pruning: the slim model computes the masked one
# --------------------------------------------------------------------------------------------


def analyse(model: onnx.ModelProto):
    """The prepared model, its DAG and its channel graph."""
    p = prepare(model)
    return p, import_prepared(p, None), channel_graph(model, p)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model`` (warnings off)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Every output of ``model`` on ``feeds``, as onnxruntime returns them."""
    return session(model).run(None, feeds)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Every float output of ``model`` on ``feeds`` (onnxruntime), as float64."""
    s = session(model)
    names = [o.name for o in s.get_outputs() if o.type == "tensor(float)"]
    return [np.asarray(v, np.float64) for v in s.run(names, feeds)]


def slim_error(masked: onnx.ModelProto, slim: onnx.ModelProto, p, trials: int = 3) -> float:
    """max |masked − slim| / max |masked| over random inputs, in independent onnxruntime sessions."""
    rng = np.random.default_rng(123)
    worst = 0.0
    for _ in range(trials):
        feeds = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in p.inputs.items()}
        for a, b in zip(run(masked, feeds), run(slim, feeds)):
            worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    return worst


def group_of(cg, tensor: str, channel: int) -> int:
    """The channel group of ``channel`` of ``tensor`` in channel graph ``cg``."""
    return int(cg.group_of[cg.layouts[tensor].base + channel])
