"""The audit database (SQLite, WAL mode): one row per (content hash, settings), committed as each
model finishes, so that an audit killed at any moment (even ``kill -9``) resumes where it stopped.

Tables: ``results`` (``sha256``, ``settings`` (the key of :class:`~onnx_pathlift.audit.record.Settings`),
``path``, ``status``, ``reason``, ``record`` (the whole result as JSON: query it with ``json_extract``),
``run_id``, ``computed_at``) and ``runs`` (one row per audit started; ``finished_at`` stays NULL when
it was interrupted).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UsageError
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
            raise UsageError(f"{self.path}: cannot use as the audit database: {exc}") from exc

    def start_run(self, settings: Settings, paths: list[str]) -> int:
        cur = self.db.execute("INSERT INTO runs (started_at, settings, paths) VALUES (?, ?, ?)",
                              (_now(), settings.key(), json.dumps(paths)))
        self.db.commit()
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, analysed: int, reused: int) -> None:
        self.db.execute("UPDATE runs SET finished_at = ?, analysed = ?, reused = ? WHERE id = ?",
                        (_now(), analysed, reused, run_id))
        self.db.commit()

    def results(self, settings: Settings) -> dict[str, ModelResult]:
        """Every stored result under these settings, by content hash."""
        rows = self.db.execute("SELECT sha256, record FROM results WHERE settings = ?", (settings.key(),))
        return {sha: ModelResult.from_dict(json.loads(record)) for sha, record in rows}

    def put(self, result: ModelResult, settings: Settings, run_id: int) -> ModelResult:
        """Store (or replace) one result and commit; returns it stamped with the run and the time."""
        result = replace(result, run_id=run_id, computed_at=_now())
        self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (result.sha256, settings.key(), result.path, result.status, result.reason,
                         json.dumps(result.to_dict()), run_id, result.computed_at))
        self.db.commit()
        return result

    def close(self) -> None:
        self.db.close()
