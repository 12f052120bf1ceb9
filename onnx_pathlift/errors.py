"""The error hierarchy. Each error carries the CLI exit code documented in the README.

| code | meaning |
|------|---------|
| 0 | success |
| 1 | anything else (internal error, provider unavailable, verification failed) |
| 2 | usage error (bad arguments, missing ``--input-shape`` for symbolic dimensions) |
| 3 | the model uses operators outside the supported set (every offending node is listed) |
| 4 | the model is unreadable or invalid |
| 5 | ``compare --check`` observed an output change above the certified bound (a bug) |
| 6 | an output could not be written (missing or read-only folder, a folder as target, disk full,
      file size limit); the file that was there before is left untouched |
| 7 | ``audit --fail-on``: some model ended in one of the named statuses (:data:`FAIL_ON_EXIT`) |
| 130, 143, 141 | Ctrl-C, SIGTERM (one line on stderr), stdout closed by its reader (quiet) |
"""

from __future__ import annotations

from dataclasses import dataclass

from .sanitise import terminal

#: the exit code of an audit in which some model ended in a status named by ``--fail-on`` (the help
#: text and the audit both read it here)
FAIL_ON_EXIT = 7


class PathliftError(Exception):
    """Base class of every error onnx-pathlift raises on purpose."""

    exit_code = 1

    def to_dict(self) -> dict:
        """JSON form for ``--json`` output."""
        return {"error": type(self).__name__, "message": str(self), "exit_code": self.exit_code}


class UsageError(PathliftError):
    """The call itself is wrong (bad arguments, a shape that must be given)."""

    exit_code = 2


class InvalidModelError(PathliftError):
    """The file is not a readable, well-formed ONNX model."""

    exit_code = 4


class OutOfMemoryError(InvalidModelError):
    """An allocation failed while reading or analysing the model (exit 4; ``oom`` in an audit)."""


class ProviderUnavailableError(PathliftError):
    """The requested onnxruntime execution provider cannot be used here."""

    exit_code = 1


class VerificationError(PathliftError):
    """The re-emitted DAG does not reproduce the source model's outputs."""

    exit_code = 1


class OutputError(PathliftError):
    """An output file or the audit database could not be written; nothing half-written is left."""

    exit_code = 6


class CertificateViolation(PathliftError):
    """A sampled output change exceeded the certified bound: a bug in us or in the preconditions."""

    exit_code = 5


@dataclass(frozen=True)
class Refusal:
    """Why one node cannot be represented: its name, op type and the reason."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return terminal(f"{self.node or '<unnamed>'} ({self.op_type}): {self.reason}")


class UnsupportedModelError(PathliftError):
    """The model uses operators outside the supported set; lists every offending node."""

    exit_code = 3

    def __init__(self, refusals: list[Refusal], analysable: list[str] | None = None):
        self.refusals = list(refusals)
        #: the nearest tensors that do import (checked): ``--output`` each of them analyses the rest
        self.analysable = list(analysable or [])
        lines = "\n".join(f"  - {r}" for r in self.refusals)
        way_out = ("\nanalysable instead (the nearest tensors before the refusal): "
                   + " ".join(f"--output {terminal(o)}" for o in self.analysable)) if self.analysable else ""
        super().__init__(f"{len(self.refusals)} node(s) cannot be represented as a ReLU network:\n{lines}{way_out}")

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["refusals"] = [r.__dict__ for r in self.refusals]
        d["analysable_outputs"] = self.analysable
        return d


class RefuseNode(Exception):
    """Raised by an op's import rule to refuse one node; the importer collects these."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
