"""The ``onnx-pathlift`` command line: :mod:`.app` (parser, command table, ``main``), :mod:`.commands` (one
function per command) and :mod:`.render` (the reports' text forms)."""

from .app import EXAMPLES, build_parser, main

__all__ = ["EXAMPLES", "build_parser", "main"]
