"""What the speed work can count, not time (issue 29): the modules ``norm`` imports, the model file's
bytes read once, the lifted sessions built per call. No wall-clock assertion here."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model
from conftest import LIGHT, MODELS, ROOT
from onnx import helper

from onnx_pathlift import api
from onnx_pathlift.backend import norm as norm_module

MODEL = MODELS / "digits_cnn_torch_bn.onnx"

#: what ``norm`` never needs: the other commands' packages and the heavy optional dependencies
NOT_FOR_NORM = ("torch", "torch_pruning", "dask", "distributed", "sqlite3", "_sqlite3", "sklearn", "scipy", "onnxsim",
                "onnxscript", "matplotlib", "PIL", "difflib", "shlex", "onnx_pathlift.audit", "onnx_pathlift.analyses",
                "onnx_pathlift.pruning", "onnx_pathlift.rewrite", "onnx_pathlift.backend.verify")
#: the analyses' package module, which the command line reads to build its parser: the table of the commands
#: they declare (it imports nothing but ``onnx_pathlift.errors``); its submodules are the analyses
COMMAND_TABLE = ("onnx_pathlift.analyses",)
#: modules ``norm`` may import beyond those numpy, onnx, onnxruntime and networkx import themselves
#: (60 at this commit: the package's own 58 modules, gc and unicodedata; shlex is imported where a command prints a
#: command line)
EXTRA_BOUND = 60

MODULES = "import json, sys\n{setup}\nprint(json.dumps(sorted(sys.modules)))"


def _modules(setup: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after ``setup``."""
    out = subprocess.run([sys.executable, "-c", MODULES.format(setup=setup)], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_norm_imports_only_what_it_needs() -> None:
    run = (f"from onnx_pathlift.cli.app import main\nimport contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n"
           f"    assert main(['norm', {str(MODEL)!r}, '-q', '1', '-q', '2']) == 0")
    after = _modules(run)
    base = _modules("import numpy, onnx, onnxruntime, networkx")
    unwanted = sorted(m for m in after - set(COMMAND_TABLE) if any(m == p or m.startswith(p + ".") for p in NOT_FOR_NORM))
    assert not unwanted, unwanted
    extra = after - base
    assert "onnx_pathlift.backend.norm" in extra  # the command did run
    assert len(extra) <= EXTRA_BOUND, sorted(extra)


COLLECTIONS = """import contextlib, gc, io, json
from onnx_pathlift.cli.app import main
seen = []
gc.callbacks.append(lambda phase, info: phase == "start" and seen.append(info["generation"]))
before = gc.get_threshold()
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["norm", {model!r}, "-q", "1", "-q", "2"]) == 0
print(json.dumps([seen, gc.get_threshold() == before]))"""


def test_norm_collects_garbage_a_few_times() -> None:
    """The cyclic collector during ``norm`` in a fresh interpreter (imports included): a few young-generation
    passes, no full one (Python's default thresholds make about 120, one of them full: 0.1 s of the
    process); the caller's thresholds are restored after."""
    out = subprocess.run([sys.executable, "-c", COLLECTIONS.format(model=str(MODEL))], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    seen, restored = json.loads(out.strip().splitlines()[-1])
    assert restored
    assert len(seen) <= 8 and 2 not in seen, seen


HELP = "from onnx_pathlift.cli.app import main\nimport contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n" \
       "    try:\n        main({argv!r})\n    except SystemExit:\n        pass"


def test_help_imports_no_analysis() -> None:
    """``--help`` builds the whole parser from the command table alone: no analysis, no numpy, no onnx; a
    declared command's own ``--help`` imports its module and no other analysis."""
    heavy = ("numpy", "onnx", "onnxruntime", "networkx", "onnx_pathlift.analyses", "onnx_pathlift.ops", "onnx_pathlift.api")
    seen = _modules(HELP.format(argv=["--help"]))
    assert "onnx_pathlift.analyses" in seen and "onnx_pathlift.cli.app" in seen
    assert not sorted(m for m in seen - set(COMMAND_TABLE) if any(m == p or m.startswith(p + ".") for p in heavy))
    seen = _modules(HELP.format(argv=["scores", "--help"]))
    assert "onnx_pathlift.analyses.scores" in seen
    assert not {"onnx_pathlift.analyses.lipschitz", "onnx_pathlift.analyses.rescale", "onnx_pathlift.analyses.metric"} & seen


W1 = np.random.default_rng(3).standard_normal((96, 256)).astype(np.float32)
W2 = np.random.default_rng(4).standard_normal((10, 96)).astype(np.float32)


def _mlp(path: Path) -> int:
    """``y = W2 relu(W1 x)`` saved at ``path``; returns the file's size in bytes."""
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"], transB=1)]
    onnx.save(make_model(nodes, [("x", [1, 256])], [("y", [1, 10])], {"W1": W1, "W2": W2}), path)
    return path.stat().st_size


def _closed_form_log10(q: float) -> float:
    """log10 ‖Φ‖_q = log10 (Σ (|W2|^q |W1|^q))^(1/q), in float64."""
    a, b = (np.abs(w.astype(np.float64)) ** q for w in (W1, W2))
    return float(np.log10((b @ a).sum()) / q)


def _rchar() -> int:
    """Bytes this process has read through read(2) and the like, from ``/proc/self/io``."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar line")


@pytest.mark.parametrize("one_session_bytes,sessions", [(1 << 24, 1), (0, 2)])
def test_norms_read_the_file_once_and_count_their_sessions(tmp_path, monkeypatch, one_session_bytes: int,
                                                           sessions: int) -> None:
    """q = 1 and 2 of a model under ``ONE_SESSION_BYTES`` of lifted weights: one lifted bundle, one
    session; above it one per q (one set of lifted weights in memory at once). Either way the file is
    read once: its bytes, plus at most a page (``/proc/self/io`` counts every read of the process)."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs Linux's /proc/self/io")
    path = tmp_path / "mlp.onnx"
    size = _mlp(path)
    api.compute_norms(str(path), [1.0, 2.0])  # the lazily imported modules are read before counting
    built, opened = [], []
    real_bundle, real_session = norm_module.lifted_bundle, norm_module.make_session
    monkeypatch.setattr(norm_module, "lifted_bundle", lambda jobs, **kw: built.append(len(jobs)) or real_bundle(jobs, **kw))
    monkeypatch.setattr(norm_module, "make_session", lambda *a, **kw: opened.append(1) or real_session(*a, **kw))
    monkeypatch.setattr(api, "ONE_SESSION_BYTES", one_session_bytes)
    before = _rchar()
    report = api.compute_norms(str(path), [1.0, 2.0])
    read = _rchar() - before
    assert size <= read <= size + 4096
    assert len(opened) == sessions and built == ([2] if sessions == 1 else [1, 1])
    for n in report.norms:
        assert n.certified and n.log10 == pytest.approx(_closed_form_log10(n.q), abs=1e-6)


def _attribute_tensors(n: int) -> onnx.ModelProto:
    """``n`` weights stored as the onnx wheel's light models store them: ``ConstantOfShape`` nodes, each
    holding its fill value in a tensor attribute (no nested graph), summed into the input."""
    nodes = [helper.make_node("ConstantOfShape", ["shp"], [f"w{i}"], name=f"cos{i}",
                              value=helper.make_tensor(f"v{i}", onnx.TensorProto.FLOAT, [1], [0.5 + i])) for i in range(n)]
    nodes.append(helper.make_node("Sum", ["x", *(f"w{i}" for i in range(n))], ["y"]))
    return make_model(nodes, [("x", [1, 4])], [("y", None)], {"shp": np.array([1, 4], np.int64)})


def test_folds_of_known_size_skip_shape_inference(monkeypatch) -> None:
    """ConstantOfShape, the reshape-likes, Transpose and Cast declare their folded sizes (``FOLD_SIZES``): folding them
    asks ONNX shape inference nothing (it asked once per node), and the limit on a folded constant
    still holds exactly at the declared size: refused one element below it, accepted at it."""
    from onnx_pathlift.errors import InvalidModelError
    from onnx_pathlift.fileio.read import Limits
    from onnx_pathlift.frontend import fold as fold_module
    from onnx_pathlift.frontend.importer import import_model

    model = make_model([helper.make_node("ConstantOfShape", ["shp"], ["w"], name="cos",
                                         value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.5])),
                        helper.make_node("Transpose", ["w"], ["wt"], name="tr", perm=[1, 0]),
                        helper.make_node("Cast", ["wt"], ["wc"], name="cast", to=onnx.TensorProto.FLOAT),
                        helper.make_node("Unsqueeze", ["wc", "ax"], ["u"], name="unsq"),
                        helper.make_node("Reshape", ["u", "flat"], ["wf"], name="resh"),
                        helper.make_node("MatMul", ["x", "wf"], ["y"])],
                       [("x", [1, 12])], [("y", None)],
                       {"shp": np.array([12, 5], np.int64), "ax": np.array([0], np.int64),
                        "flat": np.array([12, 5], np.int64)})
    calls = []
    real = fold_module.onnx.shape_inference.infer_shapes
    monkeypatch.setattr(fold_module.onnx.shape_inference, "infer_shapes", lambda m, *a, **k: calls.append(
        m.graph.name) or real(m, *a, **k))
    dag = import_model(model)
    assert "fold" not in calls and calls  # the whole graph's inference ran; no single node's did
    assert dag.n_params == 60
    assert api.compute_norms(model, [1.0]).norms[0].log10 == pytest.approx(np.log10(12 * 5 * 0.5), abs=1e-9)
    for limit, ok in ((59, False), (60, True)):
        if ok:
            import_model(model, limits=Limits(max_tensor_elements=limit))
        else:
            with pytest.raises(InvalidModelError, match=r"node 'cos' \(ConstantOfShape\) would allocate 60 elements"):
                import_model(model, limits=Limits(max_tensor_elements=limit))


