"""Which files an audit covers: PATH arguments (files, folders searched recursively for ``*.onnx``,
globs) expanded in a stable order, and each file's content hash.

Every ``*.onnx`` entry that is not a folder is covered, whatever it is: a FIFO, a socket, a device or
a dangling symlink is reported as a failure with the reason (:func:`task_for` raises ``OSError``),
never skipped silently and never opened in a way that could block.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from .record import Task

_GLOB_CHARS = set("*?[")


def discover(paths: Sequence[str | Path]) -> list[str]:
    """The model files named by ``paths``, each once, in argument order (sorted within a folder or glob)."""
    found: dict[Path, str] = {}
    for arg in map(str, paths):
        if Path(arg).is_dir():
            hits = sorted(p for p in Path(arg).rglob("*.onnx") if not p.is_dir())
        elif os.path.lexists(arg):  # a file, or an entry reported as a failure by task_for
            hits = [Path(arg)]
        elif _GLOB_CHARS & set(arg):
            hits = []
            for match in sorted(glob.glob(arg, recursive=True)):
                hits += sorted(p for p in Path(match).rglob("*.onnx") if not p.is_dir()) if Path(match).is_dir() \
                    else [Path(match)]
        else:
            raise UsageError(f"{arg}: no such file or folder")
        for p in hits:
            found.setdefault(_key(p), str(p))
    if not found:
        raise UsageError(f"no .onnx file found in {', '.join(map(str, paths))}")
    return list(found.values())


def _key(p: Path) -> Path:
    """The entry's identity: its resolved path (a symlink loop keeps its own absolute path)."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def task_for(path: str) -> Task:
    """The path with its sha256 and size; raises ``OSError`` (its ``strerror`` says why) when the
    entry is not a readable regular file. Opened non-blocking and checked with ``fstat`` before any
    read: a FIFO is never read from (that would wait for a writer forever)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise OSError(errno.ENOENT, f"a dangling symbolic link (to {os.readlink(path)!r})")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file (a {_kind(mode)})")
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return Task(path, digest, os.fstat(fd).st_size)


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))
    return next((name for test, name in kinds if test(mode)), "special file")
