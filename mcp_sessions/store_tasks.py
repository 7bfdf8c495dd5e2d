"""The MCP tasks given out (mcp_sessions/tasks): their own table, apart from the sessions' queries, and
mixed into `Store` so that both databases run them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .store_cursors import decode_cursor, encode_cursor, parse_stamp, stamp

T = TypeVar("T")


class TaskRecords:
    if TYPE_CHECKING:

        @property
        def _conn(self) -> sqlite3.Connection: ...

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        async def _quick(self, fn: Callable[[], T], *, write: bool) -> T: ...

    async def add_task(self, task_id: str, session_id: str, owner: str | None, tool: str, created_at: datetime) -> None:
        """Record an MCP task given out (mcp_sessions/tasks); giving out the same id again keeps the first."""
        row = (task_id, session_id, owner, tool, stamp(created_at))
        await self._quick(lambda: self._conn.execute("INSERT OR IGNORE INTO tasks VALUES(?,?,?,?,?)", row), write=True)

    async def task(self, task_id: str) -> tuple[str | None, str, datetime] | None:
        """(owner, tool, created at) of a task given out, or None."""

        def run() -> tuple[str | None, str, datetime] | None:
            row = self._conn.execute("SELECT owner, tool, created_at FROM tasks WHERE id=?", (task_id,)).fetchone()
            return (row[0], row[1], parse_stamp(row[2])) if row else None

        return await self._quick(run, write=False)

    async def tasks(self, owner: str | None, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """Ids of the tasks of `owner` (None: everyone's), newest first; and the next page's cursor."""
        where, args = ("owner=?", [owner]) if owner is not None else ("1", [])
        if cursor:
            after_time, after_id = decode_cursor(cursor)
            where += " AND (created_at<? OR (created_at=? AND id<?))"
            args += [after_time, after_time, after_id]

        def run() -> tuple[list[str], str | None]:
            rows = self._conn.execute(
                f"SELECT created_at, id FROM tasks WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?", [*args, limit + 1]
            ).fetchall()
            more = rows[limit - 1] if len(rows) > limit else None
            return [r[1] for r in rows[:limit]], encode_cursor(more[0], more[1]) if more else None

        return await self._run(run)
