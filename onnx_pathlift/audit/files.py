"""Which files an audit covers: PATH arguments (files, folders searched recursively for ``*.onnx``,
globs) expanded in a stable order, and each file's content hash."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from .record import Task

_GLOB_CHARS = set("*?[")


def discover(paths: Sequence[str | Path]) -> list[str]:
    """The model files named by ``paths``, each once, in argument order (sorted within a folder or glob)."""
    found: dict[Path, str] = {}
    for arg in map(str, paths):
        if Path(arg).is_file():
            hits = [Path(arg)]
        elif Path(arg).is_dir():
            hits = sorted(p for p in Path(arg).rglob("*.onnx") if p.is_file())
        elif _GLOB_CHARS & set(arg):
            hits = []
            for match in sorted(glob.glob(arg, recursive=True)):
                hits += [Path(match)] if Path(match).is_file() else sorted(Path(match).rglob("*.onnx"))
        else:
            raise UsageError(f"{arg}: no such file or folder")
        for p in hits:
            found.setdefault(p.resolve(), str(p))
    if not found:
        raise UsageError(f"no .onnx file found in {', '.join(map(str, paths))}")
    return list(found.values())


def task_for(path: str) -> Task:
    """The path with its sha256 and size; raises ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return Task(path, digest, os.fstat(f.fileno()).st_size)