def test_size_checks_walk_the_attributes_twice(monkeypatch) -> None:
    """``check_sizes`` on a model without nested graphs walks its nodes' attributes for subgraphs
    twice (the node count, then the tensors; six times before), and finds every tensor all the same."""
    from onnx_pathlift.fileio import read

    model = _attribute_tensors(3)
    walks = []
    real = read._subgraphs
    monkeypatch.setattr(read, "_subgraphs", lambda nodes: walks.append(1) or real(nodes))
    read.check_sizes(model, read.DEFAULT_LIMITS)
    assert len(walks) <= 2
    names = sorted(t.name for t in read._all_tensors(model))
    assert names == ["shp", "v0", "v1", "v2"]


def test_ordered_files_are_not_sorted_again(monkeypatch) -> None:
    """A file whose nodes are already in a topological order keeps it without a graph sort (one
    pass over the edges); a file written in reverse (keras2onnx) is sorted, to the same order."""
    from onnx_pathlift.frontend import prepare as prepare_module

    sorts = []
    real = prepare_module.nx.lexicographical_topological_sort
    monkeypatch.setattr(prepare_module.nx, "lexicographical_topological_sort", lambda g: sorts.append(1) or real(g))
    model = _attribute_tensors(3)
    nodes = list(model.graph.node)
    known = {"x", "shp"}
    assert prepare_module.topological_nodes(nodes, known) == nodes and sorts == []
    assert prepare_module.topological_nodes(nodes[::-1], known) == nodes[2::-1] + nodes[3:] and sorts == [1]


