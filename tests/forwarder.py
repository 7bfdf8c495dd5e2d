"""A byte forwarder between a listener of its own and a real server, which a test can cut.

Put between a client and a real part (a model server over TCP, the Docker engine's unix socket), it lets a
test make that part go away for the client only: `drop` closes the first connections at once, `stop()`
closes every connection and the listener, as if the part had gone. Nothing else about the part changes, so
others using it (the shared Docker engine) are not disturbed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import ByteStream, SocketAttribute

Connect = Callable[[], Awaitable[ByteStream]]


class Forwarder:
    def __init__(self, connect: Connect, drop: int) -> None:
        self._connect = connect
        self._drop = drop
        self.accepted = 0
        """Connections made to the forwarder so far, dropped ones included."""
        self.scope = anyio.CancelScope()

    def stop(self) -> None:
        """Close the listener and every connection: to its clients, the part is gone."""
        self.scope.cancel()

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        with self.scope:
            async with listener:
                await listener.serve(self._forward)

    async def _forward(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with client:
            if self.accepted <= self._drop:
                return  # closed before a byte is read: the caller's request gets no answer
            async with await self._connect() as upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(_pipe, upstream, client, tg.cancel_scope)


async def _pipe(source: ByteStream, sink: ByteStream, both: anyio.CancelScope) -> None:
    """Copy until the end of `source` (then end `sink`'s half); a broken side ends both directions."""
    try:
        async for chunk in source:
            await sink.send(chunk)
        await sink.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        both.cancel()


@asynccontextmanager
async def tcp_forwarder(port: int, drop: int = 0) -> AsyncIterator[tuple[Forwarder, int]]:
    """Forward a new loopback port to `port`; yields the forwarder and its own port."""
    forwarder = Forwarder(lambda: anyio.connect_tcp("127.0.0.1", port), drop)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(forwarder.serve, listener)
        yield forwarder, listener.extra(SocketAttribute.local_port)
        forwarder.stop()


@asynccontextmanager
async def unix_forwarder(path: Path, target: str) -> AsyncIterator[Forwarder]:
    """Forward connections to the unix socket `path` (made here) to the unix socket `target`."""
    forwarder = Forwarder(lambda: anyio.connect_unix(target), 0)
    listener = await anyio.create_unix_listener(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(forwarder.serve, listener)
        yield forwarder
        forwarder.stop()
