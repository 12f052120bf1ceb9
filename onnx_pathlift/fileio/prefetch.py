"""Read a model file on a thread while the command imports its analyses.

A command's imports (numpy, onnx, networkx, onnxruntime: about 0.2 s) are Python work under the
interpreter lock; reading the file is a system call that runs without it. The command line starts
the read first (:func:`start`) and :func:`~onnx_pathlift.fileio.load.load_model` takes the bytes
(:func:`take`) instead of reading the file again, if it is still the same file (size, modification
time, inode); on any doubt or error it reads the file itself, as it would have. Standard library only:
this module is imported before the analyses are.
"""

from __future__ import annotations

import os
import stat
import threading

#: the environment variable that sets :func:`max_file_bytes` (in MiB; the CLI's ``--max-file-size``)
FILE_LIMIT_VARIABLE = "ONNX_PATHLIFT_MAX_FILE_MB"
#: the default size limit of a model file: protobuf's own limit on one message (2 GiB)
DEFAULT_MAX_FILE_MB = 2048

#: path (absolute) -> (the file's identity when the read started, the reading thread, its result box)
_PENDING: dict[str, tuple[tuple[int, ...], threading.Thread, list]] = {}


def max_file_bytes() -> int:
    """The largest model file read, in bytes: ``$ONNX_PATHLIFT_MAX_FILE_MB`` MiB (set by ``--max-file-size``;
    inherited by the audit's workers), else :data:`DEFAULT_MAX_FILE_MB`. A model file is never read past it."""
    try:
        mb = float(os.environ.get(FILE_LIMIT_VARIABLE, DEFAULT_MAX_FILE_MB))
    except ValueError:
        mb = DEFAULT_MAX_FILE_MB
    return int(mb * (1 << 20))


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def start(path: str | os.PathLike) -> None:
    """Start reading the regular file ``path`` on a daemon thread (nothing happens for anything else, or
    for a file over :func:`max_file_bytes`); a failed read, out of memory included, leaves the reading
    to the caller, which then reports it."""
    key = os.path.abspath(path)
    try:
        st = os.stat(key)
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_file_bytes() or key in _PENDING:
        return
    box: list = []

    def read() -> None:
        try:
            fd = os.open(key, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    box.append(f.read(st.st_size + 1))
        except (OSError, MemoryError):
            pass

    thread = threading.Thread(target=read, name="onnx-pathlift-prefetch", daemon=True)
    _PENDING[key] = (_identity(st), thread, box)
    thread.start()


def take(path: str | os.PathLike) -> bytes | None:
    """The bytes :func:`start` read for ``path``, once, if the file is unchanged since; else None."""
    key = os.path.abspath(path)
    entry = _PENDING.pop(key, None)
    if entry is None:
        return None
    identity, thread, box = entry
    thread.join()
    try:
        same = _identity(os.stat(key)) == identity
    except OSError:
        return None
    return box[0] if same and box and len(box[0]) == identity[2] else None


def forget() -> None:
    """Drop every read not taken (a command that failed, or did not read its model, before its end)."""
    _PENDING.clear()
