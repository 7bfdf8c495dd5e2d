"""MCP over stdio with the pipes read and written on the event loop.

The SDK's stdio transport reads each line and writes and flushes each message in a worker thread: three
thread hops per request, two more per notification. MCP hosts start a server with pipes, which can be
non-blocking and polled by the event loop instead. Anything else (a file, a terminal) is served by the
SDK's transport.

While serving, fd 0 reads /dev/null and fd 1 points at stderr, as with the SDK's transport, so a stray
print or a child process cannot write into the protocol stream.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

READ_CHUNK = 1 << 16

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[Streams]:
    """The server's (read, write) streams over this process's stdin and stdout."""
    if not (_is_pipe(0) and _is_pipe(1)):
        async with stdio_server() as streams:
            yield streams  # type: ignore[misc]
        return
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    os.set_blocking(wire_in, False)
    os.set_blocking(wire_out, False)
    incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_lines, wire_in, incoming_send)
            tg.start_soon(_write_messages, wire_out, outgoing_receive)
            yield incoming, outgoing
            tg.cancel_scope.cancel()
    finally:
        os.set_blocking(wire_out, True)
        os.dup2(wire_in, 0)
        os.dup2(wire_out, 1)
        os.close(wire_in)
        os.close(wire_out)


async def _read_lines(fd: int, sink: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    buffer = bytearray()
    searched = 0  # bytes of `buffer` known to hold no newline: a long message is scanned once
    async with sink:
        while True:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                return
            buffer += chunk
            while (end := buffer.find(b"\n", searched)) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                searched = 0
                if line.strip():
                    await sink.send(_parse(line))
            searched = len(buffer)


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except Exception as e:  # the session answers a message it cannot read with a parse error
        return e


async def _write_messages(fd: int, source: MemoryObjectReceiveStream[SessionMessage]) -> None:
    gone = False  # the client closed its end: what is left to send is dropped, not an error
    async with source:
        async for message in source:
            data = memoryview((message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode())
            while data and not gone:
                try:
                    data = data[os.write(fd, data) :]
                except BlockingIOError:
                    await anyio.wait_writable(fd)
                except (BrokenPipeError, ConnectionResetError):
                    gone = True
