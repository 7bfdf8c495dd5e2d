"""Byte streams between the server and 127.0.0.1 inside a sandbox (`OpensStreams`), with a real Docker engine.

The sandbox has no network interface: every byte goes through the control shell. What a user of the
seam relies on: a server started in a session answers through `connect_inside`; a process in the sandbox
reaches a server-side handler through `serve_inside`; large transfers arrive intact both ways; half-close
and refusals behave like TCP; many streams at once; a stream open when the session closes ends instead
of hanging; a control shell that sends an oversized stream frame costs its connection, not the server.
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from sandbox_backends.base import OpensStreams, PortClosed, SandboxError, SandboxSpec
from sandbox_backends.control.frames import MAX_STREAMS, STREAM_WINDOW
from sandbox_backends.local import LocalDriver
from tests.docker_support import (  # noqa: F401  (fixtures are used by name)
    docker_driver,
    docker_engine,
    docker_server_id,
    sandbox_factory,
)
from tests.hostile_control import PROGRAM_PATH, hostile_image, hostile_program  # noqa: F401

pytestmark = pytest.mark.anyio
HANG_S = 60.0
"""Bounds what takes well under a second here: it only turns a hang into a failure."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def receive_all(stream: anyio.abc.ByteStream) -> bytes:
    chunks = []
    try:
        while True:
            chunks.append(await stream.receive())
    except anyio.EndOfStream:
        return b"".join(chunks)


async def start_http_server(sb: Any, port: int) -> None:
    """`python3 -m http.server` in the background of the session, waited for until it answers."""
    await sb.exec(
        f"echo hello from the sandbox > page.txt; nohup python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &"
    )
    ready = await sb.exec(
        f"for i in $(seq 100); do python3 -c 'import socket,sys; socket.create_connection((\"127.0.0.1\", {port}))' "
        "2>/dev/null && echo up && break; sleep 0.1; done"
    )
    assert ready.output == "up\n", ready.output


