"""The state database's schema: the migrations from an empty file to the current version, in order.

`PRAGMA user_version` holds the version a database is at; `Store` opens a database by running the
migrations after it, each in its own transaction, so a database from any earlier release is brought up
to date and one from a later release is refused. A migration is SQL, or a function for what SQL cannot do.
Never change a migration that has shipped: add one.

The same migrations build a PostgreSQL database (store_postgres.py): they are written in SQLite's dialect
and translated there (`translate` lists the idioms it knows), and a function gets a connection with
sqlite3's `execute` and `?` parameters. tests/test_store.py runs every migration on both databases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from .models import SessionRecord, summary_json


def _add_summaries(conn: sqlite3.Connection) -> None:
    """Version 3: each row keeps its list_sessions summary, so listing never decodes whole records."""
    conn.execute("ALTER TABLE sessions ADD COLUMN summary TEXT")
    rows = conn.execute("SELECT id, record FROM sessions").fetchall()
    for session_id, record in rows:
        summary = summary_json(SessionRecord.model_validate_json(record).session)
        conn.execute("UPDATE sessions SET summary=? WHERE id=?", (summary, session_id))


def apply(conn: sqlite3.Connection, step: str | Callable[[sqlite3.Connection], None]) -> None:
    """Run one migration's statements (or function) inside the caller's transaction."""
    if callable(step):
        step(conn)
        return
    for statement in step.split(";"):
        if statement.strip():
            conn.execute(statement)


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # version 1
    """
    CREATE TABLE sessions(
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL,
        driver TEXT NOT NULL,
        agent TEXT NOT NULL,
        owner TEXT,
        tags TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX sessions_by_time ON sessions(created_at DESC, id DESC);
    CREATE INDEX sessions_by_status ON sessions(status, created_at DESC, id DESC);
    CREATE TABLE messages(
        session_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY(session_id, n)
    ) WITHOUT ROWID;
    CREATE TABLE events(
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        time TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY(session_id, seq)
    ) WITHOUT ROWID;
    """,
    # version 2: when a ready session becomes due for its idle timeout, kept by every write of the record
    """
    ALTER TABLE sessions ADD COLUMN idle_deadline TEXT;
    CREATE INDEX sessions_by_idle_deadline ON sessions(idle_deadline) WHERE idle_deadline IS NOT NULL;
    """,
    _add_summaries,
    # version 4: list filters by driver, agent, owner (every list over HTTP with tokens) and tag read an
    # index instead of every row
    """
    CREATE INDEX sessions_by_driver ON sessions(driver, created_at DESC, id DESC);
    CREATE INDEX sessions_by_agent ON sessions(agent, created_at DESC, id DESC);
    CREATE INDEX sessions_by_owner ON sessions(owner, status, created_at DESC, id DESC);
    CREATE TABLE session_tags(tag TEXT NOT NULL, session_id TEXT NOT NULL, PRIMARY KEY(tag, session_id)) WITHOUT ROWID;
    INSERT OR IGNORE INTO session_tags(tag, session_id) SELECT json_each.value, sessions.id FROM sessions, json_each(sessions.tags);
    """,
    # version 5: MCP tasks, each a turn or a creation of a session (mcp_sessions/tasks): the state is the
    # session's; the row says the task was given out, to whom, and by which tool
    """
    CREATE TABLE tasks(
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        owner TEXT,
        tool TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX tasks_by_owner ON tasks(owner, created_at DESC, id DESC);
    CREATE INDEX tasks_by_session ON tasks(session_id);
    """,
    # version 6: a session may have a parent. list_sessions(parent=...) and the walks over a session's
    # descendants (closing a tree, its usage, its budgets) read this index. No stored session had a parent
    # before: NULL is right for every row, and their summaries read without parent_session_id as None.
    """
    ALTER TABLE sessions ADD COLUMN parent TEXT;
    CREATE INDEX sessions_by_parent ON sessions(parent, created_at DESC, id DESC) WHERE parent IS NOT NULL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
