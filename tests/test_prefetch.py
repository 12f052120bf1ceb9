"""The command line reads a model file on a thread while it imports; the bytes are used only if the
file is still the one read (onnx_pathlift.fileio.prefetch)."""

from __future__ import annotations

import os
from pathlib import Path

from onnx_pathlift import cli
from onnx_pathlift.fileio import prefetch
from onnx_pathlift.fileio.load import load_model

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits_mlp_sklearn.onnx"


def test_the_read_bytes_are_taken_once(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(MODEL.read_bytes())
    prefetch.start(str(path))
    assert prefetch.take(path) == MODEL.read_bytes()
    assert prefetch.take(path) is None  # taken: load_model reads the file itself from now on


def test_a_file_changed_after_the_read_started_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x" * 100)
    prefetch.start(path)
    prefetch._PENDING[os.path.abspath(path)][1].join()
    path.write_bytes(MODEL.read_bytes())  # another size, another modification time
    assert prefetch.take(path) is None
    assert load_model(path).graph.node  # the model now in the file


def test_nothing_is_read_for_what_is_not_a_regular_file(tmp_path: Path) -> None:
    prefetch.forget()
    for target in (tmp_path, tmp_path / "absent.onnx", "\0bad"):
        prefetch.start(target)
        assert prefetch.take(target) is None
    assert not prefetch._PENDING


def test_the_command_line_keeps_no_read_after_a_command(capsys) -> None:
    assert cli.main(["norm", str(MODEL), "--json"]) == 0
    assert not prefetch._PENDING
    assert cli.main(["norm", str(MODEL), "-q", "0.5", "--json"]) == 2  # refused before the model is read
    assert not prefetch._PENDING
    assert cli.main(["norm", str(MODEL.parent / "absent.onnx"), "--json"]) == 4  # errors as before
    assert '"error"' in capsys.readouterr().out