def test_a_file_is_size_checked_once(tmp_path, monkeypatch) -> None:
    """``compute_norms`` of a file checks its declared sizes once, as it reads it (``prepare`` checked them
    again); a ``ModelProto`` or bytes, never read from a file, is checked by ``prepare``: once too."""
    from onnx_pathlift.fileio import load as load_module
    from onnx_pathlift.frontend import prepare as prepare_module

    model = _attribute_tensors(2)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    checks = []
    for module in (load_module, prepare_module):
        real = module.check_sizes
        monkeypatch.setattr(module, "check_sizes", lambda m, limits, real=real, where=module.__name__: checks.append(where)
                            or real(m, limits))
    for source, where in ((str(path), "load"), (model, "prepare"), (model.SerializeToString(), "prepare")):
        checks.clear()
        norm = api.compute_norms(source, [1.0]).norms[0]
        assert [w.rsplit(".", 1)[1] for w in checks] == [where]
        assert norm.log10 == pytest.approx(np.log10(4 * (1 + 0.5 + 1.5)), abs=1e-9)


def test_a_file_is_not_walked_in_python_as_it_is_read(tmp_path, monkeypatch) -> None:
    """Reading the light DenseNet-121 (9,321 messages in 214 KB) or a file of large weights, split, visits
    no message in Python: the memory count provably stays under its limit (by the bytes' weights; by the
    few kilobytes decoded), and the UTF-8 check is a second decode in C. Both walked each message before,
    the count the wire format and the check the decoded message (tests/test_wire.py: where the count runs)."""
    from onnx_pathlift.fileio import load, read, wire

    visits = {"count": 0, "strings": 0}
    real_message, real_bad = wire._Count.message, read._bad_string

    def message(self, *args):
        visits["count"] += 1
        return real_message(self, *args)

    monkeypatch.setattr(wire._Count, "message", message)
    monkeypatch.setattr(read, "_bad_string", lambda m: visits.__setitem__("strings", visits["strings"] + 1) or real_bad(m))
    model, _ = load.load_split(LIGHT / "light_densenet121.onnx")
    assert len(model.graph.node) > 900 and visits == {"count": 0, "strings": 0}
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    model, stored = load.load_split(path)
    assert visits == {"count": 0, "strings": 0} and list(stored) == [0]  # W1 split off (W2 is under MIN_PAYLOAD)


