"""Byte streams through a control shell: TCP connections to and from 127.0.0.1 inside a sandbox.

A sandbox has no network interface, so the server reaches a port inside (a preview of a web server,
say) and a process inside reaches the server (a proxy it serves there) only through the channel it
already has into the sandbox: the control shell, which opens the connection or listens in there and
relays the bytes as frames (the protocol is in this package's docstring). One mechanism for every
runtime the control shell runs under, and no socket of the host's in the sandbox.

The streams of a sandbox get a control connection of their own (`Streams`), opened when first needed,
so that a busy stream is paced apart from the commands (`pacing`), and a control shell that breaks the
protocol on a stream costs the streams, not the command running. Each stream is flow-controlled both
ways with a window (`frames.STREAM_WINDOW`): what a sandbox sends and the server's side has not read
waits in the sandbox, not in the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from ..base import PortClosed, SandboxError, SandboxNotFound, StreamHandler
from .client import Broken, ControlClient, Lost, _InFlight
from .frames import MAX_STREAMS, STREAM_CHUNK, STREAM_WINDOW

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""The longest a connection inside may take to open (on loopback it is at once, unless its listener's
backlog is full)."""
RELISTEN_TRIES = 3
"""Lost connections in a row a listener lives through (it listens again on the same port each time); a
control shell that broke the protocol counts for good, so one that does it again and again is given up."""


class ControlStream(anyio.abc.ByteStream):
    """One TCP connection inside the sandbox, as an anyio byte stream in the server.

    Reading it acknowledges what was read, which lets the control shell send more; writing waits while
    the control shell has acknowledged too little of what was sent. `send_eof` half-closes the
    connection inside (its peer reads end of file); `aclose` ends it."""

    def __init__(self, conn: ControlClient, sid: str, entry: _InFlight, on_close: Callable[[], None]) -> None:
        self._conn = conn
        self._sid = sid
        self._entry = entry
        self._on_close = on_close
        self._buf = memoryview(b"")
        self._unacked = 0
        self._eof = False
        self._shut = False
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        while not self._buf:
            if self._eof:
                raise anyio.EndOfStream
            try:
                kind, item = await self._conn.next(self._sid)
            except Lost as e:
                raise anyio.BrokenResourceError(f"the sandbox's connection ended: {e}") from None
            if kind == "S":
                self._buf = memoryview(item)
            elif "error" in item:
                self._eof = True
                raise anyio.BrokenResourceError(
                    f"the connection inside the sandbox failed: {item.get('message') or item['error']}"
                )
            elif item.get("ev") in ("eof", "closed"):
                self._eof = True
        data = bytes(self._buf[:max_bytes])
        self._buf = self._buf[len(data) :]
        self._unacked += len(data)
        if self._unacked >= STREAM_WINDOW // 4 and self._conn.in_flight(self._sid) is not None:
            n, self._unacked = self._unacked, 0
            self._entry.window += n
            await self._request({"op": "sack", "req": self._sid, "n": n})
        return data

    async def send(self, item: bytes) -> None:
        if self._closed or self._shut:
            raise anyio.ClosedResourceError
        view = memoryview(item)
        entry, conn, sid = self._entry, self._conn, self._sid
        while view:
            try:
                await conn.until(lambda: entry.credit > 0 or conn.in_flight(sid) is None)
            except Lost as e:
                raise anyio.BrokenResourceError(f"the sandbox's connection ended: {e}") from None
            if conn.in_flight(sid) is None:
                raise anyio.BrokenResourceError("the connection inside the sandbox was closed")
            n = min(len(view), entry.credit, STREAM_CHUNK)
            entry.credit -= n
            await self._request({"op": "sdata", "req": sid}, bytes(view[:n]))
            view = view[n:]

    async def send_eof(self) -> None:
        if not self._shut and not self._closed:
            self._shut = True
            if self._conn.in_flight(self._sid) is not None:
                await self._request({"op": "shut", "req": self._sid})

    async def _request(self, msg: dict[str, Any], payload: bytes = b"") -> None:
        try:
            await self._conn.send(msg, payload)
        except Lost as e:
            raise anyio.BrokenResourceError(f"the sandbox's connection ended: {e}") from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_close()
        conn = self._conn
        with anyio.CancelScope(shield=True):
            if conn.in_flight(self._sid) is not None and not conn.lost:
                try:
                    await conn.send({"op": "sclose", "req": self._sid})
                except Lost:
                    pass
        conn.close_request(self._sid)


async def handle_stream(handler: StreamHandler, stream: anyio.abc.ByteStream) -> None:
    """Run a served connection's handler and close its stream after; a handler that fails is logged,
    never the listener's end."""
    async with stream:
        try:
            await handler(stream)
        except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError) as e:
            log.debug("a served connection ended: %r", e)
        except Exception:
            log.exception("the handler of a connection served into a sandbox failed")


