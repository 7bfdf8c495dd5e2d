"""Resuming MCP streams over HTTP: each session's SSE events kept a while in memory, so that a client whose
stream drops in the middle of a call reconnects with `Last-Event-ID` and gets what it missed, the reply
included (streamable HTTP, handshake era; the SDK's client does this by itself).

The SDK shares one event store among all sessions and names a stream by the id of the request it answers,
which every session reuses, so each session gets its own view here (`SessionEvents`, handed to it by
`sdk.event_store_per_session`): a session can replay only its own streams.

Bounds (the oldest events go first):
- per stream (one request's response stream, or a session's GET stream): the last 100 events and 8 MiB,
  the newest event always kept;
- in all: 10,000 events and 64 MiB; a stream whose events are all gone is forgotten.
An event id names its stream, so a client that resumes after an event already dropped still gets the rest
of its stream (it misses some progress notifications, never the reply, which comes last).
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import mcp_types as types
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId

PER_STREAM_EVENTS = 100
PER_STREAM_BYTES = 8 << 20
TOTAL_EVENTS = 10_000
TOTAL_BYTES = 64 << 20
RETRY_MS = 1000
"""The `retry` the priming event of each stream carries: how long a client waits before it reconnects."""

StreamKey = tuple[str, StreamId]
"""(MCP session id, the SDK's stream id)."""


@dataclass
class _Stream:
    key: StreamKey
    number: int
    events: deque[tuple[int, str | None]] = field(default_factory=deque)
    """(event number, the message as JSON; None for the priming event, which has no message)."""
    size: int = 0


@dataclass
class EventBuffer:
    """Every session's SSE events, within the bounds in the module docstring."""

    per_stream_events: int = PER_STREAM_EVENTS
    per_stream_bytes: int = PER_STREAM_BYTES
    total_events: int = TOTAL_EVENTS
    total_bytes: int = TOTAL_BYTES
    _streams: dict[StreamKey, _Stream] = field(default_factory=dict)
    _numbered: dict[int, _Stream] = field(default_factory=dict)
    _order: deque[tuple[_Stream, int]] = field(default_factory=deque)
    """Every event kept, oldest first (entries already dropped by their stream's bound are skipped)."""
    _bytes: int = 0
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _sessions: weakref.WeakValueDictionary[str, SessionEvents] = field(default_factory=weakref.WeakValueDictionary)
    """The sessions open now (a session's view goes with its transport, when the session ends)."""

    def view(self, session: str) -> SessionEvents:
        """The event store of a new session."""
        events = self._sessions[session] = SessionEvents(self, session)
        return events

    def knows_session(self, session: str) -> bool:
        return session in self._sessions

    def store(self, key: StreamKey, message: types.JSONRPCMessage | None) -> EventId:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(key, next(self._numbers))
            self._numbered[stream.number] = stream
        number = next(self._numbers)
        data = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        stream.events.append((number, data))
        stream.size += len(data or "")
        self._bytes += len(data or "")
        self._order.append((stream, number))
        while len(stream.events) > 1 and (len(stream.events) > self.per_stream_events or stream.size > self.per_stream_bytes):
            self._drop_oldest(stream)
        while self._order and (len(self._order) > self.total_events or self._bytes > self.total_bytes):
            oldest, oldest_number = self._order.popleft()
            if oldest.events and oldest.events[0][0] == oldest_number:
                self._drop_oldest(oldest)
        return f"{stream.number}-{number}"

    def _drop_oldest(self, stream: _Stream) -> None:
        _, data = stream.events.popleft()
        stream.size -= len(data or "")
        self._bytes -= len(data or "")
        if not stream.events:
            del self._streams[stream.key]
            del self._numbered[stream.number]

    def stream_of(self, session: str, event_id: str) -> _Stream | None:
        """The stream of `session` that `event_id` belongs to, if it is still kept."""
        stream_number, dash, number = event_id.partition("-")
        if not (dash and stream_number.isdigit() and number.isdigit()):
            return None
        stream = self._numbered.get(int(stream_number))
        return stream if stream is not None and stream.key[0] == session else None

    async def replay(self, session: str, event_id: str, send: EventCallback) -> StreamId | None:
        stream = self.stream_of(session, event_id)
        if stream is None:
            return None
        after = int(event_id.partition("-")[2])
        for number, data in list(stream.events):  # a copy: events stored while sending are live, not replayed
            if number > after and data is not None:
                message = types.jsonrpc_message_adapter.validate_json(data, by_name=False)
                await send(EventMessage(message, f"{stream.number}-{number}"))
        return stream.key[1]


class SessionEvents(EventStore):
    """One MCP session's view of the buffer: it stores and replays that session's streams only."""

    def __init__(self, buffer: EventBuffer, session: str) -> None:
        self.buffer, self.session = buffer, session

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        return self.buffer.store((self.session, stream_id), message)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        return await self.buffer.replay(self.session, last_event_id, send_callback)
