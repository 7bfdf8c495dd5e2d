"""A pod's exec websocket as the control client's transport: one long-lived exec of the control shell.

The API server carries `pods/exec` over a websocket whose subprotocol multiplexes the process's streams:
each binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the exit status as a
`Status` JSON, 4 terminal resizes); `v5.channel.k8s.io` adds a close message (255 + channel) for stdin.
The driver asks for v5 and takes v4: it never closes stdin (the control shell ends when the connection
does), so the two are the same to it.

Client libraries do exec as one shot (stdin sent up front, output collected to the end), so the framing
is here, over a socket of our own, for the reason docker's transport has its own: a request that fits
goes out in one `send` without a trip through the event loop. A frame that does not fit whole stays
queued and goes out as the socket drains, from `wait_writable` or from the next `receive_into` (every
request but `done` is followed by a read of its answer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Mapping

import anyio

from ..base import SandboxError, SandboxNotFound

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECV_SIZE = 1 << 20
MAX_SEND = 1 << 20
"""The most of a request put in one websocket message."""
MAX_MESSAGES = 64
"""Messages unwrapped per `receive_into`: a bounded amount of work per call, however the peer chops its stream."""
MAX_MESSAGE = 4 << 20
"""A message larger than this from the API server ends the connection (the control shell's frames are 1 MiB)."""
HANDSHAKE_TIMEOUT_S = 30.0


class ExecRefused(SandboxError):
    """The API server answered the exec request with an error instead of a websocket."""


def exec_url(base_url: str, namespace: str, pod: str, command: list[str], container: str | None) -> str:
    query: list[tuple[str, str]] = [("command", c) for c in command]
    query += [("stdin", "true"), ("stdout", "true"), ("stderr", "true"), ("tty", "false")]
    if container:
        query.append(("container", container))
    path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(pod)}/exec"
    return base_url.rstrip("/") + path + "?" + urllib.parse.urlencode(query)


