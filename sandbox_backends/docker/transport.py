"""The attach socket of a `docker exec` as the control client's transport.

Separate from the driver because it is the only part of the control connection that knows Docker: the
control client (`sandbox_backends.control.client`) frames requests over whatever `Transport` it is given.
"""

from __future__ import annotations

import socket
import ssl
import struct

import anyio
import docker

from ..base import SandboxError

RECV_SIZE = 1 << 20
MAX_PIECES = 64
"""Pieces of docker's multiplexing unwrapped per `receive_into` (each has its own 8-byte header)."""


def open_exec(api: docker.APIClient, cid: str, cmd: list[str], workdir: str) -> ExecSocket:
    """Start `cmd` in the container with stdin, stdout and stderr attached (blocking: call it in a worker thread)."""
    ex = api.exec_create(cid, cmd, stdin=True, stdout=True, stderr=True, tty=False, workdir=workdir)
    sock = api.exec_start(ex["Id"], socket=True)
    raw = getattr(sock, "_sock", sock)
    if isinstance(raw, ssl.SSLSocket) or not isinstance(raw, socket.socket):
        raise SandboxError("The docker driver needs a unix:// or tcp:// engine address (not TLS or ssh).")
    # Take the file descriptor away from the SDK's objects so nothing but us ever closes it.
    return ExecSocket(socket.socket(fileno=raw.detach()), ex["Id"])


class ExecSocket:
    """The attach socket of a `docker exec` as a control shell's `Transport`.

    The socket is non-blocking and used directly: a request that fits in the socket buffer (all but
    file writes) goes out in one `send` without a trip through the event loop, which an anyio stream
    takes on every send (0.1-0.25 ms of a 1 ms round trip here).
    """

    def __init__(self, sock: socket.socket, exec_id: str) -> None:
        sock.setblocking(False)
        self.exec_id = exec_id
        self._sock = sock
        self._raw = bytearray()
        self._err = bytearray()

    @property
    def stderr(self) -> str:
        return self._err.decode("utf-8", errors="replace")

    def send_nowait(self, data: memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def wait_writable(self) -> None:
        await anyio.wait_writable(self._sock)

    async def receive_into(self, out: bytearray) -> int:
        """Unwrap docker's stream multiplexing (stream, 0, 0, 0, size, then that many bytes) into `out`,
        reading the socket only when no whole piece is buffered, and at most `MAX_PIECES` pieces a call:
        a peer writing one byte at a time makes a piece per byte, and unwrapping a megabyte of those at
        once would hold the event loop for 40 ms. Returns the bytes read from the socket; EOF ends the
        connection."""
        raw = self._raw
        got = 0
        if not self._whole_piece():
            while True:
                try:
                    chunk = self._sock.recv(RECV_SIZE)
                except BlockingIOError:
                    await anyio.wait_readable(self._sock)
                    continue
                if not chunk:
                    raise anyio.ClosedResourceError("end of stream")
                break
            raw += chunk
            got = len(chunk)
        for _ in range(MAX_PIECES):
            if not self._whole_piece():
                break
            size = struct.unpack(">I", raw[4:8])[0]
            if raw[0] == 2:
                self._err += raw[8 : 8 + size]
                del self._err[:-4096]
            else:
                out += raw[8 : 8 + size]
            del raw[: 8 + size]
        return got

    def _whole_piece(self) -> bool:
        raw = self._raw
        return len(raw) >= 8 and len(raw) >= 8 + struct.unpack(">I", raw[4:8])[0]

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            anyio.notify_closing(self._sock)  # wakes a task waiting on it with ClosedResourceError
            self._sock.close()
