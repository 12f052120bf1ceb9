"""What is computed from lifted graphs: path-metrics, scores, Lipschitz bounds, rescaling, per-output
path-norms, inspection; and the commands the analyses declare about themselves.

An analysis module declares its command where it lives, as ``COMMAND = Command(...)``: its options, how it runs
from the parsed arguments (one library call returning a report with ``to_dict()``, the ``--json`` object), its
text form and its exit code. :data:`TABLE` is the one static list of them (command name → module, library
function, one-line help, example), so that the command line builds its parser and prints ``--help`` without
importing any analysis (numpy, onnx, onnxruntime): a module is imported when its command runs or its own
``--help`` is asked for (:func:`declared`), and ``onnx_pathlift.api`` finds each library function by its name
(:func:`library_function`). This module imports nothing heavy (only :mod:`onnx_pathlift.errors`) (docs/extending.md, "How to add an
analysis")."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UsageError

if TYPE_CHECKING:
    import argparse


def _success(report: Any) -> int:
    return 0


@dataclass(frozen=True)
class Command:
    """One command, declared by the analysis module that computes it.

    ``options(parser)`` adds its own options (the model and the options every single-model command shares,
    ``--input-shape``, ``--output``, ``--json``, ``--quiet``, ``--max-file-size``, are the command line's);
    ``run(args, common)`` runs it from the parsed ``args`` (``common``: the shared options as the library's
    keyword arguments ``input_shape`` and ``outputs``) and returns the report; ``render(report, args)`` prints
    the report's text form; ``exit_code(report)`` is the command's exit code (0 unless declared);
    ``function`` is the library function (``onnx_pathlift.api.<its name>``)."""

    name: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, dict[str, Any]], Any]
    render: Callable[[Any, argparse.Namespace], None]
    function: Callable[..., Any]
    exit_code: Callable[[Any], int] = _success


class Declared(NamedTuple):
    """Where a command is declared: the analysis module (in this package) whose ``COMMAND`` it is, its library
    function's name, its one-line help and an example (shown at the end of its ``--help``)."""

    module: str
    function: str
    help: str
    example: str


_MODEL = "models/digits_cnn_torch_bn.onnx"  # a shipped model (examples run from the repository root)
#: every command an analysis declares, in the order ``--help`` lists them (the weight op types named in
#: ``scores``' help are ``ops.registry.weight_op_types()``: a test keeps them equal)
TABLE: dict[str, Declared] = {
    "lipschitz": Declared("lipschitz", "lipschitz_report", "input-space Lipschitz bound ‖Φ_in‖_1 (ℓ∞ → ℓ1)",
                          f"onnx-pathlift lipschitz {_MODEL} --json"),
    "scores": Declared("scores", "score_weights", "path-magnitude scores of every Conv/ConvTranspose/MatMul/Gemm weight",
                       f"onnx-pathlift scores {_MODEL} -o scores.npz"),
    "rescale": Declared("rescale", "rescale_model", "random neuron-wise rescaling that keeps the function",
                        f"onnx-pathlift rescale {_MODEL} --seed 1 -o rescaled.onnx && onnx-pathlift norm rescaled.onnx"),
    "outputs": Declared("outputs", "output_norms", "per-output path-norms ‖Φ_k‖_q: the paths that end at each output neuron",
                        f"onnx-pathlift outputs {_MODEL} -q 1 -q 2"),
}


def declared(name: str) -> Command:
    """The :class:`Command` that the module :data:`TABLE` names for ``name`` declares (imports that module)."""
    return importlib.import_module(f"{__package__}.{TABLE[name].module}").COMMAND


def library_function(name: str) -> Callable[..., Any]:
    """The library function called ``name`` of a declared command (imports its module); AttributeError
    for any other name (``onnx_pathlift.api``'s module ``__getattr__``)."""
    for command, row in TABLE.items():
        if row.function == name:
            return declared(command).function
    raise AttributeError(f"module 'onnx_pathlift.api' has no attribute {name!r}")


def provider(parser: argparse.ArgumentParser) -> None:
    """The ``--provider`` option of every command that runs a lifted network."""
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")


def check_q(qs: list[float]) -> None:
    """Raise :class:`~onnx_pathlift.errors.UsageError` unless every q is a number ≥ 1 or ``inf``."""
    for q in qs:
        if not q >= 1:  # NaN fails too; inf is the largest path product
            raise UsageError(f"q must be a number ≥ 1, or inf (got {q})")


def fmt(log10: float) -> str:
    """A value given by its log10, for text: 6 significant digits, ``10^x`` past float64's range."""
    if log10 == -math.inf:
        return "0"
    if log10 < 300:
        return f"{10 ** log10:.6g}"
    return f"10^{log10:.6f}"
