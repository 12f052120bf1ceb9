"""Progress on stderr: a bar with counts and ETA on a terminal, one plain line per model otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from typing import TextIO

from ..sanitise import terminal
from .record import STATUSES, ModelResult


class Progress:
    """A :class:`~onnx_pathlift.audit.batch.Listener` that reports to ``stream`` (default stderr)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.todo, self.done, self.counts = 0, 0, Counter()
        self.t0 = time.monotonic()

    def start(self, todo: int, reused: int) -> None:
        self.todo, self.t0 = todo, time.monotonic()
        self._print(f"audit: {todo} model(s) to analyse, {reused} already in the database")

    def update(self, result: ModelResult) -> None:
        self.done += 1
        self.counts[result.status] += 1
        if self.tty:
            self._bar()
            if self.done == self.todo:
                self.stream.write("\n")
                self.stream.flush()
            return
        why = f": {result.brief()}" if result.reason else ""
        self._print(f"[{self.done}/{self.todo}] {result.status} {result.path} ({result.wall_s:.2f} s){why}")

    def close(self) -> None:
        """End an unfinished bar's line (the audit stopped early), so that what follows starts afresh."""
        if self.tty and 0 < self.done < self.todo:
            self.stream.write("\n")
            self.stream.flush()
            self.todo = self.done  # the bar is over

    def _bar(self) -> None:
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.todo - self.done)
        counts = " ".join(f"{s} {self.counts[s]}" for s in STATUSES if self.counts[s])
        tail = f" {self.done}/{self.todo}  {counts}  {_clock(elapsed)} elapsed, {_clock(eta)} left"
        width = max(10, min(30, shutil.get_terminal_size().columns - len(tail) - 3))
        filled = round(width * self.done / self.todo)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}]{tail}\x1b[K")
        self.stream.flush()

    def _print(self, line: str) -> None:
        print(terminal(line), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
