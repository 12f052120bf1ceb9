"""Atomic output files: a reader sees the old file or the complete new one, never a part.

Every file the CLI and the library write goes through :func:`atomic_write`: the bytes go to a
temporary file in the target's folder, which is flushed, ``fsync``-ed and renamed over the target
(``os.replace``, atomic on POSIX and Windows within one file system). On any failure the temporary
file is removed, the target is left as it was, and an :class:`~onnx_pathlift.errors.OutputError`
(exit 6) names the target and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:  # numpy and onnx are imported by the writers that need them
    import numpy as np
    from onnx import ModelProto



import contextlib
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from ..errors import OutputError


def refuse_overwriting_input(out: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Raise :class:`UsageError` (exit 2) when ``out`` is one of ``inputs`` (same file, by any path) or
    one of the external-data files a model among them reads (:func:`~onnx_pathlift.fileio.read.files_read`)."""
    from .read import files_read

    for src in inputs:
        for read in files_read(src):
            refuse_same_file(out, read, src)


def refuse_same_file(out: str | os.PathLike, read: str | os.PathLike, src: str | os.PathLike) -> None:
    """:class:`UsageError` when ``out`` names the file ``read`` (which the run reads for the input ``src``)."""
    try:
        same = os.path.samefile(out, read)
    except OSError:  # one of them does not exist: compare the resolved paths
        same = Path(out).resolve() == Path(read).resolve()
    if same:
        what = "the input file" if str(read) == str(src) else f"a file the input {str(src)!r} reads"
        raise UsageError(f"the output {str(out)!r} is {what} {str(read)!r}: write to another path")


def _is_special(path: Path) -> bool:
    """Whether ``path`` exists and is not a regular file or a folder (a device such as /dev/full, a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (text modes: UTF-8, no newline translation);
    on success it replaces ``path`` atomically.

    A device or FIFO target (``/dev/null``, ``/dev/full``, ``/dev/stdout``) cannot be replaced: it is
    written in place, and a failed write is still reported as an :class:`OutputError`."""
    target = Path(path)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    if target.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: it is a folder")
    if _is_special(target):
        try:
            with open(target, mode, **text) as f:
                yield f
        except OSError as exc:
            raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
        return
    folder = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc} (folder {str(folder)!r})") from exc
    try:
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _keep_mode(target, tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}; it was left as it was") from exc
        raise


def _keep_mode(target: Path, tmp: str) -> None:
    """Give the new file the old one's permissions, else the usual ones for a new file (umask)."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_with(path: str | os.PathLike, writer: Callable[[IO], None], mode: str = "wb") -> None:
    """Atomically replace ``path`` with what ``writer(file)`` writes (e.g. ``np.savez`` to a file
    object, which, unlike a str path, never gets ``.npz`` appended)."""
    with atomic_write(path, mode) as f:
        writer(f)


def save_model(model: ModelProto, out: str | os.PathLike) -> None:
    """Write an ONNX model atomically (the target is replaced only once the whole file is written)."""
    write_bytes(out, model.SerializeToString())


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compress: str = "all") -> None:
    """Write exactly ``path`` (``np.savez`` would append .npz to a str path), atomically, as ``np.load``
    reads it. ``compress``: ``"all"`` deflates every array, ``"none"`` stores them (at disk speed),
    ``"auto"`` deflates an array (at level 1) only where a strided sample of it deflates to under half
    its size (zeros of a pruned tensor, repeated values; random float32 mantissas shrink by ~6 % at
    ~14× the time of storing them)."""
    if compress not in ("all", "none", "auto"):
        raise UsageError(f"compress must be all, none or auto (got {compress!r})")
    write_with(path, lambda f: _write_npz(f, arrays, compress))


def _write_npz(f: IO, arrays: dict[str, np.ndarray], compress: str) -> None:
    """``np.savez`` with a compression chosen per member (see :func:`save_npz`)."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(f, "w", allowZip64=True) as z:
        for name, value in arrays.items():
            value = np.asanyarray(value)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            deflate = compress == "all" or (compress == "auto" and _deflates(value))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            if deflate and compress == "auto":  # level 1, as sampled: 2.5x faster than zlib's default 6
                info._compresslevel = 1  # what ZipFile.open gives a member named by string (3.11-3.13)
            with z.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def _deflates(value: np.ndarray, sample: int = 1 << 16) -> bool:
    """Whether ``sample`` evenly strided entries of ``value`` deflate (level 1) to under half their bytes."""
    import zlib

    flat = value.reshape(-1)
    picked = flat[:: max(1, flat.size // sample)].tobytes()
    return len(zlib.compress(picked, 1)) < len(picked) // 2
