"""The server's side of the control shell: frames requests out and files the answers under their requests.

Separate from any driver so that each one brings only a byte stream into the sandbox (a `Transport`) and
the command that starts the control shell there (`control_command`); the framing, the request ids and
the distrust of what comes back live here once. The protocol is in this package's docstring.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import logging
import marshal
import math
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from .frames import (
    HEADER,
    KIND_DATA,
    KIND_JSON,
    KIND_OUTPUT,
    KIND_STREAM,
    MAX_JSON_FRAME,
    MAX_OUTPUT_FRAME,
    MAX_REQ_ID,
    MAX_STREAM_FRAME,
    MAX_STREAMS,
    OUTPUT_CHUNK,
    STREAM_CHUNK,
    STREAM_WINDOW,
    ProtocolError,
    describe_kind,
    parse_answer,
)
from .pacing import Pacer
from .turn import TURN

log = logging.getLogger(__name__)

CONTROL_MARK = "mcp-sessions-control"
"""The control shell's first argument, which names it in `ps` (its kill sweeps go by uid, not by names)."""
MIN_PYTHON = (3, 8)  # the control shell uses os.posix_spawnp(setsid=...)

CONTROL_PY = (Path(__file__).with_name("program.py")).read_text()
"""The control shell's source (program.py), with placeholders that `build_control_code` fills in."""


def build_control_code(turn: str = TURN) -> bytes:
    """The control shell's source, with the turn shell it installs in the state dir and the frame sizes
    the server accepts."""
    filled = {"TURN": turn, "CHUNK": OUTPUT_CHUNK, "SCHUNK": STREAM_CHUNK, "SWINDOW": STREAM_WINDOW, "STREAMS": MAX_STREAMS}
    code = CONTROL_PY
    for name, value in filled.items():
        code = code.replace(f'"@{name}@"', repr(value))
    return code.encode()


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
    """The command that starts a control shell keeping its state in `state_dir`, with stdin attached."""
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


class Broken(Lost):
    """The connection was dropped because the control shell broke the protocol or stopped answering.

    The next request opens a new connection, as after any lost one; the message names what went wrong.
    """


class NoAnswer(Broken):
    """A request got no answer within its deadline; the connection was dropped."""


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

    async def receive_into(self, out: bytearray) -> int:
        """Wait for what the control shell wrote and append its stdout to `out` (perhaps nothing, if what
        came was stderr or part of the stream's own framing); return how many bytes it took off the
        stream. Each call does a bounded amount of work, however the peer chops what it writes (the
        client charges each call to the connection's budget). Raises anyio.ClosedResourceError or
        OSError at the end of the stream."""
        ...

    def close(self) -> None:
        """Close the stream now (again is a no-op); a task waiting in it gets anyio.ClosedResourceError."""
        ...


@dataclass
class _InFlight:
    """A request the control shell may still answer: what it may send for it, and until when."""

    op: str
    data_max: int = -1
    """For a read: the most file content it may send (its `max`); -1 for every other request."""
    window: int = 0
    """For a byte stream: the data the control shell may still send before the server acknowledges some."""
    credit: int = 0
    """For a byte stream: the data the server may still send before the control shell acknowledges some."""
    open: bool = False
    """For a byte stream: whether the connection inside is open (data before that is a broken protocol)."""


STREAM_OPS = ("run", "follow", "attach")
"""Requests answered with events and output until an `exit` (or `none`, or an error)."""
BYTE_STREAMS = ("connect", "accepted")
"""Byte streams (`connect` ones, and those a `listen` announced): data and events until `closed` or an error."""
HARD_STREAMS = 4 * MAX_STREAMS
"""Byte streams in flight (open, or closed by the server and not yet confirmed) past which a control shell
that announces more is broken: an honest one keeps to MAX_STREAMS open, and confirms a close at once."""
IDLE_S = 1.0
"""Waiting this long for a frame (with a request waiting) sends a ping."""
PING_S = 5.0
"""A ping unanswered after this long of waiting drops the connection."""
MAX_QUEUED = 8 << 20
DATA_OPS = ("read", "get_state")
"""Requests answered with data: a file's content, or the shell state (each with the most it may be)."""
"""Answers filed for requests whose callers are busy elsewhere; past this the reader waits for them."""