def test_layout_folds_skip_the_reference_evaluator() -> None:
    """The onnx wheel's light DenseNet-121 folds its 242 ``Unsqueeze`` (opset 9, axes attribute) and 836
    ``ConstantOfShape`` nodes by their numpy fold rules: ONNX's reference evaluator folds none of them (it
    folded the 242 ``Unsqueeze``, one one-node model and evaluator each); the analysis is the same."""
    from onnx_pathlift.frontend.prepare import prepare

    model = onnx.load(LIGHT / "light_densenet121.onnx")
    prepared = prepare(model)
    assert prepared.folded_ops == {"ConstantOfShape": 836, "Unsqueeze": 242}
    assert prepared.evaluated_ops == {}
    unsqueezed = [n for n in model.graph.node if n.op_type == "Unsqueeze"]
    assert all(prepared.consts[n.output[0]].shape == prepared.consts[n.input[0]].shape + (1, 1) for n in unsqueezed)


def test_scores_graph_bounds_no_weights(monkeypatch) -> None:
    """The scores graph renormalises at run time and keeps no error budget: building it computes no
    layer's static bound (a pass over every weight, 0.4 s of light ResNet-50's 4 s), while the dynamic
    lifted network (``norm``'s fallback) still bounds its outputs."""
    import math

    from onnx_pathlift import import_model
    from onnx_pathlift.analyses.scores import scores_model
    from onnx_pathlift.backend import emit

    calls = []
    real = emit.static_bounds
    monkeypatch.setattr(emit, "static_bounds", lambda *a: calls.append(1) or real(*a))
    dag = import_model(MODEL)
    scores_model(dag)
    assert calls == []
    _, budgets = emit.lifted_bundle([(dag, 1.0)], static=False)
    assert calls == [1] and budgets[0].bound_log2 and all(math.isfinite(v) for v in budgets[0].bound_log2.values())


