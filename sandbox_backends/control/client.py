"""The server's side of the control shell: frames requests out and files the answers under their requests.

Separate from any driver so that each one brings only a byte stream into the sandbox (a `Transport`) and
the command that starts the control shell there (`control_command`); the framing, the request ids and
the distrust of what comes back live here once. The protocol is in this package's docstring.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import marshal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from .runner import NEW_STATE_FILE, PID_FILE, RUNNER, RUNNER_FILE, STATE_COMPLETE, STATE_FILE

CONTROL_MARK = "mcp-sessions-control"
"""The control shell's first argument: the kill sweeps leave processes that carry it alone."""
MAX_FRAME = 64 << 20
"""Largest frame accepted from a control shell (output comes in 1 MiB frames; file reads may raise it)."""
MIN_PYTHON = (3, 8)  # the control shell uses os.posix_spawnp(setsid=...)

CONTROL_PY = (Path(__file__).with_name("program.py")).read_text()
"""The control shell's source (program.py), with placeholders that `build_control_code` fills in."""


def build_control_code(runner: str = RUNNER) -> bytes:
    """The control shell's source, with the runner it installs in the state dir."""
    return (
        CONTROL_PY.replace('"@RUNNER@"', repr(runner))
        .replace('"@PID_FILE@"', repr(PID_FILE))
        .replace('"@STATE_FILE@"', repr(STATE_FILE))
        .replace('"@NEW_STATE_FILE@"', repr(NEW_STATE_FILE))
        .replace('"@STATE_COMPLETE@"', repr(STATE_COMPLETE))
        .replace('"@RUNNER_FILE@"', repr(RUNNER_FILE))
        .encode()
    )


CONTROL_CODE = build_control_code()
CONTROL_BOOT = (
    "import os,sys\n"
    "def rd(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c:sys.exit(0)\n"
    "  b+=c\n"
    " return b\n"
    "m=rd(4);c=rd(int.from_bytes(rd(4),'big'));s=rd(int.from_bytes(rd(4),'big'))\n"
    "if m==sys.modules['_frozen_importlib_external'].MAGIC_NUMBER:\n"
    " import marshal;c=marshal.loads(c)\n"
    "else:c=compile(s,'mcp-sessions-control','exec')\n"
    "exec(c,{'__name__':'__main__'})"
)
"""What the driver starts: it reads the control shell (see `control_boot_input`) from stdin and runs it."""


def control_command(state_dir: str, workspace: str) -> list[str]:
    """The command that starts a control shell keeping its runner's state in `state_dir`, with stdin attached."""
    return ["python3", "-I", "-S", "-c", CONTROL_BOOT, CONTROL_MARK, state_dir, workspace]


@functools.cache
def control_boot_input() -> bytes:
    """What CONTROL_BOOT reads: this Python's bytecode magic, the control shell compiled here, and its source.
    A sandbox whose Python has the same magic runs the compiled code and skips compiling (7-9 ms of a
    cold start); any other compiles the source."""
    compiled = marshal.dumps(compile(CONTROL_CODE, "mcp-sessions-control", "exec"))
    return b"".join(
        (
            importlib.util.MAGIC_NUMBER,
            len(compiled).to_bytes(4, "big"),
            compiled,
            len(CONTROL_CODE).to_bytes(4, "big"),
            CONTROL_CODE,
        )
    )


class Lost(Exception):
    """The control shell's connection ended."""


class Transport(Protocol):
    """A byte stream to one control shell's stdin and from its stdout, as a driver provides it.

    Sending is split in two so that a request that fits goes out in one call without a trip through
    the event loop (0.1-0.25 ms of a 1 ms round trip here); `ControlClient` only waits when it must.
    Receiving appends to the client's buffer, so a transport that has to unwrap the stream (docker's
    multiplexing, say) copies no more than once.
    """

    @property
    def stderr(self) -> str:
        """The tail of what the control shell wrote to stderr, for error messages."""
        ...

    def send_nowait(self, data: memoryview) -> int:
        """Send what can go without waiting and say how many bytes of `data` went (0 if none could).
        Raises OSError or anyio.ClosedResourceError if the stream is broken or closed."""
        ...

    async def wait_writable(self) -> None:
        """Wait until `send_nowait` can take more."""
        ...

    async def receive_into(self, out: bytearray) -> None:
        """Wait for what the control shell wrote and append its stdout to `out` (perhaps nothing, if what
        came was stderr or part of the stream's own framing). Raises anyio.ClosedResourceError or OSError
        at the end of the stream."""
        ...

    def close(self) -> None:
        """Close the stream now (again is a no-op); a task waiting in it gets anyio.ClosedResourceError."""
        ...


