"""Egress by allow-list: an HTTP and CONNECT proxy in the server, served into a session's sandbox.

A sandbox has no network interface. A session created with `network={"allow": ["host:port", ...]}`
(each pair within the server's `--egress-allow`) gets a proxy on a port of its own 127.0.0.1, served
there through the sandbox's streams (`OpensStreams.serve_inside`), and `HTTP_PROXY`/`HTTPS_PROXY` (and
lower case) pointing at it. The proxy reads one request head, and connects (resolving the name itself)
only when its host and port are an allowed pair; anything else gets 403. Each connection is a session
event `egress`: host, port, whether it was allowed, bytes each way. What it cannot stop: whatever an
allowed host relays further (a package index is an allowed host, not a filter of packages).

The proxy's port inside is derived from the session id, so it is the same after a server restart, when
the sandbox is attached again and the proxy served anew (the environment the sandbox got at creation
names it). Under the local driver "inside" is the host's loopback, whose network the sandbox has anyway.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from pydantic import BaseModel, ConfigDict, Field

from sandbox_backends.base import OpensStreams, Sandbox, SandboxError

from .errors import InvalidInput
from .models import SessionRecord
from .store import Store

log = logging.getLogger(__name__)

MAX_HEAD = 16 << 10
"""The longest request head the proxy reads before it answers 431."""
CONNECT_TIMEOUT_S = 10.0
PORTS = (20000, 40000)
"""The range the proxy's port inside is taken from (the session id picks one)."""
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


class Network(BaseModel):
    """The `network` create option."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field([], max_length=50)


def pair(text: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" (host lower-cased, IPv6 in brackets), or None if it is not one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.lower().removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/@ \t"):
        return None
    return host, int(port)


def server_allows(setting: str) -> set[tuple[str, int]]:
    """The server's allow-list (`--egress-allow`: pairs separated by commas); a malformed entry is a clear error."""
    allowed = set()
    for entry in filter(None, (e.strip() for e in setting.split(","))):
        parsed = pair(entry)
        if parsed is None:
            raise ValueError(f"--egress-allow entry {entry!r} is not host:port (e.g. pypi.org:443).")
        allowed.add(parsed)
    return allowed


def check_network(network: Network | None, setting: str) -> list[str]:
    """The pairs a new session may reach, as "host:port": each asked for must be in the server's list."""
    if network is None or not network.allow:
        return []
    allowed = server_allows(setting)
    taken = []
    for entry in network.allow:
        parsed = pair(entry)
        if parsed is None:
            raise InvalidInput(f"network.allow entry {entry!r} is not host:port, e.g. 'pypi.org:443'.")
        if parsed not in allowed:
            offered = ", ".join(sorted(f"{h}:{p}" for h, p in allowed)) or "nothing (start it with --egress-allow host:port,...)"
            raise InvalidInput(f"network.allow {entry!r} is not in this server's egress allow-list, which has {offered}.")
        taken.append(f"{parsed[0]}:{parsed[1]}")
    return taken


def proxy_port(session_id: str) -> int:
    low, high = PORTS
    return low + int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:4], "big") % (high - low)


def proxy_env(session_id: str) -> dict[str, str]:
    """What a session with egress gets in its environment; its own loopback stays out of the proxy."""
    url = f"http://127.0.0.1:{proxy_port(session_id)}"
    env = dict.fromkeys(PROXY_VARS, url)
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    return env


class Request:
    """The head of one proxied request: where it goes and what to send there first."""

    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = [*lines[0].split(" "), "", "", ""][:3]
        self.method = method.upper()
        self.connect = self.method == "CONNECT"
        self.forward = b""
        self.where: tuple[str, int] | None = None
        if self.connect:
            self.where = pair(target)
            return
        scheme, _, rest = target.partition("://")
        if scheme.lower() != "http" or not rest:
            return
        authority, slash, path = rest.partition("/")
        self.where = pair(authority if ":" in authority.rpartition("]")[2] else authority + ":80")
        headers = [line for line in lines[1:] if line and not line.lower().startswith(("proxy-", "connection:"))]
        first = f"{method} {slash}{path or ''} {version}" if slash else f"{method} / {version}"
        self.forward = "\r\n".join([first, *headers, "Connection: close", "", ""]).encode("latin-1")


async def read_head(stream: anyio.abc.ByteStream) -> tuple[bytes, bytes] | None:
    """The request head and what came after it, or None if it ended or grew past MAX_HEAD first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None
        try:
            buf += await stream.receive()
        except anyio.EndOfStream:
            return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


async def pump(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, count: list[int], i: int) -> None:
    """Copy until `source` ends, then half-close `sink`; bytes counted in count[i]."""
    try:
        async for chunk in source:
            count[i] += len(chunk)
            await sink.send(chunk)
        await sink.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


def answer(status: str, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


class Egress:
    """Serves the proxy into the sandboxes of sessions that have an allow-list, and records each connection."""

    def __init__(self, store: Store, changed: Callable[[str], None]) -> None:
        self._store = store
        self._changed = changed

    async def start(self, record: SessionRecord, sandbox: Sandbox, tg: anyio.abc.TaskGroup, *, new: bool) -> None:
        """Serve the proxy into the sandbox of a session with an allow-list, until the sandbox closes. One
        that cannot start fails a `new` sandbox's creation with the reason; for a sandbox attached again it
        is logged (its requests then fail to connect), since the session's commands still work."""
        if not record.egress:
            return
        sid = record.session.id
        allowed = {p for p in map(pair, record.egress) if p is not None}

        async def handler(stream: anyio.abc.ByteStream) -> None:
            await self._proxy(sid, allowed, stream)

        try:
            if not isinstance(sandbox, OpensStreams):
                raise SandboxError("its sandbox cannot open connections to and from the server")
            await tg.start(sandbox.serve_inside, proxy_port(sid), handler)
        except SandboxError as e:
            if new:
                raise SandboxError(f"The egress proxy could not start: {e}") from None
            log.warning("the egress proxy of %s could not start: %s", sid, e)

    async def _record(self, sid: str, data: dict[str, Any]) -> None:
        try:
            await self._store.append_events(sid, [("egress", data)])
            self._changed(sid)
        except Exception:
            log.exception("recording an egress connection of %s failed", sid)

    async def _proxy(self, sid: str, allowed: set[tuple[str, int]], client: anyio.abc.ByteStream) -> None:
        got = await read_head(client)
        if got is None:
            await client.send(answer("431 Request Header Fields Too Large", "The request head is too large or cut short."))
            return
        head, rest = got
        request = Request(head)
        if request.where is None:
            await client.send(answer("400 Bad Request", "Send CONNECT host:port, or a request for an absolute http:// URL."))
            return
        host, port = request.where
        event: dict[str, Any] = {"host": host, "port": port, "allowed": request.where in allowed, "bytes_out": 0, "bytes_in": 0}
        if not event["allowed"]:
            await client.send(answer("403 Forbidden", f"{host}:{port} is not in this session's egress allow-list."))
            await self._record(sid, event)
            return
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                upstream = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError) as e:
            event["error"] = f"cannot connect: {e}"
            await client.send(answer("502 Bad Gateway", f"Cannot connect to {host}:{port}: {e}"))
            await self._record(sid, event)
            return
        count = [0, 0]
        async with upstream:
            if request.connect:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                await upstream.send(request.forward)
                count[0] += len(request.forward)
            if rest:
                await upstream.send(rest)
                count[0] += len(rest)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, upstream, count, 0)
                tg.start_soon(pump, upstream, client, count, 1)
        event["bytes_out"], event["bytes_in"] = count
        await self._record(sid, event)