def test_scores_graph_copies_no_score_and_correlates_kernels_by_gemm() -> None:
    """The scores graph writes each score where it is computed (no Identity copies a weight-sized score
    into its output: 0.12 s on light ResNet-50) and correlates every one-group kernel by one GEMM over
    its unfolded taps (no Conv with the output positions as kernel: 3x3 kernels ran at a third of the
    GEMM's speed): its Conv nodes are the forward pass's only."""
    from onnx_pathlift import import_model
    from onnx_pathlift.analyses.scores import scores_model

    dag = import_model(MODEL)
    model, scored = scores_model(dag)
    nodes = model.proto.graph.node
    written = {o for n in nodes if n.op_type != "Identity" for o in n.output}
    assert scored and all(out in written for _, out, _ in scored)
    constants = {t.name for t in model.proto.graph.initializer} | set(model.external)
    assert any(layer.op == "conv" and layer.params["W"].shape[2:] != (1, 1) for layer in dag.layers())
    assert all(n.input[1] in constants for n in nodes if n.op_type == "Conv")  # no run-time kernel


def test_auto_npz_deflates_at_level_one(tmp_path) -> None:
    """``save_npz(compress="auto")`` deflates a member at zlib's level 1, the level its sample is judged
    at (the default 6 took 2.5× as long on light ResNet-50's 97 MB of scores): each deflated member is
    level 1's stream of the ``.npy`` bytes, which level 6's is not; it reads back bit for bit."""
    import io
    import zipfile
    import zlib

    from onnx_pathlift.fileio.atomic import save_npz

    arr = (np.arange(200_000) % 97).astype(np.float32) * np.float32(0.125)
    npy = io.BytesIO()
    np.lib.format.write_array(npy, arr, allow_pickle=False)

    def deflated(level: int) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        return c.compress(npy.getvalue()) + c.flush()

    assert deflated(1) != deflated(6)
    path = tmp_path / "a.npz"
    save_npz(path, {"a": arr}, compress="auto")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("a.npy")
        with open(path, "rb") as f:  # the member's raw stream: after its local header (30 bytes, name, extra)
            f.seek(info.header_offset + 26)
            skip = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
            f.seek(skip, 1)
            raw = f.read(info.compress_size)
    assert info.compress_type == zipfile.ZIP_DEFLATED and raw == deflated(1)
    with np.load(path) as z:
        assert np.array_equal(z["a"], arr)


def test_output_check_parses_only_models_naming_external_data(tmp_path, monkeypatch) -> None:
    """Refusing an output that is an input model or a file it reads parses the model only when its bytes
    hold an external-data ``location`` key (DenseNet-121's 2414 nodes took 0.12 s to parse again): a
    model without one is its only file, unparsed; one with external data lists its file, and ``scores
    -o`` naming that file is refused (exit 2)."""
    from conftest import run_captured

    from onnx_pathlift.fileio import read

    parsed = []
    real = read.parse_model
    monkeypatch.setattr(read, "parse_model", lambda *a, **k: parsed.append(1) or real(*a, **k))
    assert read.files_read(MODEL) == [MODEL] and parsed == []
    path = tmp_path / "mlp.onnx"
    _mlp(path)
    model = onnx.load(path)
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert {Path(p).name for p in read.files_read(path)} == {"mlp.onnx", "weights.bin"} and parsed == [1]
    rc, _, err = run_captured("scores", path, "-o", tmp_path / "weights.bin")
    assert rc == 2 and "a file the input" in err


