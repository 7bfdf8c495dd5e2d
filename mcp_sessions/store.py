"""SQLite persistence for sessions, messages and events.

Several server processes may share one database (each stdio client starts its own server), so every
read-modify-write runs in one `BEGIN IMMEDIATE` transaction and event sequence numbers are assigned
inside it. WAL lets readers go on while one process writes.

Calls that may wait run in a worker thread, one at a time per process. The short calls of every turn
(a record read, a record update, an event append) run on the event loop when the database is free: a
thread hop costs more than the SQL itself (0.4 ms against 0.1 ms here). There they use a second
connection that never waits for a lock and never checkpoints; if another connection holds the write
lock, the call goes to the thread and waits like any other. That connection's commits are checkpointed
from the thread now and then.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio

from . import leases
from .errors import StoreError
from .models import Event, Message, SessionRecord, SessionSummary, TreeUsage, Usage, now, summary_json
from .store_cursors import decode_cursor, encode_cursor, parse_stamp, stamp
from .store_schema import MIGRATIONS, SCHEMA_VERSION, apply
from .store_tasks import TaskRecords

T = TypeVar("T")
EventSpec = tuple[str, dict[str, Any]]
BUSY_TIMEOUT_S = 15.0  # how long a writer waits for another server holding the database
_TURN = "CAST(json_extract(doc, '$.turn') AS INTEGER)"
"""A message's turn as a number (as text, 10 would sort before 9)."""
CHECKPOINT_EVERY = 200  # commits on the event loop's connection between checkpoints (~1,000 WAL pages)


class _Locked(Exception):
    """The event loop's connection met a lock before doing anything: run the call in the thread instead."""