class Streams:
    """The byte streams of one sandbox, over a control connection of their own, opened when first needed
    (and again after a lost one) by `open_connection`. At most `MAX_STREAMS` are open at once."""

    def __init__(self, open_connection: Callable[[], Awaitable[ControlClient]], name: str) -> None:
        self._open_connection = open_connection
        self._name = name
        self._conn: ControlClient | None = None
        self._lock = anyio.Lock()
        self._open = 0
        self._closed = False

    async def _connection(self) -> ControlClient:
        async with self._lock:
            if self._closed:
                raise SandboxNotFound(f"The sandbox {self._name} is closed.")
            if self._conn is None or self._conn.lost:
                self._conn = await self._open_connection()
            return self._conn

    def _stream(self, conn: ControlClient, sid: str) -> ControlStream:
        entry = conn.in_flight(sid)
        assert entry is not None
        self._open += 1
        return ControlStream(conn, sid, entry, self._closed_one)

    def _closed_one(self) -> None:
        self._open -= 1

    def _check_room(self) -> None:
        if self._open >= MAX_STREAMS:
            raise SandboxError(
                f"The sandbox {self._name} has {MAX_STREAMS} connections open, the most it takes; close some first."
            )

    async def connect(self, port: int) -> ControlStream:
        """A TCP connection to 127.0.0.1:`port` inside. Raises `PortClosed` when nothing listens there."""
        self._check_room()
        conn = await self._connection()
        req = conn.open_request("connect")
        opened = False
        try:
            with anyio.move_on_after(CONNECT_TIMEOUT_S):
                await conn.send({"op": "connect", "req": req, "port": port})
                _kind, msg = await conn.next(req)
                if msg.get("error") == "refused":
                    raise PortClosed(f"Nothing listens on port {port} in the sandbox {self._name}.")
                if msg.get("error"):
                    raise SandboxError(
                        f"Cannot connect to port {port} in the sandbox {self._name}: {msg.get('message') or msg['error']}."
                    )
                opened = True
                return self._stream(conn, req)
            raise SandboxError(
                f"A connection to port {port} in the sandbox {self._name} did not open within {CONNECT_TIMEOUT_S:g} s."
            )
        except Lost as e:
            raise SandboxError(f"Lost the sandbox's connection while connecting to port {port}: {e}") from None
        finally:
            if not opened:
                await self._abandon(conn, req)

    async def serve(
        self, port: int, handler: StreamHandler, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1:`port` inside (0: a free port) and run `handler` on every connection made
        there, until the sandbox closes or this is cancelled. Reports "127.0.0.1:PORT" through
        `task_status`. A lost control connection is survived: it listens on the same port again."""
        tries = broken = RELISTEN_TRIES
        started = False
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    conn = await self._connection()
                except SandboxNotFound:
                    if not started:
                        raise
                    break
                req = conn.open_request("listen")
                try:
                    await conn.send({"op": "listen", "req": req, "port": port})
                    _kind, msg = await conn.next(req)
                    if msg.get("error"):
                        why = f"Cannot listen on port {port} in the sandbox {self._name}: {msg.get('message') or msg['error']}."
                        if not started:
                            raise SandboxError(why)
                        log.warning("%s", why)
                        break
                    if not started:
                        port, started = msg["port"], True
                        task_status.started(f"127.0.0.1:{port}")
                    tries = RELISTEN_TRIES
                    await self._accept(conn, req, handler, tg)
                    break  # the listener ended without the connection: the sandbox is going
                except Lost as e:
                    tries -= 1
                    broken -= isinstance(e, Broken)
                    if self._closed or not started or min(tries, broken) <= 0:
                        if not started:
                            raise SandboxError(f"Lost the sandbox's connection while listening on port {port}: {e}") from None
                        break
                    log.warning("listening again on port %d in %s after a lost connection: %s", port, self._name, e)
                finally:
                    await self._abandon(conn, req)
            tg.cancel_scope.cancel()

    async def _accept(self, conn: ControlClient, req: str, handler: StreamHandler, tg: anyio.abc.TaskGroup) -> None:
        while True:
            _kind, msg = await conn.next(req)
            if msg.get("ev") != "accept":
                return
            sid = msg["sid"]
            if self._open >= MAX_STREAMS:
                await self._abandon(conn, sid)
                continue
            tg.start_soon(handle_stream, handler, self._stream(conn, sid))

    @staticmethod
    async def _abandon(conn: ControlClient, req: str) -> None:
        """Close a stream or listener no one will use, if the control shell still has it."""
        with anyio.CancelScope(shield=True):
            if conn.in_flight(req) is not None and not conn.lost:
                try:
                    await conn.send({"op": "sclose", "req": req})
                except Lost:
                    pass
        conn.close_request(req)

    async def disconnect(self) -> None:
        """End every stream and listener (the control shell closes them when its connection ends); a
        stream asked for later opens a new connection."""
        if self._conn is not None:
            await self._conn.aclose()

    async def aclose(self) -> None:
        """End every stream and listener, for good: the sandbox is closed."""
        self._closed = True
        await self.disconnect()
