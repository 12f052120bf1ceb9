"""The package's house rules, read from its source: folders follow the pipeline, imports flow one way, no
import cycle, no module named after a standard-library module, no module too long to read at once.

Static (``ast``): every ``from . import`` counts, at module level or inside a function (a lazy import is
still a dependency); imports under ``if TYPE_CHECKING:`` are annotations only and do not.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx
import pytest
from conftest import ROOT

PACKAGE = ROOT / "onnx_pathlift"
#: each folder (or top-level module) and its rank: a module may import its own folder and lower ranks only
#: (docs/extending.md draws the same house)
RANKS = {
    "__init__": 0, "errors": 0, "sanitise": 0,
    "fileio": 1, "graph": 1,
    "ir": 2,
    "ops": 3,
    "frontend": 4, "rewrite": 4,
    "backend": 5,
    "analyses": 6,
    "pruning": 7,
    "api": 8,
    "audit": 9,
    "cli": 10, "__main__": 10,
}
MAX_LINES = 480  # "about 450": a module a newcomer reads in one sitting


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _annotation_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids |= {id(n) for n in ast.walk(node)}
    return ids


def _targets(path: Path, node: ast.ImportFrom) -> list[str]:
    """The package modules (or packages) one relative ``from`` import reads."""
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    target = ".".join(base + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        as_path = ROOT / sub.replace(".", "/")
        out.append(sub if as_path.with_suffix(".py").is_file() or as_path.is_dir() else target)
    return out


def import_graph() -> nx.DiGraph:
    """Module → the package modules it imports (at run time)."""
    graph = nx.DiGraph()
    for path in sorted(PACKAGE.rglob("*.py")):
        graph.add_node(_module(path))
        tree = ast.parse(path.read_text())
        skip = _annotation_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and id(node) not in skip:
                graph.add_edges_from((_module(path), t) for t in _targets(path, node))
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                graph.add_edges_from((_module(path), n) for n in names if n.startswith("onnx_pathlift"))
    return graph


def _rank(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in RANKS:
        pytest.fail(f"{module}: folder or module {key!r} has no rank in RANKS (add it, and to docs/extending.md)")
    return RANKS[key]


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in sorted(cycles, key=len)[:10])


def test_imports_flow_down_the_pipeline():
    upward = [f"{a} (rank {_rank(a)}) imports {b} (rank {_rank(b)})" for a, b in import_graph().edges() if _rank(b) > _rank(a)]
    assert not upward, "\n".join(upward)


def test_the_layout_test_sees_the_imports():
    """The test above cannot pass vacuously: the graph holds the pipeline's known edges."""
    graph = import_graph()
    assert graph.has_edge("onnx_pathlift.frontend.importer", "onnx_pathlift.ir.dag")
    assert graph.has_edge("onnx_pathlift.ops.conv", "onnx_pathlift.graph.builder")
    assert graph.number_of_edges() > 200


def test_no_module_shadows_the_standard_library():
    shadows = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names]
    assert not shadows, f"named after standard-library modules (breaks tools that put the folder on sys.path): {shadows}"


def test_no_module_too_long():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


_OP_FIELDS = {"op_type", "op", "kind"}


def _is_op_field(node: ast.expr) -> bool:
    """``x.op_type``, ``x.op`` or ``x.kind`` (not numpy's ``x.dtype.kind``)."""
    return isinstance(node, ast.Attribute) and node.attr in _OP_FIELDS and not (
        isinstance(node.value, ast.Attribute) and node.value.attr == "dtype")


def _is_literal(node: ast.expr) -> bool:
    """A string literal, or a tuple / list / set of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and bool(node.elts) and all(_is_literal(e) for e in node.elts)


def op_string_comparisons(source: str) -> list[str]:
    """Each comparison (``==``, ``!=``, ``in``, ``not in``) of an op-type or layer-kind field with string literals."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_op_field(a) for a in operands) and any(_is_literal(b) for b in operands):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_op_string_switch_outside_ops():
    """An op's knowledge lives in its module in ``ops/``: other modules ask the declarations."""
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if module.startswith("onnx_pathlift.ops"):
            continue
        hits += [f"{module} {h}" for h in op_string_comparisons(path.read_text())]
    assert not hits, "op or layer-kind names compared outside ops/:\n" + "\n".join(hits)


def test_the_op_string_check_sees_comparisons():
    """The check above cannot pass vacuously: it finds each form it looks for, and skips a dtype's kind."""
    found = op_string_comparisons('a.op == "relu"\nif n.op_type in ("Conv", "Gemm"): pass\n'
                                  'b = "x" != layer.kind\nok = v.dtype.kind == "f"\nsame = a.op != b.op\n')
    assert [f.split(":")[0] for f in found] == ["line 1", "line 2", "line 3"]
    assert op_string_comparisons((PACKAGE / "ops" / "quantize.py").read_text())  # ops/ does compare, and may