class ControlClient:
    """One attached control shell: frames requests out and demultiplexes answers by request id.

    There is no reader task. Whoever waits for an answer reads the transport while no one else does
    (one batch at a time) and files what it reads under the request it belongs to, so any number of
    requests can be in flight from any tasks without a task group to own a reader.

    What comes back is read as hostile (see `frames`): a frame over its cap, of the wrong kind, for a
    request not in flight, or an answer of the wrong shape drops the connection (`Broken`), and so does
    silence: a reader that has waited `IDLE_S` for a frame sends a ping, and one unanswered after
    `PING_S` of waiting ends the connection, so a command may be silent for hours but a stuck control
    shell is noticed in seconds. Only time spent waiting on the transport counts, not time the reader
    spends paced or waiting for busy callers. Reading is paced (`pacing`), so one connection cannot
    starve the others, and at most a few MB are buffered per connection.
    """

    def __init__(self, transport: Transport, name: str = "") -> None:
        self.transport = transport
        self.name = name
        self._out = bytearray()
        self._queues: dict[str, collections.deque[tuple[str, Any]]] = {}
        self._inflight: dict[str, _InFlight] = {}
        self._queued = 0
        self._drained = anyio.Event()
        self._reading = False
        self._tick = anyio.Event()
        self._wlock = anyio.Lock()
        self._seq = 0
        self._pacer = Pacer()
        self._heard = False  # once the control shell has answered at all, its silence counts
        self._quiet = 0.0  # time spent waiting since the last whole frame
        self._ping: str | None = None
        self._ping_wait = 0.0
        self.lost: str | None = None
        self._broken = False

    @property
    def stderr(self) -> str:
        return self.transport.stderr

    def open_request(self, op: str, data_max: int = -1) -> str:
        """A request id for `op` (a read gives its `max`), in flight until its last answer arrives."""
        self._seq += 1
        req = f"q{self._seq}"
        self._queues[req] = collections.deque()
        self._inflight[req] = _InFlight(op, data_max, *((STREAM_WINDOW, STREAM_WINDOW) if op in BYTE_STREAMS else ()))
        return req

    def close_request(self, req: str) -> None:
        """Stop listening to `req`. Answers the control shell still sends for it are dropped until its last."""
        queue = self._queues.pop(req, None)
        if queue:
            self._unqueue(sum(len(x) for k, x in queue if k in "OD"))

    def in_flight(self, req: str) -> _InFlight | None:
        """What `req` may still send and be sent (None once its last answer has arrived)."""
        return self._inflight.get(req)

    async def send(self, msg: dict[str, Any], payload: bytes = b"") -> None:
        """Frame a request: 4-byte size, `msg` marshalled (the control shell reads it without importing
        json), then `payload` of msg["size"] bytes. Answers come back as JSON, which is safe to parse."""
        if payload:
            msg = {**msg, "size": len(payload)}
        body = marshal.dumps(msg, 4)
        await self.send_raw(len(body).to_bytes(4, "big") + body + payload)

    async def send_raw(self, data: bytes) -> None:
        if self.lost:
            raise self._lost_error()
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
                raise self._lost_error() from e
            raise

    async def next(self, req: str) -> tuple[str, Any]:
        """The next frame for `req`: ("J", dict), ("O", bytes), ("D", bytes) or ("S", bytes)."""
        queue = self._queues[req]
        await self.until(queue.__len__)
        kind, item = queue.popleft()
        if kind in "OD":
            self._unqueue(len(item))
        return kind, item

    async def until(self, ready: Callable[[], object]) -> None:
        """Read the connection (or wait while another task does) until `ready()` is true; raises `Lost` if
        the connection ends first."""
        while not ready():
            if self.lost:
                raise self._lost_error()
            if self._reading:
                await self._tick.wait()
                continue
            if self._queued >= MAX_QUEUED:
                if self._drained.is_set():
                    self._drained = anyio.Event()
                await self._drained.wait()
                continue
            self._reading = True
            try:
                await self._read_step()
            except ProtocolError as e:
                self._drop(f"the control shell sent {e}")
            except (anyio.ClosedResourceError, OSError) as e:
                self._lose(f"connection closed ({type(e).__name__})")
            finally:
                self._reading = False
                tick, self._tick = self._tick, anyio.Event()
                tick.set()

    async def request(self, msg: dict[str, Any], payload: bytes = b"", *, timeout: float | None = None) -> tuple[str, Any]:
        """Send one request and return its single answer; with no answer within `timeout` seconds the
        connection is dropped (`Broken`)."""
        op = msg["op"]
        req = self.open_request(op, int(msg["max"]) if "max" in msg else -1)  # a read, or the shell state
        try:
            with anyio.move_on_after(timeout):
                await self.send({**msg, "req": req}, payload)
                return await self.next(req)
            why = f"the control shell did not answer a {op!r} request within {timeout:g} s"
            self._drop(why)
            raise NoAnswer(why)
        finally:
            self.close_request(req)

    # -- reading ------------------------------------------------------------------------------------

    async def _read_step(self) -> None:
        """File what is buffered, or else read one batch and file what it completes."""
        pacer = self._pacer
        if pacer.spent:
            await pacer.pace()
        if self._parse():
            return  # the waiters look at what was filed before anyone waits for more
        limit = math.inf if not self._heard else (IDLE_S - self._quiet if self._ping is None else PING_S - self._ping_wait)
        t0 = time.monotonic()
        with anyio.move_on_after(max(limit, 0.0)):
            pacer.took(await self.transport.receive_into(self._out))
        if self._heard:
            waited = time.monotonic() - t0
            self._quiet += waited
            if self._ping is not None:
                self._ping_wait += waited
        self._parse()
        if self._heard and not self.lost:
            self._check_silence()

    def _check_silence(self) -> None:
        if self._ping is not None:
            if self._ping_wait >= PING_S:
                partial = ""
                if len(self._out) >= HEADER:
                    size = struct.unpack(">I", self._out[1:5])[0]
                    partial = f"; a frame of {size} bytes stopped after {len(self._out) - HEADER}"
                self._drop(f"the control shell did not answer a ping within {PING_S:g} s{partial}")
        elif self._quiet >= IDLE_S:
            self._quiet = 0.0
            self._send_ping()

    def _send_ping(self) -> None:
        """Send a ping now if it can go whole without waiting; else try again after the next idle spell
        (a request half way out has the write lock, and that request's own deadline covers the stream).
        The reader never waits to write: the control shell may be blocked writing to us."""
        if self._wlock.locked():
            return
        self._seq += 1
        req = f"q{self._seq}"
        body = marshal.dumps({"op": "ping", "req": req}, 4)
        data = len(body).to_bytes(4, "big") + body
        try:
            sent = self.transport.send_nowait(memoryview(data))
        except (anyio.ClosedResourceError, OSError) as e:
            self._lose(f"write failed: {e!r}")
            return
        if 0 < sent < len(data):
            self._drop("the control shell stopped reading its requests")
        elif sent:
            self._inflight[req] = _InFlight("ping")
            self._ping, self._ping_wait = req, 0.0

    def _parse(self) -> bool:
        """File the whole frames received so far under their requests, up to the end of this slice of
        work; whether it filed any (or stopped with more to file). Checks each frame's header before its
        payload is waited for, so an oversized one costs nothing but the connection."""
        out = self._out
        pacer = self._pacer
        filed = False
        while len(out) >= HEADER:
            if pacer.spent:
                return True
            kind = out[0]
            size = struct.unpack(">I", out[1:5])[0]
            if kind == KIND_JSON:
                if size > MAX_JSON_FRAME:
                    raise ProtocolError(f"a JSON frame of {size} bytes, over the {MAX_JSON_FRAME}-byte limit")
                if len(out) < HEADER + size:
                    return filed
                msg = parse_answer(bytes(out[HEADER : HEADER + size]))
                del out[: HEADER + size]
                self._file_answer(msg)
            elif kind in (KIND_OUTPUT, KIND_DATA, KIND_STREAM):
                req = self._data_frame_req(kind, size)
                if req is None or len(out) < HEADER + size:
                    return filed
                data = bytes(out[HEADER + 1 + len(req) : HEADER + size])
                del out[: HEADER + size]
                self._file_data(chr(kind), req, data)
            else:
                raise ProtocolError(f"a frame of unknown kind {describe_kind(kind)}")
            pacer.frame()
            self._heard = True
            self._quiet = 0.0
            filed = True
        return filed

    def _data_frame_req(self, kind: int, size: int) -> str | None:
        """The request an output or file frame is for, once its id has arrived (None until then), after
        checking the frame may come for it and is no larger than that request allows."""
        if kind == KIND_OUTPUT:
            if size > MAX_OUTPUT_FRAME:
                raise ProtocolError(f"an output frame of {size} bytes, over the {MAX_OUTPUT_FRAME}-byte limit")
        elif kind == KIND_STREAM:
            if size > MAX_STREAM_FRAME:
                raise ProtocolError(f"a stream frame of {size} bytes, over the {MAX_STREAM_FRAME}-byte limit")
        else:
            most = max((r.data_max for r in self._inflight.values()), default=-1)
            if most < 0:
                raise ProtocolError("file content when no file read is in flight")
            if size > 1 + MAX_REQ_ID + most:
                raise ProtocolError(f"a file frame of {size} bytes, over the {most}-byte limit of the reads in flight")
        out = self._out
        if len(out) < HEADER + 1:
            return None
        n = out[HEADER]
        if size < 1 + n:
            raise ProtocolError("a frame too short to hold its request id")
        if len(out) < HEADER + 1 + n:
            return None
        try:
            req = out[HEADER + 1 : HEADER + 1 + n].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("a frame whose request id is not text") from None
        entry = self._in_flight(req)
        if kind == KIND_OUTPUT and entry.op not in STREAM_OPS:
            raise ProtocolError(f"output for a {entry.op!r} request")
        if kind == KIND_STREAM:
            if entry.op not in BYTE_STREAMS:
                raise ProtocolError(f"stream data for a {entry.op!r} request")
            if not entry.open:
                raise ProtocolError("stream data before its connection opened")
            if size - 1 - n > entry.window:
                raise ProtocolError(f"{size - 1 - n} bytes of stream data where the stream's window has {entry.window}")
        if kind == KIND_DATA:
            if entry.op not in DATA_OPS:
                raise ProtocolError(f"file content for a {entry.op!r} request")
            if size - 1 - n > entry.data_max:
                raise ProtocolError(f"{size - 1 - n} bytes of file content for a read of at most {entry.data_max}")
        return req

    def _in_flight(self, req: str) -> _InFlight:
        entry = self._inflight.get(req)
        if entry is None:
            raise ProtocolError(f"an answer to {req[:40]!r}, which is no request in flight")
        return entry

    def _file_answer(self, msg: dict[str, Any]) -> None:
        req = msg["req"]
        entry = self._in_flight(req)
        ev = msg.get("ev")
        if entry.op in BYTE_STREAMS or entry.op == "listen":
            if self._stream_event(req, entry, ev, msg):
                return
            if "error" in msg or ev == "closed":
                del self._inflight[req]  # its last answer
        elif entry.op not in STREAM_OPS or "error" in msg or ev in ("exit", "none"):
            del self._inflight[req]  # its last answer
        if req == self._ping:
            self._ping, self._ping_wait, self._quiet = None, 0.0, 0.0
            return
        queue = self._queues.get(req)
        if queue is not None:
            queue.append(("J", msg))

    def _stream_event(self, req: str, entry: _InFlight, ev: object, msg: dict[str, Any]) -> bool:
        """Take a byte stream's flow control and a listener's new connections, checked; whether the
        answer was taken here (an acknowledgement, which no reader waits for)."""
        if ev == "open" and entry.op == "connect":
            entry.open = True
        elif ev == "ack" and entry.op in BYTE_STREAMS:
            n = msg.get("n")
            if not isinstance(n, int) or n <= 0 or entry.credit + n > STREAM_WINDOW:
                raise ProtocolError(f"a stream acknowledging {n!r} bytes it was not sent")
            entry.credit += n
            return True
        if ev == "accept" and entry.op == "listen":
            sid = msg.get("sid")
            if not isinstance(sid, str) or not 0 < len(sid) <= MAX_REQ_ID or not sid.isascii():
                raise ProtocolError("a connection accepted with no valid stream id")
            if sid in self._inflight or sid in self._queues:
                raise ProtocolError(f"a connection accepted as {sid[:40]!r}, which is already a request")
            if sum(r.op in BYTE_STREAMS for r in self._inflight.values()) >= HARD_STREAMS:
                raise ProtocolError(f"more than {HARD_STREAMS} byte streams at once")
            self._inflight[sid] = _InFlight("accepted", -1, STREAM_WINDOW, STREAM_WINDOW, open=True)
            self._queues[sid] = collections.deque()
        return False

    def _file_data(self, kind: str, req: str, data: bytes) -> None:
        if kind == "D":
            del self._inflight[req]  # a read has one answer
        elif kind == "S":
            self._inflight[req].window -= len(data)  # a stream's window bounds what it buffers, not MAX_QUEUED
        queue = self._queues.get(req)
        if queue is not None:
            queue.append((kind, data))
            if kind != "S":
                self._queued += len(data)

    def _unqueue(self, n: int) -> None:
        self._queued -= n
        if self._queued < MAX_QUEUED:
            self._drained.set()

    # -- the end ------------------------------------------------------------------------------------

    def _lose(self, why: str) -> None:
        if not self.lost:
            self.lost = why

    def _drop(self, why: str) -> None:
        """End a connection that broke the protocol or stopped answering; every waiter gets `Broken`."""
        if not self.lost:
            self.lost = why
            self._broken = True
            log.warning("dropped the control connection%s: %s", f" of {self.name}" if self.name else "", why)
        self.transport.close()
        self._wake()

    def _wake(self) -> None:
        """Wake every waiter, to find the connection lost."""
        tick, self._tick = self._tick, anyio.Event()
        tick.set()
        self._drained.set()

    def _lost_error(self) -> Lost:
        return (Broken if self._broken else Lost)(self.lost)

    async def aclose(self) -> None:
        self._lose("closed")
        self.transport.close()
        self._wake()
        await anyio.lowlevel.checkpoint()


async def say_hello(
    conn: ControlClient, env: dict[str, str] | None, user: str, timeout: float, *, shells: bool = True
) -> dict[str, Any]:
    """Send a new control shell its program and its hello (who commands run as, their environment; with
    `shells=False` it starts no command shells ahead: a connection for byte streams), and return the answer.
    Raises `Lost` or TimeoutError if the shell does not start; the driver says why in its words."""
    boot = control_boot_input  # compiled once per process, off the loop; then a thread's trip saved at every start
    code = boot() if boot.cache_info().currsize else await anyio.to_thread.run_sync(boot)
    with anyio.fail_after(timeout):
        await conn.send_raw(code)
        _kind, msg = await conn.request({"op": "hello", "env": env or {}, "user": user, "shells": shells})
    return dict(msg)


def python_too_old(hello: dict[str, Any]) -> str | None:
    """The sandbox's python3 version from a hello answer, if it is older than the control shell needs."""
    found = str(hello.get("python", ""))
    version = tuple(int(part) for part in re.findall(r"\d+", found)[:2])
    return found if version < MIN_PYTHON else None


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
