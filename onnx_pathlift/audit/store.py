"""The audit database (SQLite, WAL mode): one row per (content hash, settings), committed as each
model finishes, so that an audit killed at any moment (even ``kill -9``) resumes where it stopped.

Tables: ``results`` (``sha256``, ``settings`` (the key of :class:`~onnx_pathlift.audit.record.Settings`),
``path``, ``status``, ``reason``, ``record`` (the whole result as JSON: query it with ``json_extract``),
``run_id``, ``computed_at``) and ``runs`` (one row per audit started; ``finished_at`` stays NULL when
it was interrupted).

Failures of the database itself end the audit with one clear error, never a traceback: a file that
is not an audit database or is corrupt (anywhere, not only in its header) is a usage error (exit 2);
a write that fails (disk full, file size limit, read-only folder) is an
:class:`~onnx_pathlift.errors.OutputError` (exit 6). Every result committed before stays.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from ..errors import OutputError, UsageError
from .record import ModelResult, Settings

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT, settings TEXT NOT NULL,
    paths TEXT NOT NULL, analysed INTEGER, reused INTEGER);
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL, settings TEXT NOT NULL, path TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    record TEXT NOT NULL, run_id INTEGER NOT NULL REFERENCES runs(id), computed_at TEXT NOT NULL,
    PRIMARY KEY (sha256, settings));
"""


#: SQLite's words for a write the file system refused (as opposed to a corrupt or foreign file)
_WRITE_FAILURES = ("full", "disk i/o", "readonly", "read-only", "unable to open", "too large")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Store:
    """An open audit database."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise UsageError(f"{self.path}: audit database schema {version}, this version reads {SCHEMA_VERSION}")
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed (even -9) or crashing; only a
            # power loss or OS crash can drop the last few, which the next run then recomputes
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.commit()
        except sqlite3.Error as exc:
            raise _error(self.path, exc) from exc

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """sqlite3 errors → UsageError (corrupt or foreign file) or OutputError (a failed write)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _error(self.path, exc) from exc

    def start_run(self, settings: Settings, paths: list[str]) -> int:
        with self._guard():
            cur = self.db.execute("INSERT INTO runs (started_at, settings, paths) VALUES (?, ?, ?)",
                                  (_now(), settings.key(), json.dumps(paths)))
            self.db.commit()
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, analysed: int, reused: int) -> None:
        with self._guard():
            self.db.execute("UPDATE runs SET finished_at = ?, analysed = ?, reused = ? WHERE id = ?",
                            (_now(), analysed, reused, run_id))
            self.db.commit()

    def results(self, settings: Settings) -> dict[str, ModelResult]:
        """Every stored result under these settings, by content hash."""
        with self._guard():
            rows = self.db.execute("SELECT sha256, record FROM results WHERE settings = ?", (settings.key(),)).fetchall()
        try:
            return {sha: ModelResult.from_dict(json.loads(record)) for sha, record in rows}
        except (ValueError, TypeError) as exc:  # a row that is not a record this version wrote
            raise UsageError(f"{self.path}: cannot use as the audit database: a stored record is damaged ({exc})") from exc

    def put(self, result: ModelResult, settings: Settings, run_id: int) -> ModelResult:
        """Store (or replace) one result and commit; returns it stamped with the run and the time."""
        result = replace(result, run_id=run_id, computed_at=_now())
        with self._guard():
            self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (result.sha256, settings.key(), result.path, result.status, result.reason,
                             json.dumps(result.to_dict()), run_id, result.computed_at))
            self.db.commit()
        return result

    def close(self) -> None:
        self.db.close()


def _error(path: Path, exc: sqlite3.Error) -> UsageError | OutputError:
    """The error an audit ends with when its database fails: exit 6 for a refused write, else 2."""
    text = str(exc)
    if any(word in text.lower() for word in _WRITE_FAILURES):
        return OutputError(f"{path}: cannot write the audit database: {text} (results committed before are kept)")
    return UsageError(f"{path}: cannot use as the audit database: {text}")
