"""Sessions that run elsewhere, mirrored into the store so that every surface shows them.

Some drivers can show sessions that someone else runs and lets others only read (a platform's own workflows, such
as Syntropic137's): they are `MirrorSource`s (sandbox_backends/base.py). This server cannot create, message or
interrupt those sessions, but it shows them next to its own: for each source of each such driver, `Mirror` reads
the source's session list once at start and then every `poll_s` seconds, and writes one record per session
through the store's public API. list_sessions with its filters and pagination, the REST API and the CLI then show
them like any other session. get_session first refreshes a mirrored session from the source, so its usage and
messages are current.

A mirrored record has the id `ses_` + a hash of (source, key), so every poll, process and restart finds the same
one; the driver's name as its driver and the agent its plugin names (the platform's own); the tags: the source's
name and its tags; `sandbox`: the source's description with `remote_session_id` and `read_only: true`;
status (moved by the lifecycle), reasons, usage (each figure only grows), title and messages as the source
reports them. One that vanished from the source while live turns failed, saying so. Closing one marks it closed here (dead, "closed") without calling the source; the
mirror then leaves it alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import anyio
from pydantic import TypeAdapter

from sandbox_backends.base import (
    Driver,
    ForeignSession,
    MirroredSource,
    MirrorSource,
    SandboxError,
    SandboxNotFound,
)

from . import lifecycle
from .errors import StoreError
from .models import LIVE_STATUSES, ContentBlock, Message, Session, SessionRecord, TextBlock, Usage, now
from .settings import Settings
from .store import EventSpec, Store

log = logging.getLogger(__name__)

MIRROR = "mirror"
"""The agent_options key of a mirrored record: {source, key, messages (how many of the source's are stored),
read_only (the source's `read_only_reason`)}."""
CLOSED_HERE = "closed"
REFRESH_TIMEOUT_S = 10.0

_blocks = TypeAdapter(list[ContentBlock])


def _state(record: SessionRecord) -> dict[str, Any] | None:
    """The record's mirror state. A record mirrored before sources were generic holds {remote, dialect, id,
    operations}: it reads as {source (its first tag, which always was the source's name), key}, with the
    messages stored not yet counted (None) until `_adopt`."""
    m = record.agent_options.get(MIRROR)
    if m is None or "source" in m:
        return m
    return {"source": record.session.tags[0], "key": m.get("id"), "messages": None, "read_only": None}


def read_only(record: SessionRecord) -> str | None:
    """Why a caller cannot drive this session (it mirrors one run elsewhere), or None."""
    m = _state(record)
    if m is None:
        return None
    reason = m["read_only"] or "Session {session} mirrors session {key}, run elsewhere: it can only be read here."
    return reason.replace("{session}", record.session.id).replace("{key}", str(m["key"]))


def _grown(usage: Usage, seen: dict[str, Any]) -> Usage:
    """The usage with what a source reports now. Each figure only grows: usage is cumulative, and a source may
    report less in one view than in another (a detail that zeroes what its list showed)."""
    was = usage.model_dump()
    grown = {key: max(was[key], value) for key, value in seen.items() if key != "cost_by_model" and key in was}
    if isinstance(by_model := seen.get("cost_by_model"), dict):
        old = was["cost_by_model"]
        grown["cost_by_model"] = {**old, **{m: max(old.get(m, 0.0), c) for m, c in by_model.items()}}
    return Usage.model_validate({**was, **grown})


def local_id(source: str, key: str) -> str:
    return "ses_" + hashlib.sha256(f"{source}/{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class MirrorDriver:
    """A driver made for the mirror (which closes it), and the agent its mirrored sessions show: the platform's own."""

    driver: Driver
    agent: str


@dataclass(frozen=True)
class _Source:
    """One followed source and the driver that reads it."""

    driver: str
    agent: str
    reader: MirrorSource
    info: MirroredSource

    @property
    def label(self) -> str:
        return f"'{self.info.name}' ({self.driver} driver)"


class Mirror:
    """Follows every source of the `MirrorSource` drivers among those it is given, and closes all of them at the
    end. Open with `Mirror.running(...)`."""

    def __init__(self, store: Store, settings: Settings, drivers: list[MirrorDriver]) -> None:
        self.store = store
        self.settings = settings
        self._sources: dict[tuple[str, str], _Source] = {}
        """(driver name, source name) -> the source."""
        self._explained: set[str] = set()
        for made in drivers:
            driver = made.driver
            if isinstance(driver, MirrorSource):
                for info in driver.mirrored_sources():
                    self._sources[(driver.name, info.name)] = _Source(driver.name, made.agent, driver, info)

    @classmethod
    @asynccontextmanager
    async def running(cls, store: Store, settings: Settings, drivers: list[MirrorDriver]) -> AsyncIterator[Mirror]:
        try:
            mirror = cls(store, settings, drivers)
            async with anyio.create_task_group() as tg:
                for source in mirror._sources.values():
                    tg.start_soon(mirror._follow, source)
                yield mirror
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for made in drivers:
                    await made.driver.aclose()

    async def _follow(self, source: _Source) -> None:
        interval = source.info.poll_s
        failing: str | None = None
        while True:
            try:
                await self.poll(source)
                if failing:
                    log.warning("mirroring the sessions of %s again", source.label)
                failing = None
            except (SandboxError, StoreError) as e:
                if str(e) != failing:
                    log.warning("cannot mirror the sessions of %s (trying again every %g s): %s", source.label, interval, e)
                failing = str(e)
            except Exception:
                log.exception("mirroring the sessions of %s failed", source.label)
            await anyio.sleep(interval)

    async def poll(self, source: _Source) -> None:
        """Read the source's session list and store what changed; live mirrored sessions the list no longer shows
        are refreshed one by one (so one that vanished fails)."""
        listed: set[str] = set()
        async for page in source.reader.list_mirrored(source.info.name):
            for foreign in page:
                listed.add(foreign.key)
                await self._upsert(source, await self._explained_failure(source, foreign))
        for record in await self.store.with_status(LIVE_STATUSES):
            m = _state(record)
            if m and record.session.driver == source.driver and m["source"] == source.info.name and m["key"] not in listed:
                await self.refresh(record)

    async def _explained_failure(self, source: _Source, foreign: ForeignSession) -> ForeignSession:
        """A failed session the list gives no reason for, read whole once per process: the reason is in there."""
        sid = local_id(source.info.name, foreign.key)
        if foreign.status != "failed" or foreign.reason is not None or sid in self._explained:
            return foreign
        self._explained.add(sid)
        try:
            with anyio.fail_after(REFRESH_TIMEOUT_S):
                return await source.reader.get_mirrored(source.info.name, foreign.key)
        except (SandboxError, TimeoutError):
            return foreign  # stored without the reason; the next process asks again

    async def refresh(self, record: SessionRecord) -> SessionRecord:
        """A mirrored session brought up to date from its source (with its messages); others as they are. A source
        that cannot answer leaves the stored copy, with `phase_detail` saying why."""
        m = _state(record)
        source = self._sources.get((record.session.driver, m["source"])) if m else None
        if m is None or source is None or record.session.close_reason == CLOSED_HERE:
            return record
        try:
            with anyio.fail_after(REFRESH_TIMEOUT_S):
                foreign = await source.reader.get_mirrored(source.info.name, m["key"])
        except SandboxNotFound as e:
            reason = str(e)
            return await self._change(record, lambda r: lifecycle.fail(r, reason))
        except (SandboxError, TimeoutError) as e:
            why = str(e) or f"no answer from {source.label} in {REFRESH_TIMEOUT_S:g} s"
            note = f"not refreshed just now ({why}); showing what was last read"
            return await self._change(record, lambda r: setattr(r.session, "phase_detail", note))
        return await self._upsert(source, foreign)

    async def _change(self, record: SessionRecord, mutate: Any, messages: list[Message] | None = None) -> SessionRecord:
        try:
            return (await self.store.update(record.session.id, mutate, [] if messages is None else messages))[0]
        except KeyError:  # deleted meanwhile
            return record

    async def _upsert(self, source: _Source, foreign: ForeignSession) -> SessionRecord:
        record = await self.store.get(local_id(source.info.name, foreign.key))
        if record is None:
            record = self._new(source, foreign)
            created = {"driver": source.driver, "agent": source.agent, "title": None, "mirror": source.info.name}
            listed = replace(foreign, messages=None)  # the store adds messages only to a record it has
            await self.store.insert(record, [("session.created", created), *self._apply(record, listed, [])])
            if not foreign.messages:
                return record
        elif (m := _state(record)) is not None and m["messages"] is None:
            record = await self._adopt(record, source)
        trial = record.model_copy(deep=True)
        self._apply(trial, foreign, [])
        if trial == record:
            return record  # nothing new: no write
        messages: list[Message] = []
        return await self._change(record, lambda r: self._apply(r, foreign, messages), messages)

    async def _adopt(self, record: SessionRecord, source: _Source) -> SessionRecord:
        """A record mirrored before sources were generic, in today's shape. It counted the platform's operations,
        some of which are no message, so the messages it stored are counted instead."""
        count = len(await self.store.messages(record.session.id))
        state = {**(_state(record) or {}), "messages": count, "read_only": source.info.read_only_reason}
        return await self._change(record, lambda r: r.agent_options.update({MIRROR: state}))

    def _new(self, source: _Source, foreign: ForeignSession) -> SessionRecord:
        info = source.info
        started = foreign.started_at or now()
        session = Session(
            id=local_id(info.name, foreign.key),
            tags=list(dict.fromkeys([info.name, *info.tags])),
            driver=source.driver,
            agent=source.agent,
            status="busy",
            phase="ready",
            created_at=started,
            started_at=started,
            last_activity_at=started,
            idle_timeout_s=0,
            command_timeout_s=self.settings.command_timeout_s,
            sandbox={**info.describe, "remote_session_id": foreign.key, "read_only": True},
            owner=info.owner,
        )
        state = {"source": info.name, "key": foreign.key, "messages": 0, "read_only": info.read_only_reason}
        return SessionRecord(session=session, agent_options={MIRROR: state})

    @staticmethod
    def _apply(r: SessionRecord, foreign: ForeignSession, messages: list[Message]) -> list[EventSpec]:
        """Lay the source's view of a session over its record, add its messages not stored yet to `messages`;
        the events of a change of status."""
        s, m = r.session, r.agent_options[MIRROR]
        if s.close_reason == CLOSED_HERE:
            return []
        s.title = foreign.title or s.title
        s.model = foreign.model or s.model
        s.workspace = foreign.workspace or s.workspace
        s.usage = _grown(s.usage, foreign.usage)
        s.started_at = foreign.started_at or s.started_at
        for said in (foreign.messages or [])[m["messages"] :]:
            content = _blocks.validate_python(said.content)
            text = next((b.text for b in content if isinstance(b, TextBlock)), "")
            if said.role == "user":
                s.turns += 1
                s.preview = s.preview or text[:200]
            elif said.role == "assistant" and content and isinstance(content[0], TextBlock):
                s.last_response, s.output_preview = content, text[-500:]
            messages.append(Message(role=said.role, content=content, turn=s.turns, created_at=said.created_at or now()))
        m["messages"] = max(m["messages"], len(foreign.messages or []))
        s.metadata = {**s.metadata, **foreign.metadata}
        times = [t for t in (s.started_at, foreign.finished_at, *(msg.created_at for msg in messages)) if t is not None]
        s.last_activity_at = max([s.last_activity_at, *times])
        s.phase_detail = None
        return lifecycle.mirror_status(r, foreign.status, foreign.reason, foreign.finished_at)
