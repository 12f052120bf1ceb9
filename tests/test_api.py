"""The public API: every documented name is the function or class it documents, whatever submodules
are imported first, and ``import onnx_pathlift`` stays light (the audit's parent process relies on it)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import onnx_pathlift as pl


def test_public_names_are_not_shadowed_by_submodules() -> None:
    for info in pkgutil.walk_packages(pl.__path__, "onnx_pathlift."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in pl.__all__:
        value = getattr(pl, name)
        assert not isinstance(value, types.ModuleType), f"onnx_pathlift.{name} is a module, not the documented API"
        assert name == "__version__" or callable(value), name


def test_import_is_light() -> None:
    code = ("import sys, onnx_pathlift, onnx_pathlift.audit.command; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'networkx', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
