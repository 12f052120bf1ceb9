"""Independent brute-force oracle for path-norms of small ONNX models.

This module deliberately shares no code with ``onnx_pathlift`` and reads no operator semantics.
The neuron-level DAG is obtained by *probing* onnxruntime, one ONNX node at a time:

* every element of every non-constant tensor is a neuron, identified by
  ``(tensor_name, flat_index)``; nodes of constants only (``Constant``, ...) are folded by running
  them;
* for a node ``y = f(x_1, ..., x_m)`` (constants baked in as initializers) the bias of each output
  neuron is ``b = f(0)`` and, for each activation input ``x_k`` and unit vector ``e_i``, the column
  ``J[:, i] = (f(s e_i) - f(0)) / s`` (``s`` a power of two, other inputs at zero) gives the
  incoming edge weights ``w(u -> v) = J[v, i]`` with ``u = (x_k, i)``; zero entries are not edges;
* affinity is checked with ``f(-s e_i)`` and ``f(e_i)`` (the column must not depend on the
  amplitude, and must flip sign with it): a node that is not affine must be a ReLU or a MaxPool,
  whose probes give identity edges (ReLU) and window memberships (MaxPool, a k-max neuron, with its
  pads and ``ceil_mode`` as onnxruntime implements them), all of weight 1 and with no bias.

Nodes are run in float64 when onnxruntime's CPU provider has a float64 kernel for them (Gemm,
MatMul, Add, Mul, BatchNormalization, MaxPool, Relu, Reshape, ...) so their probes are exact up to
1e-16; otherwise (Conv, AveragePool, GlobalAveragePool) in float32.

The path-norm ``||Phi(theta)||_q^q = sum_p |Phi_p(theta)|^q`` is then computed by explicitly
enumerating every path (from an input neuron, or from a neuron with a non-zero bias, to an output
neuron; an output neuron's own bias is a path of length 0), multiplying ``|b|^q`` and ``|w|^q``
along it, and summing all path terms with ``math.fsum``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

Neuron = tuple[str, int]
"""A neuron: (name of the ONNX tensor, index into the flattened tensor)."""

MAX_PATHS = 5_000_000
"""Refuse to enumerate more paths than this."""

PROBE_AMPLITUDE = 1024.0
"""Amplitude ``s`` of the unit-vector probes; a power of two, so that dividing by it is exact."""

BATCH_PROBES = True
"""Run the unit-vector probes of a node as one batch when the op allows it (else one run each)."""

MAX_LIKE_OPS = frozenset({"Relu", "MaxPool", "GlobalMaxPool", "Max"})
"""The only non-affine ops accepted: ReLU neurons and (k-)max neurons (max-pooling, an elementwise Max)."""

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)
_STATS = {"batched": 0, "looped": 0, "float64": 0, "float32": 0}
"""Counters of how nodes were probed (for tests and curiosity)."""


class OracleError(RuntimeError):
    """The oracle cannot (or refuses to) analyse this model."""


# --------------------------------------------------------------------------------------------
# One-node onnxruntime evaluation
# --------------------------------------------------------------------------------------------


def _session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class _NodeRunner:
    """Evaluates one ONNX node alone, with the model's constants baked in as initializers.

    ``act_shapes`` maps each (unique) activation input to its static shape. Sessions are built
    lazily: a fixed-shape one, and a batched one whose activation inputs have a symbolic first
    dimension ``N`` (only used when every activation input has first dimension 1).
    """

    def __init__(
        self,
        node: onnx.NodeProto,
        act_shapes: Mapping[str, tuple[int, ...]],
        consts: Mapping[str, np.ndarray],
        out_types: Mapping[str, int],
        opsets: Sequence[onnx.OperatorSetIdProto],
        ir_version: int,
        use_float64: bool,
    ) -> None:
        self.node = node
        self.act_shapes = dict(act_shapes)
        self.float_dtype = np.float64 if use_float64 else np.float32
        self.elem = TensorProto.DOUBLE if use_float64 else TensorProto.FLOAT
        self.outputs = [o for o in node.output if o and out_types.get(o) in _FLOAT_TYPES]
        inits = []
        for name in dict.fromkeys(i for i in node.input if i and i not in act_shapes):
            arr = consts[name]
            if use_float64 and arr.dtype == np.float32:
                arr = arr.astype(np.float64)
            inits.append(numpy_helper.from_array(arr, name))
        self._inits = inits
        self._opsets = list(opsets)
        self._ir_version = ir_version
        self._sessions: dict[bool, ort.InferenceSession] = {}

    def _model(self, batched: bool) -> onnx.ModelProto:
        inputs = []
        for name, shape in self.act_shapes.items():
            dims: list[int | str] = list(shape)
            if batched:
                dims[0] = "N"
            inputs.append(helper.make_tensor_value_info(name, self.elem, dims))
        outputs = [helper.make_tensor_value_info(o, self.elem, None) for o in self.outputs]
        graph = helper.make_graph([self.node], "probe", inputs, outputs, initializer=self._inits)
        model = helper.make_model(graph, opset_imports=self._opsets)
        model.ir_version = self._ir_version
        return model

    def session(self, batched: bool) -> ort.InferenceSession:
        if batched not in self._sessions:
            self._sessions[batched] = ort.InferenceSession(
                self._model(batched).SerializeToString(),
                sess_options=_session_options(),
                providers=["CPUExecutionProvider"],
            )
        return self._sessions[batched]

    def run(self, feeds: Mapping[str, np.ndarray], batched: bool = False) -> list[np.ndarray]:
        cast = {k: np.ascontiguousarray(v, dtype=self.float_dtype) for k, v in feeds.items()}
        return [np.asarray(r) for r in self.session(batched).run(self.outputs, cast)]


def _make_runner(
    node: onnx.NodeProto,
    act_shapes: Mapping[str, tuple[int, ...]],
    consts: Mapping[str, np.ndarray],
    out_types: Mapping[str, int],
    model: onnx.ModelProto,
) -> tuple[_NodeRunner, list[np.ndarray]]:
    """Build a runner, in float64 if onnxruntime can, else float32; also return f(0)."""
    zeros = {n: np.zeros(s) for n, s in act_shapes.items()}
    last_error: Exception | None = None
    for use_float64 in (True, False):
        try:
            runner = _NodeRunner(
                node, act_shapes, consts, out_types, model.opset_import, model.ir_version,
                use_float64,
            )
            f0 = runner.run(zeros)
            _STATS["float64" if use_float64 else "float32"] += 1
            return runner, f0
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several exception types
            last_error = exc
    raise OracleError(f"cannot evaluate node {node.name!r} ({node.op_type}): {last_error}")


def _probe_outputs(
    runner: _NodeRunner,
    act_shapes: Mapping[str, tuple[int, ...]],
    target: str,
    signed_basis: np.ndarray,
    f0: Sequence[np.ndarray],
) -> list[np.ndarray]:
    """Evaluate the node on the rows of ``signed_basis`` fed to ``target`` (others at zero).

    Returns, per node output, an array ``(n_rows, output_size)``. Runs the probes as one batch
    when the op accepts a batch dimension and the batched results match unbatched spot checks;
    otherwise loops over the rows.
    """
    n_rows = signed_basis.shape[0]
    shapes = dict(act_shapes)

    def single(row: np.ndarray) -> list[np.ndarray]:
        feeds = {n: np.zeros(s) for n, s in shapes.items()}
        feeds[target] = row.reshape(shapes[target])
        return [r.reshape(-1).astype(np.float64) for r in runner.run(feeds)]

    batchable = all(s and s[0] == 1 for s in shapes.values()) and all(
        r.ndim >= 1 and r.shape[0] == 1 for r in f0
    )
    if BATCH_PROBES and batchable and n_rows > 1:
        try:
            feeds = {n: np.zeros((n_rows, *s[1:])) for n, s in shapes.items()}
            feeds[target] = signed_basis.reshape((n_rows, *shapes[target][1:]))
            outs = runner.run(feeds, batched=True)
            if all(o.shape == (n_rows, *z.shape[1:]) for o, z in zip(outs, f0)):
                flat = [o.reshape(n_rows, -1).astype(np.float64) for o in outs]
                checks = sorted({0, n_rows // 3, n_rows // 2 + 1, n_rows - 1})
                ok = True
                for k in checks:
                    ref = single(signed_basis[k])
                    for fl, r in zip(flat, ref):
                        if not np.allclose(fl[k], r, rtol=1e-6, atol=1e-30):
                            ok = False
                if ok:
                    _STATS["batched"] += 1
                    return flat
        except Exception:  # noqa: BLE001 - fall back to one run per probe
            pass
    _STATS["looped"] += 1
    rows = [single(signed_basis[k]) for k in range(n_rows)]
    return [np.stack([r[j] for r in rows]) for j in range(len(runner.outputs))]


# --------------------------------------------------------------------------------------------
# The neuron-level DAG
# --------------------------------------------------------------------------------------------


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = vi.type.tensor_type.shape.dim
    if not vi.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
        raise OracleError(f"graph input {vi.name!r} has no static shape")
    return tuple(int(d.dim_value) for d in dims)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {init.name: init.data_type for init in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def neuron_dag(model: onnx.ModelProto) -> tuple[nx.DiGraph, list[Neuron]]:
    """The neuron-level DAG of ``model``, obtained by probing each node in onnxruntime.

    Nodes are neurons ``(tensor_name, flat_index)`` with attributes ``b`` (float64 bias, 0 if
    none), ``kind`` (``"input"`` for graph-input neurons, ``"output"`` for graph-output neurons,
    else ``"hidden"``), ``op`` (op type of the producing node, ``""`` for inputs) and ``tensor``.
    Edges ``u -> v`` carry ``w`` (float64 weight, never 0). Also returns the output neurons, in the
    order of the graph outputs and their flattened elements.
    """
    graph = model.graph
    out_types = _elem_types(model)
    consts: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    shapes: dict[str, tuple[int, ...]] = {}
    G = nx.DiGraph()
    _add_input_neurons(G, graph, consts, shapes)
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise OracleError(f"node {node.name!r}: domain {node.domain!r} not supported")
        if node.op_type in ("If", "Loop", "Scan"):
            raise OracleError(f"node {node.name!r}: control flow not supported")
        act_names = list(dict.fromkeys(i for i in node.input if i and i not in consts))
        missing = [a for a in act_names if a not in shapes]
        if missing:
            raise OracleError(f"node {node.name!r}: inputs {missing} unknown (graph not sorted?)")
        if not act_names:  # constant folding: Constant nodes and nodes of constants only
            names, vals = _eval_constant_node(node, consts, out_types, model)
            for name, v in zip(names, vals):
                consts[name] = v
            continue
        _probe_node(G, node, {a: shapes[a] for a in act_names}, consts, out_types, model, shapes)
    return G, _mark_outputs(G, graph, shapes)


def _add_input_neurons(G: nx.DiGraph, graph: onnx.GraphProto, consts: Mapping[str, np.ndarray],
                       shapes: dict[str, tuple[int, ...]]) -> None:
    """One ``"input"`` neuron per element of each float32 graph input that is not an initializer."""
    for vi in graph.input:
        if vi.name in consts:
            continue
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise OracleError(f"graph input {vi.name!r} is not float32")
        shape = _static_shape(vi)
        shapes[vi.name] = shape
        for i in range(int(np.prod(shape, dtype=np.int64))):
            G.add_node((vi.name, i), b=0.0, kind="input", op="", tensor=vi.name)


def _probe_node(G: nx.DiGraph, node: onnx.NodeProto, act_shapes: dict[str, tuple[int, ...]],
                consts: Mapping[str, np.ndarray], out_types: Mapping[str, int], model: onnx.ModelProto,
                shapes: dict[str, tuple[int, ...]]) -> None:
    """The output neurons of ``node`` (bias ``f(0)``) and their incoming edges, one activation input
    at a time; records the output shapes in ``shapes``."""
    runner, f0 = _make_runner(node, act_shapes, consts, out_types, model)
    out_flat0 = [z.reshape(-1).astype(np.float64) for z in f0]
    for name, z in zip(runner.outputs, f0):
        shapes[name] = tuple(z.shape)
    for name, b in zip(runner.outputs, out_flat0):
        if not np.all(np.isfinite(b)):
            raise OracleError(f"node {node.name!r}: f(0) not finite")
        for i, bi in enumerate(b):
            G.add_node((name, i), b=float(bi), kind="hidden", op=node.op_type, tensor=name)
    for a in act_shapes:
        _add_edges(G, node, runner, act_shapes, a, f0, out_flat0)


def _add_edges(G: nx.DiGraph, node: onnx.NodeProto, runner: _NodeRunner, act_shapes: dict[str, tuple[int, ...]],
               a: str, f0: list[np.ndarray], out_flat0: list[np.ndarray]) -> None:
    """The edges from input ``a``'s neurons: ``J[:, i] = (f(s e_i) − f(0)) / s``, checked homogeneous
    (the same from amplitude 1) and affine (``f(−s e_i) − f(0) = −(f(s e_i) − f(0))``), or else a
    ReLU / max-pool neuron (unit edges, no bias)."""
    s = PROBE_AMPLITUDE
    n_in = int(np.prod(act_shapes[a], dtype=np.int64))
    eye = np.eye(n_in)
    basis = np.concatenate([eye * s, eye * -s, eye])
    probes = _probe_outputs(runner, act_shapes, a, basis, f0)
    for name, b, p in zip(runner.outputs, out_flat0, probes):
        plus = (p[:n_in] - b) / s  # (n_in, n_out): row i is column i of J
        minus = (p[n_in : 2 * n_in] - b) / s
        unit = p[2 * n_in :] - b
        if not all(np.all(np.isfinite(z)) for z in (plus, minus, unit)):
            raise OracleError(f"node {node.name!r}: probe not finite")
        # positive homogeneity: the same column from amplitudes s and 1
        tol = 1e-6 * (np.abs(plus) + np.abs(unit) + np.abs(b)) + 1e-300
        homogeneous = np.all(np.abs(plus - unit) <= tol)
        # affinity (given homogeneity): f(-s e_i) - f(0) = -(f(s e_i) - f(0))
        tol = 1e-6 * (np.abs(plus) + np.abs(minus) + 2.0 * np.abs(b) / s) + 1e-300
        affine = homogeneous and np.all(np.abs(plus + minus) <= tol)
        if not affine:
            if not homogeneous or node.op_type not in MAX_LIKE_OPS:
                raise OracleError(
                    f"node {node.name!r}: {node.op_type} is neither affine nor a "
                    "ReLU/max-pooling neuron"
                )
            if np.any(b != 0) or np.any((plus != 0) & (plus != 1)):
                raise OracleError(f"node {node.name!r}: not a max-type neuron")
        src, dst = np.nonzero(plus)
        G.add_edges_from(
            ((a, int(i)), (name, int(v)), {"w": float(plus[i, v])})
            for i, v in zip(src, dst)
        )


def _mark_outputs(G: nx.DiGraph, graph: onnx.GraphProto, shapes: Mapping[str, tuple[int, ...]]) -> list[Neuron]:
    """The output neurons in order (graph outputs, flattened elements), marked ``"output"`` unless inputs."""
    outputs: list[Neuron] = []
    for vi in graph.output:
        if vi.name not in shapes:
            raise OracleError(f"graph output {vi.name!r} is not computed from the inputs")
        for i in range(int(np.prod(shapes[vi.name], dtype=np.int64))):
            outputs.append((vi.name, i))
            if G.nodes[(vi.name, i)]["kind"] != "input":
                G.nodes[(vi.name, i)]["kind"] = "output"
    return outputs


def _eval_constant_node(
    node: onnx.NodeProto,
    consts: Mapping[str, np.ndarray],
    out_types: Mapping[str, int],
    model: onnx.ModelProto,
) -> tuple[list[str], list[np.ndarray]]:
    """Evaluate a node whose inputs are all constants (e.g. ``Constant``), in its own dtype."""
    names = [o for o in node.output if o]
    inits = [
        numpy_helper.from_array(consts[i], i) for i in dict.fromkeys(x for x in node.input if x)
    ]
    outs = [
        helper.make_tensor_value_info(o, out_types.get(o, TensorProto.FLOAT), None) for o in names
    ]
    g = helper.make_graph([node], "const", [], outs, initializer=inits)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    sess = ort.InferenceSession(
        m.SerializeToString(), sess_options=_session_options(), providers=["CPUExecutionProvider"]
    )
    return names, [np.asarray(v) for v in sess.run(names, {})]


# --------------------------------------------------------------------------------------------
# Path enumeration
# --------------------------------------------------------------------------------------------


def path_starts(G: nx.DiGraph, which: Literal["all", "inputs"] = "all") -> list[Neuron]:
    """Neurons that start paths: input neurons, and (``which="all"``) neurons with a bias != 0."""
    return [
        v
        for v, d in G.nodes(data=True)
        if d["kind"] == "input" or (which == "all" and d["b"] != 0.0)
    ]


def count_paths(G: nx.DiGraph, outputs: Iterable[Neuron], starts: Iterable[Neuron]) -> int:
    """Exact number of paths from ``starts`` to ``outputs`` (dynamic programming, Python ints)."""
    out_set = set(outputs)
    n_from: dict[Neuron, int] = {}
    for v in reversed(list(nx.topological_sort(G))):
        n_from[v] = int(v in out_set) + sum(n_from[u] for u in G.successors(v))
    return sum(n_from[s] for s in starts)


def path_terms(
    G: nx.DiGraph,
    outputs: Iterable[Neuron],
    q: float,
    starts: Iterable[Neuron],
    max_paths: int = MAX_PATHS,
) -> list[float]:
    """``|Phi_p|^q`` for every path ``p``, by explicit depth-first enumeration.

    ``|Phi_p|^q = |b_start|^q * prod_{edges e in p} |w_e|^q`` (no bias factor for input neurons).
    """
    outputs = list(outputs)
    starts = list(starts)
    n = count_paths(G, outputs, starts)
    if n > max_paths:
        raise OracleError(f"{n} paths: more than the brute-force limit {max_paths}")
    out_set = set(outputs)
    # Keep only edges into neurons from which an output can be reached.
    alive: set[Neuron] = set(out_set)
    for o in out_set:
        alive |= nx.ancestors(G, o)
    succ: dict[Neuron, list[tuple[Neuron, float]]] = {
        v: [(u, abs(d["w"]) ** q) for u, d in G.succ[v].items() if u in alive] for v in alive
    }
    terms: list[float] = []
    for s in starts:
        if s not in alive:
            continue
        d = G.nodes[s]
        stack = [(s, 1.0 if d["kind"] == "input" else abs(d["b"]) ** q)]
        while stack:
            v, p = stack.pop()
            if v in out_set:
                terms.append(p)
            stack.extend((u, p * a) for u, a in succ[v])
    return terms


def path_norm_from_dag(
    G: nx.DiGraph, outputs: Iterable[Neuron], q: float, inputs_only: bool = False
) -> float:
    """``sum_p |Phi_p|^q`` over the paths of the DAG (only those from input neurons if asked)."""
    starts = path_starts(G, "inputs" if inputs_only else "all")
    return math.fsum(path_terms(G, outputs, q, starts))


def dp_path_norm_from_dag(
    G: nx.DiGraph, outputs: Iterable[Neuron], q: float, inputs_only: bool = False
) -> float:
    """Same sum by dynamic programming (sum-product over the DAG): a cross-check, not the oracle.

    ``m(v) = [v is input] + |b_v|^q + sum_{u -> v} |w_uv|^q m(u)`` (bias term skipped if
    ``inputs_only``); the result is ``sum_{o in outputs} m(o)``.
    """
    mass: dict[Neuron, float] = {}
    for v in nx.topological_sort(G):
        d = G.nodes[v]
        start = 1.0 if d["kind"] == "input" else (0.0 if inputs_only else abs(d["b"]) ** q)
        mass[v] = math.fsum(
            [start, *(abs(e["w"]) ** q * mass[u] for u, e in G.pred[v].items())]
        )
    return math.fsum(mass[o] for o in outputs)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def brute_force_path_norm(model: onnx.ModelProto, q: float) -> float:
    """``||Phi(theta)||_q^q = sum over all paths p of |Phi_p(theta)|^q`` (float64)."""
    G, outputs = neuron_dag(model)
    return path_norm_from_dag(G, outputs, q)


def brute_force_path_norm_root(model: onnx.ModelProto, q: float) -> float:
    """``||Phi(theta)||_q = (sum_p |Phi_p(theta)|^q)^(1/q)``."""
    return brute_force_path_norm(model, q) ** (1.0 / q)


def brute_force_path_norm_inputs_only(model: onnx.ModelProto, q: float) -> float:
    """``sum_p |Phi_p|^q`` restricted to paths starting at input neurons (no bias-started paths).

    For q = 1 this bounds the input-space Lipschitz constant:
    ``||R(x) - R(x')||_1 <= (this) * ||x - x'||_inf``.
    """
    G, outputs = neuron_dag(model)
    return path_norm_from_dag(G, outputs, q, inputs_only=True)


# --------------------------------------------------------------------------------------------
# Log-domain oracles: any q (and q = inf), no float64 overflow or underflow
# --------------------------------------------------------------------------------------------


def log_path_terms(G: nx.DiGraph, outputs: Iterable[Neuron], q: float, max_paths: int = MAX_PATHS) -> list[float]:
    """``log |Phi_p|^q`` (natural log) for every path, by explicit enumeration (``q = inf``: ``log |Phi_p|``)."""
    outputs, starts = list(outputs), path_starts(G, "all")
    if count_paths(G, outputs, starts) > max_paths:
        raise OracleError("more paths than the brute-force limit")
    out_set = set(outputs)
    alive: set[Neuron] = set(out_set)
    for o in out_set:
        alive |= nx.ancestors(G, o)
    factor = 1.0 if math.isinf(q) else q
    succ = {v: [(u, factor * math.log(abs(d["w"]))) for u, d in G.succ[v].items() if u in alive and d["w"] != 0.0] for v in alive}
    terms: list[float] = []
    for s in starts:
        if s not in alive:
            continue
        d = G.nodes[s]
        stack = [(s, 0.0 if d["kind"] == "input" else factor * math.log(abs(d["b"])))]
        while stack:
            v, p = stack.pop()
            if v in out_set:
                terms.append(p)
            stack.extend((u, p + a) for u, a in succ[v])
    return terms


def log10_path_norm(model: onnx.ModelProto, q: float) -> float:
    """``log10 ||Phi(theta)||_q`` by path enumeration in the log domain; ``q = inf``: the largest
    path product ``max_p |Phi_p|``."""
    G, outputs = neuron_dag(model)
    return _log10_norm(log_path_terms(G, outputs, q), q)


def log10_output_path_norms(model: onnx.ModelProto, q: float) -> dict[Neuron, float]:
    """``log10 ||Phi_k||_q`` for every output neuron ``k``: the same enumeration restricted to the paths
    that end at ``k`` (``q = inf``: the largest product of a path ending at ``k``; ``-inf``: no path)."""
    G, outputs = neuron_dag(model)
    return {o: _log10_norm(log_path_terms(G, [o], q), q) for o in outputs}


def _log10_norm(terms: list[float], q: float) -> float:
    """``log10 (sum_p exp(t_p))^(1/q)`` of natural-log path terms (``q = inf``: the largest term)."""
    if not terms:
        return -math.inf
    top = max(terms)
    if math.isinf(q):
        return top / math.log(10)
    return (top + math.log(math.fsum(math.exp(t - top) for t in terms))) / q / math.log(10)


def log10_mlp_path_norm(weights: list[np.ndarray], biases: list[np.ndarray], q: float) -> float:
    """The lifted forward pass of a dense net (``x @ W + b``, ReLU) in float64's log domain:
    ``log10 ||Phi||_q`` (``q = inf``: max-plus, the largest path product)."""
    v = np.zeros(weights[0].shape[0])  # log 1 for every input neuron
    inf = math.isinf(q)
    for w, b in zip(weights, biases):
        with np.errstate(divide="ignore"):
            lw, lb = (np.log(np.abs(w)), np.log(np.abs(b))) if inf else (q * np.log(np.abs(w)), q * np.log(np.abs(b)))
        if inf:
            v = np.maximum((v[:, None] + lw).max(axis=0), lb)
        else:
            v = np.logaddexp(np.logaddexp.reduce(v[:, None] + lw, axis=0), lb)
    total = float(v.max()) if inf else float(np.logaddexp.reduce(v))
    return total / (1.0 if inf else q) / math.log(10)


# ---------------------------------------------------------------------------------------------
# Signed path-metric of two models on their neuron DAGs
# ---------------------------------------------------------------------------------------------


def union_dags(model_a, model_b):
    """Neuron DAGs of both models (same tensor names), the union of their edges, the outputs."""
    Ga, outs_a = neuron_dag(model_a)
    Gb, outs_b = neuron_dag(model_b)
    assert outs_a == outs_b
    assert set(Ga.nodes) == set(Gb.nodes)
    assert all(Ga.nodes[v]["kind"] == Gb.nodes[v]["kind"] for v in Ga)
    edges = {}
    for u, v in set(Ga.edges) | set(Gb.edges):
        wa = Ga.edges[u, v]["w"] if Ga.has_edge(u, v) else 0.0
        wb = Gb.edges[u, v]["w"] if Gb.has_edge(u, v) else 0.0
        edges[u, v] = (wa, wb)
    return Ga, Gb, outs_a, edges


def neuron_signs_agree(Ga, Gb, edges) -> bool:
    """The theorem's precondition at neuron level: every weight and bias keeps its sign (or is 0)."""
    return all(wa * wb >= 0 for wa, wb in edges.values()) and all(
        Ga.nodes[v]["b"] * Gb.nodes[v]["b"] >= 0 for v in Ga)


def signed_path_metric(Ga, Gb, outputs, edges) -> tuple[float, int]:
    """``Σ_p |Φ_p(θ) − Φ_p(θ')|`` by explicit enumeration (same path definition as the oracle:
    paths end at output neurons and start at input neurons, or at any neuron with a bias in either
    model, the bias multiplying in), float64, summed with fsum. Also returns the path count."""
    union = nx.DiGraph()
    union.add_nodes_from(Ga.nodes)
    union.add_edges_from(edges)
    out_set = set(outputs)
    alive = set(out_set)
    for o in out_set:
        alive |= nx.ancestors(union, o)
    succ = {v: [] for v in alive}
    for (u, v), (wa, wb) in edges.items():
        if u in alive and v in alive:
            succ[u].append((v, wa, wb))
    terms = []
    for s in alive:
        da, db = Ga.nodes[s], Gb.nodes[s]
        if da["kind"] == "input":
            stack = [(s, 1.0, 1.0)]
        elif da["b"] != 0.0 or db["b"] != 0.0:
            stack = [(s, da["b"], db["b"])]
        else:
            continue
        while stack:
            v, pa, pb = stack.pop()
            if v in out_set:
                terms.append(abs(pa - pb))
            stack.extend((u, pa * wa, pb * wb) for u, wa, wb in succ[v])
    return math.fsum(terms), len(terms)


def one_hidden_layer_path_norm(u: np.ndarray, b: np.ndarray, v: np.ndarray, c: np.ndarray, q: float) -> float:
    """The closed form of ``y = v relu(u x + b) + c`` (``u``: hidden x input, ``v``: output x hidden):
    ``(Σ_k [Σ_j |v_kj|^q (||u_j||_q^q + |b_j|^q) + |c_k|^q])^(1/q)``, in float64."""
    u, b, v, c = (np.abs(np.asarray(a, np.float64)) for a in (u, b, v, c))
    total = 0.0
    for k in range(v.shape[0]):
        total += sum(v[k, j] ** q * ((u[j] ** q).sum() + b[j] ** q) for j in range(u.shape[0])) + c[k] ** q
    return total ** (1.0 / q)