def connect(url: str, headers: Mapping[str, str], ssl_context: ssl.SSLContext | None) -> ExecWebSocket:
    """Open the exec websocket (blocking: call it in a worker thread). Raises `SandboxNotFound` for a pod that
    is gone, `ExecRefused` with the API server's words for any other refusal."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            sock = (ssl_context or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + ("?" + parts.query if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {', '.join(PROTOCOLS)}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = _read_head(sock)
        status_line, _, header_text = head.partition("\r\n")
        code = int(status_line.split(" ", 2)[1]) if status_line.count(" ") >= 1 else 0
        answer = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_text.split("\r\n") if h)}
        if code != 101:
            raise _refusal(code, rest + _read_body(sock, answer, len(rest)))
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        if answer.get("sec-websocket-accept") != accept:
            raise ExecRefused("The API server's exec answer is not a websocket handshake for this request.")
        protocol = answer.get("sec-websocket-protocol", "")
        if protocol not in PROTOCOLS:
            raise ExecRefused(f"The API server offers exec over {protocol or 'no subprotocol'!r}, not {' or '.join(PROTOCOLS)}.")
    except BaseException:
        sock.close()
        raise
    return ExecWebSocket(sock, protocol, rest)


def _read_head(sock: socket.socket) -> tuple[str, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk or len(buf) > 65536:
            raise ExecRefused("The API server closed the exec connection before answering.")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def _read_body(sock: socket.socket, headers: dict[str, str], have: int) -> bytes:
    want = int(headers.get("content-length") or 0)
    body = b""
    while have + len(body) < min(want, 65536):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def _refusal(code: int, body: bytes) -> SandboxError:
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", errors="replace").strip()[:300]
    if code == 404:
        return SandboxNotFound(f"The sandbox's pod is gone: {message or 'not found'}.")
    if code in (401, 403):
        return ExecRefused(
            f"The API server refused to exec into the sandbox's pod ({code}): {message}. The server's account needs "
            "`create` on pods/exec in the namespace."
        )
    return ExecRefused(f"The API server refused to exec into the sandbox's pod ({code}): {message or 'no reason given'}.")


def _mask(data: bytes | memoryview, key: bytes) -> bytes:
    """XOR `data` with the repeated 4-byte key, as every client frame must be (in C, through big integers)."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes | memoryview) -> bytes:
    """One masked client frame (FIN set)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ExecWebSocket:
    """The control shell's stdin and stdout over an exec websocket, as a `Transport`; stderr's tail and the exit
    status (channel 3) are kept for error messages."""

    def __init__(self, sock: socket.socket, subprotocol: str, early: bytes = b"") -> None:
        sock.setblocking(False)
        self.subprotocol = subprotocol
        self.status: dict[str, object] | None = None
        self._sock = sock
        self._raw = bytearray(early)
        self._message = bytearray()
        self._queued = b""
        self._err = bytearray()
        self._closed_by_peer = False

    @property
    def stderr(self) -> str:
        text = self._err.decode("utf-8", errors="replace")
        if self.status and self.status.get("status") == "Failure":
            text += f"\n{self.status.get('message') or self.status.get('reason')}"
        return text

    # -- sending --------------------------------------------------------------------------------

    def _send(self, data: bytes) -> int:
        try:
            return self._sock.send(data)
        except WOULD_BLOCK:
            return 0

    def _flush(self) -> None:
        if self._queued:
            sent = self._send(self._queued)
            self._queued = self._queued[sent:]

    def send_nowait(self, data: memoryview) -> int:
        self._flush()
        if self._queued:
            return 0
        chunk = data[:MAX_SEND]
        out = frame(0x2, b"\x00" + bytes(chunk))
        sent = self._send(out)
        if sent == 0:
            return 0  # nothing of the frame went: nothing was taken
        self._queued = out[sent:]
        return len(chunk)

    async def wait_writable(self) -> None:
        while True:
            await anyio.wait_writable(self._sock)
            self._flush()
            if not self._queued:
                return

    # -- receiving ------------------------------------------------------------------------------

    async def receive_into(self, out: bytearray) -> int:
        """Unwrap at most `MAX_MESSAGES` websocket frames into `out` (stdout only), reading the socket when no
        whole frame is buffered. Returns the bytes read off the socket; the end of the stream (or the API
        server's close) ends the connection."""
        got = 0
        if not self._whole_frame():
            if self._closed_by_peer:
                raise anyio.ClosedResourceError("the exec stream ended")
            while True:
                self._flush()
                try:
                    chunk = self._sock.recv(RECV_SIZE)
                except WOULD_BLOCK:
                    await self._wait_readable()
                    continue
                if not chunk:
                    raise anyio.ClosedResourceError("the exec stream ended")
                break
            self._raw += chunk
            got = len(chunk)
        for _ in range(MAX_MESSAGES):
            parsed = self._next_frame()
            if parsed is None:
                break
            opcode, fin, payload = parsed
            if opcode == 0x8:
                self._closed_by_peer = True
                break
            if opcode == 0x9:
                self._queued += frame(0xA, payload)  # pong, sent with whatever goes next
                self._flush()
                continue
            if opcode in (0x1, 0xA):
                continue
            self._message += payload
            if len(self._message) > MAX_MESSAGE:
                raise OSError(f"the API server sent an exec message over {MAX_MESSAGE} bytes")
            if fin:
                self._deliver(out)
        return got

    async def _wait_readable(self) -> None:
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return
        if not self._queued:
            await anyio.wait_readable(self._sock)
            return
        async with anyio.create_task_group() as tg:  # a queued frame goes out while we wait for the answer

            async def drain() -> None:
                await self.wait_writable()

            async def readable() -> None:
                await anyio.wait_readable(self._sock)
                tg.cancel_scope.cancel()

            tg.start_soon(drain)
            tg.start_soon(readable)

    def _deliver(self, out: bytearray) -> None:
        message, self._message = self._message, bytearray()
        if not message:
            return
        channel, data = message[0], message[1:]
        if channel == 1:
            out += data
        elif channel == 2:
            self._err += data
            del self._err[:-4096]
        elif channel == 3:
            try:
                self.status = json.loads(bytes(data))
            except ValueError:
                self.status = {"status": "Failure", "message": bytes(data[:300]).decode("utf-8", errors="replace")}

    def _whole_frame(self) -> bool:
        return self._frame_size() is not None

    def _frame_size(self) -> tuple[int, int] | None:
        """(header length, payload length) of the first buffered frame, if it is whole."""
        raw = self._raw
        if len(raw) < 2:
            return None
        n = raw[1] & 0x7F
        head = 2
        if n == 126:
            if len(raw) < 4:
                return None
            n, head = struct.unpack("!H", raw[2:4])[0], 4
        elif n == 127:
            if len(raw) < 10:
                return None
            n, head = struct.unpack("!Q", raw[2:10])[0], 10
        if raw[1] & 0x80:
            head += 4  # a server must not mask; tolerated
        return (head, n) if len(raw) >= head + n else None

    def _next_frame(self) -> tuple[int, bool, bytes] | None:
        size = self._frame_size()
        if size is None:
            return None
        head, n = size
        raw = self._raw
        fin, opcode = bool(raw[0] & 0x80), raw[0] & 0x0F
        payload = bytes(raw[head : head + n])
        if raw[1] & 0x80:
            payload = _mask(payload, bytes(raw[head - 4 : head]))
        del raw[: head + n]
        return opcode, fin, payload

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            anyio.notify_closing(self._sock)  # wakes a task waiting on it with ClosedResourceError
            self._sock.close()
