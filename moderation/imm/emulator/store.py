"""The emulator's tasks, kept in SQLite so that a restart keeps them (":memory:" for tests)."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

TASK_TYPE = "ImageModeration"
RETENTION_MS = 7 * 24 * 3600 * 1000  # IMM keeps task information for 7 days

RUNNING, SUCCEEDED, FAILED = "Running", "Succeeded", "Failed"
STATUSES = (RUNNING, SUCCEEDED, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    code TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    request_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    source_uri TEXT NOT NULL,
    scenes TEXT NOT NULL,
    interval INTEGER NOT NULL,
    max_frames INTEGER NOT NULL,
    tags TEXT,
    user_data TEXT,
    notification TEXT,
    result TEXT,
    review_due_ms INTEGER,
    review_outcome TEXT
);
CREATE INDEX IF NOT EXISTS tasks_start ON tasks (start_ms);
"""
# Columns added since the first release, for state files written before them.
_ADDED_COLUMNS = {"review_due_ms": "INTEGER", "review_outcome": "TEXT"}

_COLUMNS = [
    "task_id",
    "task_type",
    "project",
    "status",
    "code",
    "message",
    "start_ms",
    "end_ms",
    "request_id",
    "event_id",
    "source_uri",
    "scenes",
    "interval",
    "max_frames",
    "tags",
    "user_data",
    "notification",
    "result",
    "review_due_ms",
    "review_outcome",
]
_JSON_COLUMNS = {"scenes", "tags", "notification", "result"}

SORT_COLUMNS = {"TaskId": "task_id", "StartTime": "start_ms", "EndTime": "COALESCE(end_ms, 0)"}


def iso_ms(epoch_ms: int | None) -> str:
    """IMM's timestamps: UTC ISO-8601 with milliseconds and Z, e.g. 2024-05-20T08:30:01.123Z."""
    if epoch_ms is None:
        return ""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


@dataclass(frozen=True)
class Task:
    task_id: str
    project: str
    source_uri: str
    start_ms: int
    request_id: str
    event_id: str
    scenes: list[str]
    interval: int = 1
    max_frames: int = 1
    task_type: str = TASK_TYPE
    status: str = RUNNING
    code: str = ""
    message: str = ""
    end_ms: int | None = None
    tags: dict[str, str] | None = None
    user_data: str | None = None
    notification: dict[str, Any] | None = None
    result: dict[str, Any] | None = field(default=None)
    # IMM's manual review of a review verdict, while it is pending: when it ends, and its outcome.
    review_due_ms: int | None = None
    review_outcome: str | None = None

    def finished(
        self,
        *,
        end_ms: int,
        result: dict[str, Any] | None = None,
        code: str = "",
        message: str = "",
    ) -> Task:
        status = SUCCEEDED if result is not None else FAILED
        return replace(
            self, status=status, end_ms=end_ms, result=result, code=code, message=message
        )

    def info(self) -> dict[str, Any]:
        """The fields GetTask and ListTasks share, omitting what has no value yet."""
        data: dict[str, Any] = {
            "TaskId": self.task_id,
            "TaskType": self.task_type,
            "Status": self.status,
            "Code": self.code,
            "Message": self.message,
            "StartTime": iso_ms(self.start_ms),
        }
        if self.end_ms is not None:
            data["EndTime"] = iso_ms(self.end_ms)
        if self.tags is not None:
            data["Tags"] = self.tags
        if self.user_data is not None:
            data["UserData"] = self.user_data
        return data


class TaskStore:
    """Tasks by id; one connection shared by the server's threads, serialised by a lock."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            have = {row["name"] for row in self._db.execute("PRAGMA table_info(tasks)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, task: Task) -> None:
        row = asdict(task)
        values = [
            json.dumps(row[c]) if c in _JSON_COLUMNS and row[c] is not None else row[c]
            for c in _COLUMNS
        ]
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO tasks ({', '.join(_COLUMNS)}) VALUES ({placeholders})",  # noqa: S608
                values,
            )

    def get(self, task_id: str, *, now_ms: int) -> Task | None:
        """The task, unless it is unknown or past IMM's 7-day retention."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM tasks WHERE task_id = ? AND start_ms >= ?",
                (task_id, now_ms - RETENTION_MS),
            ).fetchone()
        return _task(row) if row else None

    def running(self, *, now_ms: int) -> list[Task]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM tasks WHERE status = ? AND start_ms >= ? ORDER BY start_ms, task_id",
                (RUNNING, now_ms - RETENTION_MS),
            ).fetchall()
        return [_task(row) for row in rows]

    def in_manual_review(self, *, now_ms: int) -> list[Task]:
        """Finished tasks whose manual review has not sent its second notification yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM tasks WHERE review_due_ms IS NOT NULL AND start_ms >= ? "
                "ORDER BY review_due_ms, task_id",
                (now_ms - RETENTION_MS,),
            ).fetchall()
        return [_task(row) for row in rows]

    def purge_expired(self, *, now_ms: int) -> int:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM tasks WHERE start_ms < ?", (now_ms - RETENTION_MS,)
            )
        return cursor.rowcount

    def query(
        self,
        *,
        now_ms: int,
        project: str,
        task_types: list[str] | None = None,
        status: str | None = None,
        tag: tuple[str, str] | None = None,
        start_range: tuple[int | None, int | None] = (None, None),
        end_range: tuple[int | None, int | None] = (None, None),
        sort: str = "TaskId",
        descending: bool = False,
        after: tuple[Any, str] | None = None,
        limit: int = 100,
    ) -> list[tuple[Any, Task]]:
        """Up to `limit` tasks as (sort value, task), ordered by the sort column then TaskId.

        `after` is the (sort value, TaskId) of the last task of the previous page: keyset paging,
        so tasks created between pages neither repeat nor shift the rest.
        """
        column = SORT_COLUMNS[sort]
        where = ["project = ?", "start_ms >= ?"]
        args: list[Any] = [project, now_ms - RETENTION_MS]
        if task_types is not None:
            where.append(f"task_type IN ({', '.join('?' for _ in task_types)})")
            args.extend(task_types)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM json_each(tasks.tags) AS t WHERE t.key = ? AND t.value = ?)"
            )
            args.extend(tag)
        for name, (low, high) in (("start_ms", start_range), ("end_ms", end_range)):
            if low is not None:
                where.append(f"{name} >= ?")
                args.append(low)
            if high is not None:
                where.append(f"{name} <= ?")
                args.append(high)
        if after is not None:
            op = "<" if descending else ">"
            where.append(f"({column} {op} ? OR ({column} = ? AND task_id {op} ?))")
            args.extend([after[0], after[0], after[1]])
        direction = "DESC" if descending else "ASC"
        sql = (
            f"SELECT {column} AS sort_value, * FROM tasks WHERE {' AND '.join(where)} "  # noqa: S608
            f"ORDER BY sort_value {direction}, task_id {direction} LIMIT ?"
        )
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [(row["sort_value"], _task(row)) for row in rows]


def _task(row: sqlite3.Row) -> Task:
    values = {
        c: json.loads(row[c]) if c in _JSON_COLUMNS and row[c] is not None else row[c]
        for c in _COLUMNS
    }
    return Task(**values)