class Store(TaskRecords):
    """The database behind every session. Open with `await Store.open(path)`; close with `aclose()`.

    SQLite's; store_postgres.py runs the same queries on PostgreSQL."""

    _BEGIN_SNAPSHOT = "BEGIN"

    def __init__(self, path: Path, shared: sqlite3.Connection, fast: sqlite3.Connection) -> None:
        self.path = path
        self._shared = shared
        self._fast = fast
        self._local = threading.local()
        self._limiter = anyio.CapacityLimiter(1)
        self._fast_commits = 0

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection of the call being run: the event loop's own in `_quick`, else the shared one."""
        return getattr(self._local, "conn", self._shared)

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> Store:
        shared = await anyio.to_thread.run_sync(cls._connect, path)
        try:
            fast = await anyio.to_thread.run_sync(cls._connect, path)
            fast.execute("PRAGMA busy_timeout=0")
            fast.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            shared.close()
            raise
        return cls(path, shared, fast)

    @classmethod
    def check(cls, path: Path) -> None:
        """Open, migrate and close the database, raising `StoreError` with advice if it cannot be used."""
        cls._connect(path).close()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"Cannot create the state folder {path.parent}: {e.strerror}.") from e
        conn = None
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The state database {path} was written by a newer mcp-sessions (schema {version}, this "
                    f"one knows up to {SCHEMA_VERSION}). Upgrade mcp-sessions, or point MCP_SESSIONS_HOME elsewhere."
                )
            Store._use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                Store._migrate(conn, target)
            return conn
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(
                f"The state database {path} cannot be read ({e}). It was left untouched: move it aside "
                "to start afresh, or point MCP_SESSIONS_HOME elsewhere."
            ) from e

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Switch the database to WAL, which persists in the file.

        SQLite does not call the busy handler while another connection is switching the journal mode,
        so servers opening a new database at the same moment retry here instead of failing.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _migrate(conn: sqlite3.Connection, target: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < target:  # another process may have done it
                apply(conn, MIGRATIONS[target - 1])
                conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def aclose(self) -> None:
        self._fast.close()
        await self._run(self._shared.close)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.OperationalError as e:
            if "full" in str(e):
                raise StoreError(
                    f"The state database {self.path} cannot be written: the disk is full. Free some space; "
                    "nothing already stored was lost."
                ) from e
            raise StoreError(f"The state database {self.path} failed: {e}.") from e

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the shared connection in a worker thread."""
        return await anyio.to_thread.run_sync(self._call, fn, *args, limiter=self._limiter)

    async def _quick(self, fn: Callable[[], T], *, write: bool) -> T:
        """Run a short read, or a short write transaction, on the event loop if the database is free; else as
        `_run` does."""
        # A cancellation point, but not a scheduling point: the call is shorter than a turn of the event loop.
        await anyio.lowlevel.checkpoint_if_cancelled()
        body = self._transaction if write else self._read
        retry = False
        self._local.conn = self._fast
        try:
            result = self._call(body, fn)
        except _Locked:
            retry = True
        finally:
            del self._local.conn
        if retry:
            return await self._run(body, fn)
        if write:
            self._fast_commits += 1
            if self._fast_commits % CHECKPOINT_EVERY == 0:
                await self._run(self._checkpoint)
        return result

    def _writing(self, session_id: str) -> None:
        """Called first in every transaction that writes a session. `BEGIN IMMEDIATE` already gives this one
        writer at a time; a store with row-level concurrency serializes the session's writers here."""

    def lease_alive(self, lease: str) -> bool:
        """False only when the server that holds `lease` is certainly gone (leases.py)."""
        return leases.is_alive(lease)

    async def wait_for_change(self, timeout: float) -> None:
        """Return when other servers may have changed something, or after `timeout` seconds: SQLite tells no one,
        so followers poll (events.py)."""
        await anyio.sleep(timeout)

    def _checkpoint(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _locked_on_loop(self, e: sqlite3.OperationalError) -> bool:
        """Whether the event loop's connection met a lock, which it does not wait for."""
        return self._conn is self._fast and "locked" in str(e)

    def _read(self, fn: Callable[[], T]) -> T:
        """Reads outside a transaction. They do nothing, so a lock met on the loop just sends them to the thread."""
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if self._locked_on_loop(e):
                raise _Locked() from e
            raise

    def _transaction(self, fn: Callable[[], T]) -> T:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if self._locked_on_loop(e):  # before anything ran: it can run again in the thread
                raise _Locked() from e
            raise
        try:
            result = fn()
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:  # SQLite already rolled back after some errors (a full disk)
                conn.execute("ROLLBACK")
            raise

    def _snapshot(self, fn: Callable[[], T]) -> T:
        """Run reads in one read transaction, so they see one state of a database others write to."""
        self._conn.execute(self._BEGIN_SNAPSHOT)
        try:
            return fn()
        finally:
            self._conn.execute("COMMIT")

    # -- sessions ---------------------------------------------------------------------------------

    def _write_record(self, record: SessionRecord, stored_tags: str | None = None) -> None:
        """Insert or update the row; `stored_tags` is the row's tags column before, None for a new row."""
        s = record.session
        tags = json.dumps(s.tags)
        if tags != stored_tags:
            if stored_tags is not None:
                self._conn.execute("DELETE FROM session_tags WHERE session_id=?", (s.id,))
            self._conn.executemany("INSERT OR IGNORE INTO session_tags(tag, session_id) VALUES(?,?)", [(t, s.id) for t in s.tags])
        deadline = None
        if s.status == "ready" and s.idle_timeout_s > 0:
            deadline = stamp(s.last_activity_at + timedelta(seconds=s.idle_timeout_s))
        elif s.status == "paused" and s.phase == "paused" and s.paused_timeout_s > 0 and s.paused_at is not None:
            deadline = stamp(s.paused_at + timedelta(seconds=s.paused_timeout_s))
        columns = (s.status, s.owner, tags, record.model_dump_json(), deadline, summary_json(s))
        if stored_tags is None:
            self._conn.execute(  # an upsert: two servers mirroring one remote session may both add it
                "INSERT INTO sessions(status, owner, tags, record, idle_deadline, summary, id, created_at, driver, agent, parent) "
                "VALUES(?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
                "owner=excluded.owner, tags=excluded.tags, record=excluded.record, "
                "idle_deadline=excluded.idle_deadline, summary=excluded.summary",
                (*columns, s.id, stamp(s.created_at), s.driver, s.agent, s.parent_session_id),
            )
        else:
            self._conn.execute(
                "UPDATE sessions SET status=?, owner=?, tags=?, record=?, idle_deadline=?, summary=? WHERE id=?",
                (*columns, s.id),
            )

    def _append_events(self, session_id: str, specs: Iterable[EventSpec]) -> list[Event]:
        """Add events after the session's last; those of one call share one time."""
        last = self._conn.execute("SELECT MAX(seq) FROM events WHERE session_id=?", (session_id,)).fetchone()[0] or 0
        moment = now()
        at = stamp(moment)
        events = [Event(seq=last + i, time=moment, type=type_, data=data) for i, (type_, data) in enumerate(specs, 1)]
        self._conn.executemany(
            "INSERT INTO events(session_id, seq, time, type, data) VALUES(?,?,?,?,?)",
            [(session_id, e.seq, at, e.type, json.dumps(e.data)) for e in events],
        )
        return events

    async def insert(self, record: SessionRecord, events: list[EventSpec]) -> list[Event]:
        def run() -> list[Event]:
            self._writing(record.session.id)
            self._write_record(record)
            return self._append_events(record.session.id, events)

        return await self._quick(run, write=True)

    async def get(self, session_id: str) -> SessionRecord | None:
        def run() -> SessionRecord | None:
            row = self._conn.execute("SELECT record FROM sessions WHERE id=?", (session_id,)).fetchone()
            return SessionRecord.model_validate_json(row[0]) if row else None

        return await self._quick(run, write=False)

    async def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], list[EventSpec] | None],
        messages: Iterable[Message] = (),
    ) -> tuple[SessionRecord, list[Event]]:
        """Apply `mutate` to the stored record, add `messages` and append the events `mutate` returns, atomically.

        `messages` is read after `mutate` runs, so `mutate` may fill it. `mutate` may raise to abort; nothing
        is written then. Raises KeyError if the session is gone.
        """

        def run() -> tuple[SessionRecord, list[Event]]:
            self._writing(session_id)
            row = self._conn.execute("SELECT record, tags FROM sessions WHERE id=?", (session_id,)).fetchone()
            if row is None:
                raise KeyError(session_id)
            record = SessionRecord.model_validate_json(row[0])
            specs = mutate(record) or []
            self._write_record(record, row[1])
            for message in messages:
                self._add_message(session_id, message)
            return record, self._append_events(session_id, specs)

        return await self._quick(run, write=True)

    async def delete(self, session_id: str) -> None:
        def run() -> None:
            self._writing(session_id)
            tables = [(t, "session_id") for t in ("events", "messages", "session_tags", "tasks")] + [("sessions", "id")]
            for table, column in tables:
                self._conn.execute(f"DELETE FROM {table} WHERE {column}=?", (session_id,))

        await self._run(self._transaction, run)

    async def idle_past_deadline(self, moment: datetime, limit: int = 100) -> list[str]:
        """Ids of ready sessions whose idle timeout ran out before `moment`, and of paused ones whose paused timeout did."""

        def run() -> list[str]:
            rows = self._conn.execute(
                "SELECT id FROM sessions WHERE idle_deadline IS NOT NULL AND idle_deadline<=? LIMIT ?",
                (stamp(moment), limit),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._run(run)

    async def live_and_latest(self, extra: set[str]) -> tuple[set[str], dict[str, int]]:
        """The ids of live sessions, and the last event seq of those and of `extra`."""

        def run() -> tuple[set[str], dict[str, int]]:
            # One statement for every live session: followers on PostgreSQL look after every other server's write.
            rows = self._conn.execute(
                "SELECT id, (SELECT MAX(seq) FROM events WHERE session_id=sessions.id) FROM sessions "
                "WHERE status IN ('creating','ready','busy','paused')"
            ).fetchall()
            live = {r[0] for r in rows}
            seqs = {r[0]: r[1] or 0 for r in rows}
            for sid in extra - live:
                row = self._conn.execute("SELECT MAX(seq) FROM events WHERE session_id=?", (sid,)).fetchone()
                seqs[sid] = row[0] or 0
            return live, seqs

        return await self._run(run)

    async def with_status(self, statuses: Iterable[str]) -> list[SessionRecord]:
        wanted = list(statuses)

        def run() -> list[SessionRecord]:
            marks = ",".join("?" * len(wanted))
            rows = self._conn.execute(f"SELECT record FROM sessions WHERE status IN ({marks})", wanted).fetchall()
            return [SessionRecord.model_validate_json(r[0]) for r in rows]

        return await self._run(run)

    async def query(
        self,
        *,
        statuses: list[str] | None = None,
        tags: list[str] | None = None,
        driver: str | None = None,
        agent: str | None = None,
        owner: str | None = None,
        parent: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[SessionSummary], int, str | None]:
        """Newest first. Returns (page of summaries, total matching, cursor of the next page or None)."""
        where: list[str] = []
        args: list[Any] = []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        for tag in tags or []:
            where.append("id IN (SELECT session_id FROM session_tags WHERE tag=?)")
            args.append(tag)
        for column, value in (("driver", driver), ("agent", agent), ("owner", owner), ("parent", parent)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        if created_after is not None:
            where.append("created_at>=?")
            args.append(stamp(created_after))
        if created_before is not None:
            where.append("created_at<=?")
            args.append(stamp(created_before))
        base = " AND ".join(where) or "1"
        page_where, page_args = base, list(args)
        if cursor:
            after_time, after_id = decode_cursor(cursor)
            page_where += " AND (created_at<? OR (created_at=? AND id<?))"
            page_args += [after_time, after_time, after_id]

        # With tags as the only column filter, SQLite would look up and sort every tagged session; walking
        # the time index newest first stops at the page's end (12 -> 1 ms for a tag on 2,000 of 10,000).
        only_tags = bool(tags) and not (statuses or driver or agent or owner is not None or parent)
        by_time = " INDEXED BY sessions_by_time" if only_tags else ""

        def run() -> tuple[list[SessionSummary], int, str | None]:
            total = self._conn.execute(f"SELECT COUNT(*) FROM sessions WHERE {base}", args).fetchone()[0]
            # The page's ids first, then their summaries: a row's summary lies after its record (often
            # several pages long), so reading it for every candidate row would walk every record.
            rows = self._conn.execute(
                f"SELECT created_at, id FROM sessions{by_time} WHERE {page_where} ORDER BY created_at DESC, id DESC LIMIT ?",
                [*page_args, limit + 1],
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1][0], rows[-1][1]) if more else None
            ids = [r[1] for r in rows]
            found = self._conn.execute(f"SELECT id, summary, owner FROM sessions WHERE id IN ({','.join('?' * len(ids))})", ids)
            summaries = {i: (summary, who) for i, summary, who in found}
            page = [SessionSummary.model_validate_json(summaries[i][0]) for i in ids]
            for summary, i in zip(page, ids, strict=True):
                summary.owner = summaries[i][1]
            return page, total, next_cursor

        return await self._run(self._snapshot, run)

    # -- trees ------------------------------------------------------------------------------------

    _TREE = "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT sessions.id FROM sessions JOIN tree ON sessions.parent=tree.id)"
    """Every descendant of a session, and the session itself: each level one lookup in `sessions_by_parent`."""

    async def descendants(self, session_id: str) -> list[tuple[str, str]]:
        """(id, status) of every session below this one, children before their own children."""

        def run() -> list[tuple[str, str]]:
            rows = self._conn.execute(
                f"{self._TREE} SELECT sessions.id, status FROM tree JOIN sessions ON sessions.id=tree.id WHERE tree.id<>?",
                (session_id, session_id),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        return await self._run(run)

    async def children(self, session_id: str) -> int:
        """How many sessions have this one as their parent."""

        def run() -> int:
            return self._conn.execute("SELECT COUNT(*) FROM sessions WHERE parent=?", (session_id,)).fetchone()[0]

        return await self._quick(run, write=False)

    async def tree_usage(self, session_id: str) -> TreeUsage:
        """The usage of the session and every descendant, added up (of those still stored)."""

        def run() -> list[Any]:
            return self._conn.execute(
                f"{self._TREE} SELECT json_extract(record, '$.session.usage'), CAST(json_extract(record, '$.session.turns') AS INTEGER) "
                "- CAST(IFNULL(json_extract(record, '$.session.forked_turns'), 0) AS INTEGER), "
                "CAST(json_extract(record, '$.session.turn_time_s') AS REAL) FROM tree JOIN sessions ON sessions.id=tree.id",
                (session_id,),
            ).fetchall()

        rows = await self._run(self._snapshot, run)
        total = TreeUsage(sessions=len(rows))
        for usage, turns, turn_time in rows:
            total.add(Usage.model_validate_json(usage))
            total.turns += turns
            total.turn_time_s += turn_time or 0.0
        return total

    # -- messages and events ----------------------------------------------------------------------

    def _add_message(self, session_id: str, message: Message) -> None:
        n = self._conn.execute("SELECT MAX(n) FROM messages WHERE session_id=?", (session_id,)).fetchone()[0] or 0
        self._conn.execute(
            "INSERT INTO messages(session_id, n, doc) VALUES(?,?,?)", (session_id, n + 1, message.model_dump_json())
        )

    async def messages(
        self, session_id: str, last: int | None = None, kept_only: bool = False, from_turn: int | None = None
    ) -> list[Message]:
        """The session's messages, oldest first (`last`: only that many; `from_turn`: of that turn and later);
        `kept_only`: without undone ones."""

        def run() -> list[Message]:
            if from_turn is not None:
                rows = self._conn.execute(
                    f"SELECT doc FROM messages WHERE session_id=? AND {_TURN}>=? ORDER BY n",
                    (session_id, from_turn),
                ).fetchall()
            elif last is None:
                rows = self._conn.execute("SELECT doc FROM messages WHERE session_id=? ORDER BY n", (session_id,)).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT doc FROM (SELECT n, doc FROM messages WHERE session_id=? ORDER BY n DESC LIMIT ?) AS recent ORDER BY n",
                    (session_id, last),
                ).fetchall()
            found = [Message.model_validate_json(r[0]) for r in rows]
            return [m for m in found if not m.undone] if kept_only else found

        return await self._run(run)

    async def mark_undone(self, session_id: str, after_turn: int) -> None:
        """Mark the messages of the turns after `after_turn` undone (a restore went back before them)."""

        def run() -> None:  # read and written here, not with SQLite's json_set: PostgreSQL runs this too
            self._writing(session_id)
            rows = self._conn.execute(
                f"SELECT n, doc FROM messages WHERE session_id=? AND {_TURN}>?", (session_id, after_turn)
            ).fetchall()
            for n, doc in rows:
                undone = Message.model_validate_json(doc).model_copy(update={"undone": True})
                self._conn.execute(
                    "UPDATE messages SET doc=? WHERE session_id=? AND n=?", (undone.model_dump_json(), session_id, n)
                )

        await self._run(self._transaction, run)

    async def append_events(self, session_id: str, specs: list[EventSpec]) -> list[Event]:
        def run() -> list[Event]:
            self._writing(session_id)
            return self._append_events(session_id, specs)

        return await self._quick(run, write=True)

    async def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        def run() -> list[Event]:
            rows = self._conn.execute(
                "SELECT seq, time, type, data FROM events WHERE session_id=? AND seq>? ORDER BY seq LIMIT ?",
                (session_id, after, limit),
            ).fetchall()
            return [Event(seq=r[0], time=parse_stamp(r[1]), type=r[2], data=json.loads(r[3])) for r in rows]

        return await self._run(run)

    async def events_of_type(self, session_id: str, types: Iterable[str]) -> list[Event]:
        wanted = list(types)

        def run() -> list[Event]:
            rows = self._conn.execute(
                f"SELECT seq, time, type, data FROM events WHERE session_id=? AND type IN ({','.join('?' * len(wanted))}) "
                "ORDER BY seq",
                (session_id, *wanted),
            ).fetchall()
            return [Event(seq=r[0], time=parse_stamp(r[1]), type=r[2], data=json.loads(r[3])) for r in rows]

        return await self._run(run)

    async def last_seq(self, session_id: str) -> int:
        def run() -> int:
            return self._conn.execute("SELECT MAX(seq) FROM events WHERE session_id=?", (session_id,)).fetchone()[0] or 0

        return await self._quick(run, write=False)