async def http_get(stream: anyio.abc.ByteStream, path: str) -> bytes:
    async with stream:
        await stream.send(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        return await receive_all(stream)


@pytest.mark.docker
async def test_a_web_server_in_the_session_answers_through_connect_inside(sandbox_factory: Any) -> None:
    sb = await sandbox_factory()
    assert isinstance(sb, OpensStreams)
    assert sb.describe()["network"] == "none"
    await start_http_server(sb, 8000)
    with anyio.fail_after(HANG_S):
        answer = await http_get(await sb.connect_inside(8000), "/page.txt")
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\nhello from the sandbox\n")


@pytest.mark.docker
async def test_a_closed_port_is_a_clear_error(sandbox_factory: Any) -> None:
    sb = await sandbox_factory()
    with anyio.fail_after(HANG_S), pytest.raises(PortClosed, match="Nothing listens on port 9"):
        await sb.connect_inside(9)
    # the refusal cost nothing: the next connection works
    await start_http_server(sb, 8001)
    with anyio.fail_after(HANG_S):
        assert (await http_get(await sb.connect_inside(8001), "/page.txt")).startswith(b"HTTP/1.0 200")


ECHO_INSIDE = """
import hashlib, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * int(sys.argv[2]))
s.shutdown(socket.SHUT_WR)
got = hashlib.sha256()
n = 0
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    got.update(b)
    n += len(b)
print(n, got.hexdigest())
"""


@pytest.mark.docker
async def test_a_process_in_the_sandbox_reaches_a_handler_in_the_server(sandbox_factory: Any) -> None:
    """10 MB each way through serve_inside, with half-close: the handler reads to end of file, then answers."""
    sb = await sandbox_factory()
    size = 10 << 20
    answer = os.urandom(size)
    got: list[bytes] = []

    async def handler(stream: anyio.abc.ByteStream) -> None:
        got.append(await receive_all(stream))
        await stream.send(answer)
        await stream.send_eof()

    await sb.write_file("client.py", ECHO_INSIDE.encode())
    async with anyio.create_task_group() as tg:
        address = await tg.start(sb.serve_inside, 0, handler)
        host, port = address.split(":")
        assert host == "127.0.0.1"
        with anyio.fail_after(HANG_S):
            result = await sb.exec(f"python3 client.py {port} {size}")
        tg.cancel_scope.cancel()
    assert got == [b"x" * size]
    assert result.output.split() == [str(size), hashlib.sha256(answer).hexdigest()]


SINK_INSIDE = """
import hashlib, socket
srv = socket.socket()
srv.bind(("127.0.0.1", 8002))
srv.listen()
print("listening", flush=True)
c, _ = srv.accept()
got = hashlib.sha256()
n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    got.update(b)
    n += len(b)
c.sendall(("%d %s" % (n, got.hexdigest())).encode() + b"y" * (10 << 20))
c.close()
"""


@pytest.mark.docker
async def test_ten_megabytes_each_way_through_connect_inside(sandbox_factory: Any, tmp_path: Path) -> None:
    sb = await sandbox_factory()
    await sb.write_file("sink.py", SINK_INSIDE.encode())
    await sb.exec("nohup python3 sink.py > sink.out 2>&1 &")
    await sb.exec("for i in $(seq 100); do grep -q listening sink.out && break; sleep 0.1; done")
    data = os.urandom(10 << 20)
    with anyio.fail_after(HANG_S):
        stream = await sb.connect_inside(8002)
        async with stream:
            await stream.send(data)
            await stream.send_eof()
            answer = await receive_all(stream)
    head = f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    assert answer == head + b"y" * (10 << 20)


@pytest.mark.docker
async def test_many_streams_at_once(sandbox_factory: Any) -> None:
    sb = await sandbox_factory()
    await start_http_server(sb, 8003)
    await sb.exec("for i in $(seq 40); do echo page $i > p$i.txt; done")
    answers: dict[int, bytes] = {}

    async def get(i: int) -> None:
        answers[i] = await http_get(await sb.connect_inside(8003), f"/p{i}.txt")

    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            for i in range(1, 41):
                tg.start_soon(get, i)
    assert all(answers[i].endswith(f"\r\n\r\npage {i}\n".encode()) for i in range(1, 41))


@pytest.mark.docker
async def test_a_stream_open_when_the_session_closes_ends(sandbox_factory: Any) -> None:
    sb = await sandbox_factory()
    await start_http_server(sb, 8004)
    stream = await sb.connect_inside(8004)
    served = anyio.Event()

    async def handler(stream: anyio.abc.ByteStream) -> None:
        served.set()
        await stream.receive()  # the process inside never writes: only the end of the sandbox ends this

    await sb.write_file(
        "hold.py", b"import socket,sys,time\ns=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\ntime.sleep(600)\n"
    )
    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            address = await tg.start(sb.serve_inside, 0, handler)
            await sb.exec(f"nohup python3 hold.py {address.split(':')[1]} >/dev/null 2>&1 &")
            await served.wait()
            await sb.close(delete=True)
            # the served connection and the listener end with the sandbox; the serve task returns by itself
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await stream.receive()
    with pytest.raises(SandboxError, match="is closed"):
        await sb.connect_inside(8004)


HOSTILE_STREAMS = {
    "stream-too-big": "a stream frame of 52428800 bytes, over the 65792-byte limit",
    "stream-before-open": "stream data before its connection opened",
    "stream-ack-unsent": "a stream acknowledging 1 bytes it was not sent",
}


@pytest.mark.docker
@pytest.mark.parametrize("mode", list(HOSTILE_STREAMS))
async def test_a_hostile_stream_costs_the_connection_not_the_server(
    sandbox_factory: Any, hostile_image: str, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """The streams' control connection runs a program that answers a connect by breaking the protocol (a
    50 MB frame, data past the window, an acknowledgement of nothing): the stream fails naming it, the
    connection is dropped, the command connection never notices, and the next stream (on a new connection,
    to the real control shell again) works."""
    sb = await sandbox_factory(image=hostile_image)  # its command connection is a real control shell
    await sb.write_file(PROGRAM_PATH, hostile_program(mode))
    with anyio.fail_after(HANG_S), caplog.at_level(logging.WARNING):
        with pytest.raises((anyio.BrokenResourceError, SandboxError), match=HOSTILE_STREAMS[mode]):
            await receive_all(await sb.connect_inside(8005))
    assert any("dropped the control connection" in r.getMessage() for r in caplog.records)
    with anyio.fail_after(HANG_S):
        assert (await sb.exec(f"rm {PROGRAM_PATH}; echo still here")).output == "still here\n"
        await start_http_server(sb, 8005)
        assert (await http_get(await sb.connect_inside(8005), "/page.txt")).startswith(b"HTTP/1.0 200")


@pytest.mark.docker
async def test_a_stream_past_its_window_costs_the_connection(
    sandbox_factory: Any, hostile_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener's control shell announces a connection and sends more of its data than the window the
    server granted, to a handler that reads nothing: the server drops the connection rather than buffer it;
    after listening again (on new connections, which misbehave the same way) the serve task gives up."""
    sb = await sandbox_factory(image=hostile_image)
    await sb.write_file(PROGRAM_PATH, hostile_program("stream-over-window"))
    handled = []

    async def handler(stream: anyio.abc.ByteStream) -> None:
        handled.append(stream)
        await anyio.sleep_forever()

    with anyio.fail_after(HANG_S), caplog.at_level(logging.WARNING):
        async with anyio.create_task_group() as tg:
            assert await tg.start(sb.serve_inside, 0, handler) == "127.0.0.1:1234"
    assert handled
    dropped = [r.getMessage() for r in caplog.records if "dropped the control connection" in r.getMessage()]
    assert len(dropped) == 3 and all("65536 bytes of stream data where the stream's window has 0" in m for m in dropped)


FLOOD_INSIDE = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(3)
block = b"f" * (1 << 16)
sent = 0
try:
    while sent < (200 << 20):
        sent += s.send(block)
except socket.timeout:
    pass
print(sent, flush=True)
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


@pytest.mark.docker
async def test_a_chatty_process_waits_for_a_handler_that_does_not_read(sandbox_factory: Any) -> None:
    """A process inside writes as fast as it can to a handler that reads nothing: it is held up (its writes
    block) with no more than a stream window buffered in the server, and nothing is lost once it reads."""
    sb = await sandbox_factory()
    await sb.write_file("flood.py", FLOOD_INSIDE.encode())
    held = anyio.Event()
    got: list[int] = []

    async def handler(stream: anyio.abc.ByteStream) -> None:
        await held.wait()
        got.append(len(await receive_all(stream)))
        await stream.send(b"k")

    async with anyio.create_task_group() as tg:
        address = await tg.start(sb.serve_inside, 0, handler)
        with anyio.fail_after(HANG_S):
            flood = await sb.exec(f"python3 flood.py {address.split(':')[1]} > flood.out &")
            assert flood.exit_code == 0
            while not (await sb.exec("cat flood.out")).output:
                await anyio.sleep(0.1)
        sent = int((await sb.exec("cat flood.out")).output)
        conn = sb._streams._conn
        assert conn is not None
        buffered = sum(len(item) for queue in conn._queues.values() for kind, item in queue if kind == "S")
        assert buffered <= STREAM_WINDOW
        assert sent < 100 << 20  # held up long before its 200 MB: only socket buffers and one window took it
        held.set()
        with anyio.fail_after(HANG_S):
            while not got:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert got == [sent]


@pytest.mark.docker
async def test_streams_past_the_limit_are_refused_clearly(sandbox_factory: Any) -> None:
    sb = await sandbox_factory()
    await start_http_server(sb, 8006)
    with anyio.fail_after(HANG_S):
        streams = [await sb.connect_inside(8006) for _ in range(MAX_STREAMS)]
        with pytest.raises(SandboxError, match=f"has {MAX_STREAMS} connections open, the most it takes; close some first"):
            await sb.connect_inside(8006)
        await streams.pop().aclose()
        assert (await http_get(await sb.connect_inside(8006), "/page.txt")).startswith(b"HTTP/1.0 200")
        for stream in streams:
            await stream.aclose()


async def test_local_streams_are_the_hosts_loopback(tmp_path: Path) -> None:
    """The local driver shares the host's network: connect_inside reaches a server on the host's 127.0.0.1
    and serve_inside listens there."""
    driver = LocalDriver(tmp_path)
    sb = await driver.create(SandboxSpec(name="s1"))
    try:

        async def handler(stream: anyio.abc.ByteStream) -> None:
            await stream.send(b"hi " + await stream.receive())

        async with anyio.create_task_group() as tg:
            address = await tg.start(sb.serve_inside, 0, handler)
            port = int(address.split(":")[1])
            with anyio.fail_after(HANG_S):
                stream = await sb.connect_inside(port)
                async with stream:
                    await stream.send(b"there")
                    assert await stream.receive() == b"hi there"
            tg.cancel_scope.cancel()
    finally:
        await sb.close(delete=True)
