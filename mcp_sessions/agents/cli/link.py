"""A CLI process joined to its agent: its stdin and stdout are one byte stream to the server, carrying JSON lines.

The agent launches the process in the sandbox with a small bash wrapper that connects to the session's
door (`Door`, served through `streams.serve`), says the nonce it was given, then execs the CLI with that
connection as its stdin and stdout. So the process outlives turns with no command of the sandbox's shell
held open, and no host socket or network is needed in the sandbox. If the server goes away the
connection ends, the CLI reads the end of its input and exits; the next server launches it again, resuming
its conversation from its state folder.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

MAX_LINE_BYTES = 64 << 20
NONCE_WAIT_S = 10.0


class LinkClosed(Exception):
    """The CLI process's stream ended: the process exited (or its sandbox stopped)."""


class Link:
    """JSON lines to and from one CLI process. `close()` ends the connection, and with it the process."""

    def __init__(self, stream: ByteStream, buffer: bytes = b"") -> None:
        self._stream = stream
        self._buf = bytearray(buffer)
        self.closed = anyio.Event()
        self._send_lock = anyio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                await self.close()
                raise LinkClosed("the CLI process has exited") from e

    async def receive(self) -> dict[str, Any]:
        """The next JSON object the process prints (lines that are not one are skipped). Raises LinkClosed."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    return message
                continue
            if len(self._buf) > MAX_LINE_BYTES:
                await self.close()
                raise LinkClosed(f"the CLI process printed a line over {MAX_LINE_BYTES} bytes")
            try:
                self._buf += await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                await self.close()
                raise LinkClosed("the CLI process has exited") from e

    async def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()


class Door:
    """Where a session's CLI processes connect. Only a process that says a nonce the agent handed out is
    taken; any other connection is closed."""

    def __init__(self) -> None:
        self._waiting: dict[str, MemoryObjectSendStream[Link]] = {}

    def expect(self) -> tuple[str, MemoryObjectReceiveStream[Link]]:
        """A new nonce, and where the link of the process that says it will arrive."""
        nonce = secrets.token_hex(16)
        send, receive = anyio.create_memory_object_stream[Link](1)
        self._waiting[nonce] = send
        return nonce, receive

    def forget(self, nonce: str) -> None:
        self._waiting.pop(nonce, None)

    async def handle(self, stream: ByteStream) -> None:
        """Serve one connection: read the nonce, hand the link over, hold the connection until it is closed."""
        buffer = bytearray()
        with anyio.move_on_after(NONCE_WAIT_S):
            while b"\n" not in buffer and len(buffer) < 200:
                try:
                    buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
        nonce, _, rest = bytes(buffer).partition(b"\n")
        waiting = self._waiting.pop(nonce.decode("ascii", "replace"), None) if _ else None
        if waiting is None:
            await stream.aclose()
            return
        link = Link(stream, rest)
        try:
            waiting.send_nowait(link)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await link.close()
            return
        finally:
            waiting.close()
        await link.closed.wait()
