"""What the audit is asked (:class:`Settings`, :class:`Task`) and what it records (:class:`ModelResult`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

from .. import __version__

#: every status a model can end in
STATUSES = ("ok", "unsupported", "invalid", "error", "timeout")
DEFAULT_Q = (1.0, 2.0, 4.0)
#: how the reason of a model that ran out of memory starts
OUT_OF_MEMORY = "out of memory"

InputShape = tuple[int, ...] | dict[str, tuple[int, ...]] | None


@dataclass(frozen=True)
class Settings:
    """What a result depends on besides the file's content: the q list, the input shape, the version."""

    q: tuple[float, ...] = DEFAULT_Q
    input_shape: InputShape = None
    version: str = __version__

    def __post_init__(self):
        object.__setattr__(self, "q", tuple(sorted({float(q) for q in self.q})))
        if isinstance(self.input_shape, dict):
            object.__setattr__(self, "input_shape", {k: tuple(v) for k, v in sorted(self.input_shape.items())})
        elif self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def key(self) -> str:
        """The canonical text stored beside each result: results are reused only under the same key."""
        shape = self.input_shape
        if isinstance(shape, dict):
            shape = {k: list(v) for k, v in shape.items()}
        elif shape is not None:
            shape = list(shape)
        return json.dumps({"q": list(self.q), "input_shape": shape, "version": self.version}, sort_keys=True)


@dataclass(frozen=True)
class Task:
    """One model file to analyse: its path (as discovered), content hash and size in bytes."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelResult:
    """Everything the audit reports about one model file."""

    path: str
    sha256: str
    size: int
    status: str  # one of STATUSES
    reason: str = ""
    opset: int | None = None
    producer: str = ""
    params: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    input_shape: dict[str, list[int]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    norms: list[dict] = field(default_factory=list)  # PathNorm.to_dict() per q
    lipschitz_log10: float | None = None
    notes: list[str] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)  # {node, op_type, reason} per refused node
    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    timeout_s: float | None = None  # the --timeout in force when it was computed
    memory_mb: float | None = None  # the --max-memory in force when it was computed
    run_id: int | None = None
    computed_at: str | None = None

    def norm_log10(self, q: float) -> float | None:
        """log10 ‖Φ‖_q, or None when not computed (or the norm is 0)."""
        return next((n["log10"] for n in self.norms if n["q"] == float(q)), None)

    def brief(self) -> str:
        """The reason in one line: the refused op types, or the reason's first line."""
        if self.refusals:
            ops = Counter(r["op_type"] for r in self.refusals)
            return "refused " + ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in ops.most_common())
        return self.reason.splitlines()[0] if self.reason else ""

    @property
    def out_of_memory(self) -> bool:
        """Whether the model failed for lack of memory (a cap, or the kernel's OOM killer)."""
        return self.status == "error" and self.reason.startswith(OUT_OF_MEMORY)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def failure(task: Task, status: str, reason: str, wall_s: float, timeout_s: float | None) -> ModelResult:
    """The record of a model whose worker crashed or ran out of time (nothing else is known)."""
    return ModelResult(task.path, task.sha256, task.size, status, reason, wall_s=wall_s, timeout_s=timeout_s)
