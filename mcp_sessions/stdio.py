"""MCP over stdio with the pipes read and written by the tasks that use them.

The SDK's stdio transport reads each line and writes and flushes each message in a worker thread: three
thread hops per request, two more per notification. MCP hosts start a server with pipes, which can be
non-blocking: here the SDK's receive loop reads the pipe itself, and whoever sends a message writes it,
so a request and its reply cross no task or thread of the transport's own. Anything else on stdin or
stdout (a file, a terminal) is served by the SDK's transport.

While serving, fd 0 reads /dev/null and fd 1 points at stderr, as with the SDK's transport, so a stray
print or a child process cannot write into the protocol stream.

A line that is not a JSON-RPC message is answered here, on either path, as JSON-RPC says (the SDK only
logs it; see jsonrpc.py).
"""

from __future__ import annotations

import collections
import fcntl
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from .jsonrpc import InvalidMessage, parse

READ_CHUNK = 1 << 16

Streams = tuple[ObjectReceiveStream[SessionMessage | Exception], ObjectSendStream[SessionMessage]]


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[Streams]:
    """The server's (read, write) streams over this process's stdin and stdout; lines that are not
    messages are answered with JSON-RPC errors."""
    async with _streams() as (read, write):
        yield AnswersInvalid(read, write), write


@asynccontextmanager
async def _streams() -> AsyncIterator[Streams]:
    if not (_is_pipe(0) and _is_pipe(1)):
        async with stdio_server() as streams:
            yield streams
        return
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    os.set_blocking(wire_in, False)
    os.set_blocking(wire_out, False)
    try:
        yield PipeLines(wire_in), PipeMessages(wire_out)
    finally:
        os.set_blocking(wire_out, True)
        os.dup2(wire_in, 0)
        os.dup2(wire_out, 1)
        os.close(wire_in)
        os.close(wire_out)


class PipeLines(ObjectReceiveStream[SessionMessage | Exception]):
    """The messages read from a non-blocking pipe, one per line: a line that is not a JSON-RPC message
    comes out as the exception, which the SDK answers with a parse error."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no newline: a long message is scanned once
        self._ready: collections.deque[SessionMessage | Exception] = collections.deque()
        self._eof = False
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True

    async def receive(self) -> SessionMessage | Exception:
        while not self._ready:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._eof:
                raise anyio.EndOfStream
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                self._eof = True
            self._split(chunk)
        return self._ready.popleft()

    def _split(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        while (end := buffer.find(b"\n", self._searched)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            self._searched = 0
            if line.strip():
                self._ready.append(_parse(line))
        self._searched = len(buffer)


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(parse(line, "line"))
    except InvalidMessage as e:
        return e


class AnswersInvalid(ObjectReceiveStream[SessionMessage | Exception]):
    """The messages of `read`; what is not a message is answered on `write` with its error, and skipped."""

    def __init__(self, read: ObjectReceiveStream[SessionMessage | Exception], write: ObjectSendStream[SessionMessage]) -> None:
        self._read, self._write = read, write

    async def aclose(self) -> None:
        await self._read.aclose()

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._read.receive()
            if not isinstance(item, Exception):
                return item
            if isinstance(item, InvalidMessage):
                error = item
            elif isinstance(item, ValidationError) and any(e["type"] == "json_invalid" for e in item.errors()):
                error = InvalidMessage(types.PARSE_ERROR, "Parse error: the line is not JSON.")
            else:  # the SDK's own transport (stdin or stdout not a pipe) keeps no line to look at
                error = InvalidMessage(types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message.")
            await self._write.send(SessionMessage(error.reply()))


class PipeMessages(ObjectSendStream[SessionMessage]):
    """Messages written to a non-blocking pipe by the task that sends them, each as one line.

    A message that does not fit in the pipe at once is finished under a lock, which later senders wait
    for, so lines never interleave. If the client has closed its end, messages are dropped."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = anyio.Lock()
        self._gone = False  # the client closed its end: what is left to send is dropped, not an error
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True

    async def send(self, item: SessionMessage) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        line = memoryview((item.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode())
        data = line
        if not self._lock.locked():  # nobody half way through a line: try it in one go
            data = self._write_some(data)
            if not data:
                return
        # Once a line is begun it is finished, even if the sender is cancelled: a line cut short would
        # corrupt the stream.
        with anyio.CancelScope(shield=len(data) < len(line)) as scope:
            async with self._lock:
                while data:
                    await anyio.wait_writable(self._fd)
                    data = self._write_some(data)
                    scope.shield = len(data) < len(line)

    def _write_some(self, data: memoryview) -> memoryview:
        if self._gone:
            return data[:0]
        try:
            return data[os.write(self._fd, data) :]
        except BlockingIOError:
            return data
        except (BrokenPipeError, ConnectionResetError):
            self._gone = True
            return data[:0]