def test_scores_round_to_float32_once(tmp_path, monkeypatch) -> None:
    """``scores -o``: each tensor's fractions are rounded to float32 once, into the run's own float32
    outputs (no new memory: a fresh float32 array per tensor took 0.13-0.25 s of light ResNet-50's
    command), and the arrays written to the ``.npz`` are the ones its quantiles then sort; the file keeps
    the unsorted fractions and the quantiles are numpy's."""
    from onnx_pathlift.analyses import scores as scores_module

    written, sorted_, outputs = {}, [], []
    real_save, real_quantiles, real_session = scores_module.save_npz, scores_module._quantiles, scores_module.make_session

    class Recorded:
        """The real session, its run's outputs kept."""

        def __init__(self, session) -> None:
            self.session = session

        def run(self, *args, **kwargs) -> list:
            outputs.extend(self.session.run(*args, **kwargs))
            return list(outputs)

        def __getattr__(self, name: str):
            return getattr(self.session, name)

    monkeypatch.setattr(scores_module, "save_npz", lambda path, arrays, **kw: written.update(arrays) or real_save(path, arrays, **kw))
    monkeypatch.setattr(scores_module, "_quantiles", lambda f, ps, rounded=None: sorted_.append(rounded) or real_quantiles(f, ps, rounded))
    monkeypatch.setattr(scores_module, "make_session", lambda *a, **k: Recorded(real_session(*a, **k)))
    out = tmp_path / "s.npz"
    report = api.score_weights(MODEL, out)
    assert len(sorted_) == len(written) == len(report.scores.fraction) > 0
    assert all(any(x is a for a in written.values()) for x in sorted_)
    assert all(any(np.shares_memory(a, o) for o in outputs) for a in written.values())
    with np.load(out) as z:
        for row in report.rows:
            f = report.scores.fraction[row["initializer"]]
            assert np.array_equal(z[row["initializer"]], f.astype(np.float32))
            expected = np.quantile(f.astype(np.float32).astype(np.float64), [0.5, 0.9, 0.99])
            got = [row["quantiles"][k] for k in ("median", "p90", "p99")]
            assert got == pytest.approx(expected, rel=1e-6, abs=0)


def test_scores_round_into_new_arrays_when_outputs_are_read_only(tmp_path, monkeypatch) -> None:
    """A runtime that hands back read-only outputs gets its fractions rounded into new arrays: the same
    ``.npz``, byte for byte."""
    from onnx_pathlift.analyses import scores as scores_module

    api.score_weights(MODEL, tmp_path / "writable.npz")
    real_session = scores_module.make_session

    class ReadOnly:
        """The real session, its outputs made read-only."""

        def __init__(self, session) -> None:
            self.session = session

        def run(self, *args, **kwargs) -> list:
            out = self.session.run(*args, **kwargs)
            for a in out:
                a.flags.writeable = False
            return out

        def __getattr__(self, name: str):
            return getattr(self.session, name)

    monkeypatch.setattr(scores_module, "make_session", lambda *a, **k: ReadOnly(real_session(*a, **k)))
    api.score_weights(MODEL, tmp_path / "read_only.npz")
    assert (tmp_path / "read_only.npz").read_bytes() == (tmp_path / "writable.npz").read_bytes()


def test_a_file_is_read_in_one_walk_of_its_tensors_and_one_fold_pass(monkeypatch) -> None:
    """Light DenseNet-121 (848 initializers of a few bytes, 1,746 nodes, 836 of them ``ConstantOfShape`` of one
    fill value) from file to prepared graph: the wire splitter opens no initializer under ``MIN_PAYLOAD``
    bytes (it walked the fields of all 848); the size checks and the external-data loader share one walk of
    the nodes' attributes and tensors (three before); one fold pass (a second one, after shape inference,
    folded nothing: no node left reads a shape); the fill value is read once (836 times before)."""
    from onnx_pathlift.fileio import load, read, wire
    from onnx_pathlift.frontend import prepare as prepare_module
    from onnx_pathlift.ops import plumbing

    counts = {"opened": 0, "walks": 0, "passes": 0, "fills": 0}

    def counted(key: str, real):
        return lambda *a, **kw: counts.__setitem__(key, counts[key] + 1) or real(*a, **kw)

    monkeypatch.setattr(wire, "_raw_data", counted("opened", wire._raw_data))
    monkeypatch.setattr(read, "_graph_walk", counted("walks", read._graph_walk))
    model, stored = load.load_split(LIGHT / "light_densenet121.onnx")
    assert (counts["opened"], counts["walks"]) == (0, 1)
    monkeypatch.setattr(prepare_module, "fold", counted("passes", prepare_module.fold))
    monkeypatch.setattr(plumbing, "_fill", functools.lru_cache(maxsize=64)(counted("fills", plumbing._fill.__wrapped__)))
    prepared = prepare_module.prepare(model, stored=stored, read=True)
    assert (counts["passes"], counts["fills"]) == (1, 1)
    assert prepared.folded_ops == {"ConstantOfShape": 836, "Unsqueeze": 242} and len(prepared.nodes) == 1746 - 836 - 242