class ControlClient:
    """One attached control shell: frames requests out and demultiplexes answers by request id.

    There is no reader task. Whoever waits for an answer reads the transport while no one else does
    (one batch at a time) and files what it reads under the request it belongs to, so any number of
    requests can be in flight from any tasks without a task group to own a reader.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._out = bytearray()
        self._queues: dict[str, collections.deque[tuple[str, Any]]] = {}
        self._reading = False
        self._tick = anyio.Event()
        self._wlock = anyio.Lock()
        self._seq = 0
        self.lost: str | None = None
        self.max_frame = MAX_FRAME

    @property
    def stderr(self) -> str:
        return self.transport.stderr

    def open_request(self) -> str:
        self._seq += 1
        req = f"q{self._seq}"
        self._queues[req] = collections.deque()
        return req

    def close_request(self, req: str) -> None:
        self._queues.pop(req, None)

    async def send(self, msg: dict[str, Any], payload: bytes = b"") -> None:
        """Frame a request: 4-byte size, `msg` marshalled (the control shell reads it without importing
        json), then `payload` of msg["size"] bytes. Answers come back as JSON, which is safe to parse."""
        if payload:
            msg = {**msg, "size": len(payload)}
        body = marshal.dumps(msg, 4)
        await self.send_raw(len(body).to_bytes(4, "big") + body + payload)

    async def send_raw(self, data: bytes) -> None:
        if self.lost:
            raise Lost(self.lost)
        transport = self.transport
        view = memoryview(data)
        try:
            if not self._wlock.locked():  # nobody half way through a frame: try it in one go
                view = view[transport.send_nowait(view) :]
            if view:
                async with self._wlock:
                    while view:
                        await transport.wait_writable()
                        view = view[transport.send_nowait(view) :]
        except BaseException as e:
            if 0 < len(view) < len(data):
                # Cancelled (or failed) half way through a frame: the control shell would read the next
                # request as the rest of this one. Drop the connection; the next request opens another.
                self._lose("a request was cut short")
                transport.close()
            if isinstance(e, (anyio.ClosedResourceError, OSError)):
                self._lose(f"write failed: {e!r}")
                raise Lost(self.lost) from e
            raise

    async def next(self, req: str) -> tuple[str, Any]:
        """The next frame for `req`: ("J", dict), ("O", bytes) or ("D", bytes)."""
        queue = self._queues[req]
        while True:
            if queue:
                return queue.popleft()
            if self.lost:
                raise Lost(self.lost)
            if self._reading:
                await self._tick.wait()
                continue
            self._reading = True
            try:
                try:
                    await self.transport.receive_into(self._out)
                except (anyio.ClosedResourceError, OSError) as e:
                    self._lose(f"connection closed ({type(e).__name__})")
                else:
                    try:
                        self._parse()
                    except (ValueError, IndexError, UnicodeDecodeError) as e:
                        # Anything in the sandbox runs as the control shell's user and could write into its
                        # stdout: a malformed or oversized frame ends the connection, never the server.
                        self._lose(f"protocol error from the control shell: {e}")
                        self.transport.close()
            finally:
                self._reading = False
                tick, self._tick = self._tick, anyio.Event()
                tick.set()

    async def request(self, msg: dict[str, Any], payload: bytes = b"") -> tuple[str, Any]:
        """Send one request and return its single answer."""
        req = self.open_request()
        try:
            await self.send({**msg, "req": req}, payload)
            return await self.next(req)
        finally:
            self.close_request(req)

    def _lose(self, why: str) -> None:
        if not self.lost:
            self.lost = why

    def _parse(self) -> None:
        """File the whole frames received so far under their requests."""
        out = self._out
        while len(out) >= 5:
            size = struct.unpack(">I", out[1:5])[0]
            if size > self.max_frame:
                raise ValueError(f"a frame of {size} bytes")
            if len(out) < 5 + size:
                break
            kind = chr(out[0])
            payload = bytes(out[5 : 5 + size])
            del out[: 5 + size]
            if kind not in "JOD":
                raise ValueError(f"unknown frame kind {kind!r}")
            if kind == "J":
                msg = json.loads(payload)
                queue = self._queues.get(msg.get("req", ""))
                if queue is not None:
                    queue.append(("J", msg))
            else:
                n = payload[0]
                queue = self._queues.get(payload[1 : 1 + n].decode())
                if queue is not None:
                    queue.append((kind, payload[1 + n :]))

    async def aclose(self) -> None:
        self._lose("closed")
        self.transport.close()
        tick, self._tick = self._tick, anyio.Event()
        tick.set()
        await anyio.lowlevel.checkpoint()


@dataclass
class Run:
    """One command as the server follows it, across connections: after a lost one, `follow` resumes at `offset`."""

    run_id: str
    script: str
    conn: ControlClient | None = None
    req: str | None = None
    sent: bool = False
    refused: bool = False
    started: bool = False
    offset: int = 0
    exit: dict[str, Any] | None = None
    t0: float = field(default_factory=time.time)
