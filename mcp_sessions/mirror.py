"""Sessions of read-only platforms, mirrored into the store so that every surface shows them.

A read-only platform (the `syntropic137` dialect) runs agent sessions itself, started by its own workflows,
and lets others only read them. This server cannot create, message or interrupt those sessions, but it shows
them next to its own: for each configured read-only remote, `Mirror` reads the platform's session list once at
start and then every `options.poll_s` seconds (30 by default), and writes one record per remote session through
the store's public API. list_sessions with its filters and pagination, the REST API and the CLI then show them
like any other session. get_session first refreshes a mirrored session from the platform's session detail, so
its usage and operations are current.

A mirrored record has the id `ses_` + a hash of (remote, remote id), so every poll, process and restart finds
the same one; driver and agent `remote`; the tags: the remote's name and the dialect; `sandbox`: {remote,
dialect, url, remote_session_id, read_only: true}; the status mapped (running -> busy, completed and cancelled ->
dead with that reason, failed -> failed with the platform's error); usage with the tokens, cost and cost per
model; the operations as messages (requests, responses, tool calls and results), so the transcript reads like a
session's. One that vanished from the platform while live turns failed, saying so. Closing one marks it closed
here (dead, "closed") without calling the platform; the mirror then leaves it alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio

from sandbox_backends.base import SandboxError, SandboxNotFound
from sandbox_backends.remote import HttpDialect, Remote, dialect
from sandbox_backends.remote.syntropic137 import Syntropic137Client

from .errors import StoreError
from .models import (
    LIVE_STATUSES,
    ContentBlock,
    Message,
    Session,
    SessionRecord,
    Status,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    now,
)
from .settings import Settings
from .store import EventSpec, Store

log = logging.getLogger(__name__)

MIRROR = "mirror"
"""The agent_options key of a mirrored record: {remote, dialect, id (the remote's), operations (how many are stored)}."""
CLOSED_HERE = "closed"
REFRESH_TIMEOUT_S = 10.0
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "total_tokens")
METADATA = ("workflow_id", "workflow_name", "execution_id", "phase_id", "agent_provider", "repos_display")


def read_only(record: SessionRecord) -> str | None:
    """Why a caller cannot drive this session (it mirrors a read-only platform's), or None."""
    m = record.agent_options.get(MIRROR)
    if not m:
        return None
    return (
        f"{m['dialect']} sessions are read-only: session {record.session.id} mirrors session {m['id']} of remote "
        f"'{m['remote']}', whose workflows run it. Read it with get_session or its transcript; to steer it, "
        f"use {m['dialect']} itself."
    )


def local_id(remote: str, rid: str) -> str:
    return "ses_" + hashlib.sha256(f"{remote}/{rid}".encode()).hexdigest()[:32]


def _time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _money(value: Any) -> float:
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def _usage(row: dict[str, Any], old: Usage) -> Usage:
    """The row's tokens and cost (a decimal string) over what is known; fields the row lacks are kept."""
    usage = old.model_copy(deep=True)
    for key in TOKENS:
        if isinstance(row.get(key), int):
            setattr(usage, key, row[key])
    if row.get("total_cost_usd") is not None:
        usage.cost_usd = _money(row["total_cost_usd"])
    if isinstance(row.get("cost_by_model"), dict):
        usage.cost_by_model = {str(k): _money(v) for k, v in row["cost_by_model"].items()}
    return usage


def _status(row: dict[str, Any], dialect: str) -> tuple[Status, str | None]:
    status = str(row.get("status") or "")
    if status == "failed":
        return "failed", f"on {dialect}: {row.get('error_message') or 'failed'}"
    if status in ("completed", "cancelled"):
        return "dead", f"{status} on {dialect}"
    return "busy", None  # running, and whatever the platform may add


def _content(op: dict[str, Any]) -> tuple[str, list[ContentBlock]] | None:
    """An operation as (role, content); None for those a transcript leaves out (thinking, validation)."""
    kind, text = op.get("operation_type"), op.get("message_content")
    call = str(op.get("tool_use_id") or op.get("operation_id"))
    if kind in ("message_request", "agent_request") and text:
        return ("system" if op.get("message_role") == "system" else "user"), [TextBlock(text=text)]
    if kind == "message_response" and text:
        return "assistant", [TextBlock(text=text)]
    if kind in ("tool_started", "tool_use"):
        tool_input = op.get("tool_input")
        return "assistant", [ToolUseBlock(id=call, name=str(op.get("tool_name") or "tool"), input=tool_input if isinstance(tool_input, dict) else {})]
    if kind in ("tool_completed", "tool_blocked", "tool_execution"):
        blocked = kind == "tool_blocked"
        output = op.get("tool_output") or ("blocked" if blocked else "")
        return "tool", [ToolResultBlock(tool_use_id=call, content=str(output), is_error=blocked or op.get("success") is False)]
    if kind == "error":
        return "system", [TextBlock(text=f"error: {text or op.get('tool_output') or 'unknown'}")]
    return None


class Mirror:
    """Follows the read-only remotes among `remotes`. Open with `Mirror.running(...)`."""

    def __init__(self, store: Store, settings: Settings, remotes: dict[str, Remote]) -> None:
        self.store = store
        self.settings = settings
        self._clients: dict[str, HttpDialect] = {}
        self._explained: set[str] = set()
        for name, remote in remotes.items():
            if dialect(remote.dialect).read_only:
                try:
                    self._clients[name] = dialect(remote.dialect).client(remote)
                except SandboxError as e:
                    log.error("not mirroring the sessions of %s: %s", remote.label, e)

    @classmethod
    @asynccontextmanager
    async def running(cls, store: Store, settings: Settings, remotes: dict[str, Remote]) -> AsyncIterator[Mirror]:
        mirror = cls(store, settings, remotes)
        try:
            async with anyio.create_task_group() as tg:
                for client in mirror._clients.values():
                    tg.start_soon(mirror._follow, client)
                yield mirror
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for client in mirror._clients.values():
                    await client.aclose()

    async def _follow(self, client: HttpDialect) -> None:
        interval = float(client.remote.options.get("poll_s", 30))
        failing: str | None = None
        while True:
            try:
                await self.poll(client)
                if failing:
                    log.warning("mirroring the sessions of %s again", client.remote.label)
                failing = None
            except (SandboxError, StoreError) as e:
                if str(e) != failing:
                    log.warning("cannot mirror the sessions of %s (trying again every %g s): %s", client.remote.label, interval, e)
                failing = str(e)
            except Exception:
                log.exception("mirroring the sessions of %s failed", client.remote.label)
            await anyio.sleep(interval)

    async def poll(self, client: HttpDialect) -> None:
        """Read the remote's session list, page by page back in time, and store what changed; live mirrored
        sessions the list no longer shows are refreshed one by one (so one that vanished fails)."""
        assert isinstance(client, Syntropic137Client)
        options = client.remote.options
        limit, most = int(options.get("limit", 200)), int(options.get("max_sessions", 1000))
        params: dict[str, Any] = {"limit": limit}
        if options.get("statuses"):
            statuses = options["statuses"]
            params["statuses"] = statuses if isinstance(statuses, str) else ",".join(statuses)
        if options.get("workflow_id"):
            params["workflow_id"] = options["workflow_id"]
        seen: set[str] = set()
        while len(seen) < most:
            rows = await client.sessions(params)
            fresh = [row for row in rows if str(row["id"]) not in seen]
            for row in fresh:
                seen.add(str(row["id"]))
                record = await self._upsert(client, row)
                if record.session.status == "failed" and "error_message" not in row and record.session.id not in self._explained:
                    self._explained.add(record.session.id)  # the list has no error message: read it once from the detail
                    await self.refresh(record)
            starts = [t for t in (_time(row.get("started_at")) for row in rows) if t is not None]
            if len(rows) < limit or not fresh or not starts:
                break
            params["started_before"] = min(starts).isoformat()  # inclusive: the boundary repeats, `seen` drops it
        for record in await self.store.with_status(LIVE_STATUSES):
            m = record.agent_options.get(MIRROR)
            if m and m["remote"] == client.remote.name and m["id"] not in seen:
                await self.refresh(record)

    async def refresh(self, record: SessionRecord) -> SessionRecord:
        """A mirrored session brought up to date from the platform's detail (with its operations); others as
        they are. A platform that cannot answer leaves the stored copy, with `phase_detail` saying why."""
        m = record.agent_options.get(MIRROR)
        client = self._clients.get(m["remote"]) if m else None
        if m is None or client is None or record.session.close_reason == CLOSED_HERE:
            return record
        assert isinstance(client, Syntropic137Client)
        try:
            with anyio.fail_after(REFRESH_TIMEOUT_S):
                detail = await client.get(m["id"], patience_s=0)
        except SandboxNotFound as e:
            reason = str(e)
            return await self._change(record, lambda r: self._fail(r, reason))
        except (SandboxError, TimeoutError) as e:
            why = str(e) or f"no answer from {client.remote.label} in {REFRESH_TIMEOUT_S:g} s"
            note = f"not refreshed just now ({why}); showing what was last read"
            return await self._change(record, lambda r: setattr(r.session, "phase_detail", note))
        operations = detail.get("operations")
        return await self._upsert(client, detail, operations if isinstance(operations, list) else [])

    async def _change(self, record: SessionRecord, mutate: Any, messages: list[Message] | None = None) -> SessionRecord:
        try:
            return (await self.store.update(record.session.id, mutate, [] if messages is None else messages))[0]
        except KeyError:  # deleted meanwhile
            return record

    @staticmethod
    def _fail(r: SessionRecord, reason: str) -> list[EventSpec]:
        s = r.session
        if s.status not in LIVE_STATUSES or s.close_reason == CLOSED_HERE:
            return []
        s.status, s.failure_reason, s.finished_at = "failed", reason, now()
        return [("session.failed", {"reason": reason}), ("status", {"status": "failed"})]

    async def _upsert(self, client: HttpDialect, row: dict[str, Any], operations: list[dict[str, Any]] | None = None) -> SessionRecord:
        sid = local_id(client.remote.name, str(row["id"]))
        record = await self.store.get(sid)
        if record is None:
            record = self._new(client, row)
            created = {"driver": "remote", "agent": "remote", "title": None, "mirror": client.remote.name}
            await self.store.insert(record, [("session.created", created), *self._apply(record, row, [], [])])
            if not operations:
                return record
        trial = record.model_copy(deep=True)
        self._apply(trial, row, operations or [], [])
        if trial == record:
            return record  # nothing new: no write
        messages: list[Message] = []
        return await self._change(record, lambda r: self._apply(r, row, operations or [], messages), messages)

    def _new(self, client: HttpDialect, row: dict[str, Any]) -> SessionRecord:
        remote, rid = client.remote, str(row["id"])
        started = _time(row.get("started_at")) or now()
        session = Session(
            id=local_id(remote.name, rid),
            tags=list(dict.fromkeys([remote.name, remote.dialect])),
            driver="remote",
            agent="remote",
            status="busy",
            phase="ready",
            created_at=started,
            started_at=started,
            last_activity_at=started,
            idle_timeout_s=0,
            command_timeout_s=self.settings.command_timeout_s,
            sandbox={"remote": remote.name, "dialect": remote.dialect, "url": remote.url, "remote_session_id": rid, "read_only": True},
            owner=remote.options.get("owner"),
        )
        mirror = {"remote": remote.name, "dialect": remote.dialect, "id": rid, "operations": 0}
        return SessionRecord(session=session, agent_options={MIRROR: mirror})

    @staticmethod
    def _apply(r: SessionRecord, row: dict[str, Any], operations: list[dict[str, Any]], messages: list[Message]) -> list[EventSpec]:
        """Lay the platform's view of a session (a list row or the detail) over its record, add the operations
        not stored yet to `messages`; the events of a change of status."""
        s, m = r.session, r.agent_options[MIRROR]
        if s.close_reason == CLOSED_HERE:
            return []
        workflow, phase = row.get("workflow_name") or row.get("workflow_id"), row.get("phase_display") or row.get("phase_id")
        s.title = " / ".join(str(p) for p in (workflow, phase) if p) or s.title
        s.model = row.get("agent_model") or s.model
        s.workspace = row.get("workspace_path") or s.workspace
        s.usage = _usage(row, s.usage)
        s.started_at = _time(row.get("started_at")) or s.started_at
        for op in operations[m["operations"] :]:
            found = _content(op)
            if found is None:
                continue
            role, content = found
            if role == "user":
                s.turns += 1
                s.preview = s.preview or content[0].text[:200]  # type: ignore[union-attr]
            elif role == "assistant" and isinstance(content[0], TextBlock):
                s.last_response, s.output_preview = content, content[0].text[-500:]
            messages.append(Message(role=role, content=content, turn=s.turns, created_at=_time(op.get("timestamp")) or now()))  # type: ignore[arg-type]
        m["operations"] = max(m["operations"], len(operations))
        s.metadata = {
            **{k: row[k] for k in METADATA if isinstance(row.get(k), str)},
            **{k: v for k, v in s.metadata.items() if k not in METADATA},
            "remote_status": str(row.get("status")),
            "operations": m["operations"],
        }
        finished = _time(row.get("completed_at"))
        times = [t for t in (s.started_at, finished, *(msg.created_at for msg in messages)) if t is not None]
        s.last_activity_at = max([s.last_activity_at, *times])
        s.phase_detail = None
        status, reason = _status(row, m["dialect"])
        if status == s.status:
            if status == "failed" and row.get("error_message"):
                s.failure_reason = reason
            return []
        s.status, s.finished_at = status, (finished or now()) if status != "busy" else None
        events: list[EventSpec] = []
        if status == "failed":
            s.failure_reason = reason
            events.append(("session.failed", {"reason": reason}))
        elif status == "dead":
            s.close_reason = reason
            events.append(("session.closed", {"reason": reason}))
        return [*events, ("status", {"status": status})]
