"""The real command as a subprocess over stdio: what Claude Desktop, Claude Code and VS Code start.

Several server processes share one state folder here, as they do when several clients start their own.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client

from .conftest import ERAS, call, call_error, new_session, processes_marked, start_turn, stdio_params
from .test_tools import TOOLS

pytestmark = pytest.mark.anyio


def server_pids(home: Path) -> list[int]:
    """Pids of mcp-sessions servers whose state folder is `home`."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmd = f.read()
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if b"mcp_sessions" in cmd and f"MCP_SESSIONS_HOME={home}".encode() in env.split(b"\0"):
                pids.append(int(entry.name))
    return pids


async def kill_server(home: Path) -> None:
    """SIGKILL the one server process on `home`, as a crash would, and wait until it is gone."""
    (pid,) = server_pids(home)
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(10):
        while pid in server_pids(home):
            await anyio.sleep(0.05)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class PipeReader(anyio.abc.ByteReceiveStream):
    """The read end of a pipe as a byte stream, which also tells how full the pipe is."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.capacity: int = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)

    def unread(self) -> int:
        """Bytes written into the pipe and not read yet."""
        return int(struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0" * 4))[0])

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("mode", ERAS)
async def test_stdio_server_runs_a_session_end_to_end(home: Path, mode: str) -> None:
    async with Client(stdio_params(home), mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == TOOLS
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text="cd /tmp && export X=1")
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $X")
        assert reply["output"] == "/tmp\n1\n"
        await call(client, "close_session", session_id=sid)


async def test_server_memory_stays_bounded_when_a_command_prints_50_mb(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        (pid,) = server_pids(home)
        before = peak_rss_mb(pid)
        reply = await call(
            client, "send_message", session_id=sid, text="head -c 50000000 /dev/urandom | base64 -w 100", wait_s=50
        )
        assert reply["turn_status"] == "completed" and reply["output_cut_bytes"] > 60_000_000
        grown = peak_rss_mb(pid) - before
    assert grown < 40, f"server peak memory grew by {grown:.0f} MB for 67 MB of output"


async def test_a_session_made_by_one_server_is_used_and_interrupted_from_another(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as first, Client(stdio_params(home)) as second:
        sid = await new_session(first)
        busy = await call(first, "send_message", session_id=sid, text="echo working; sleep 300", wait_s=0.5)
        assert busy["status"] == "busy"
        seen = await call(second, "get_session", session_id=sid)
        assert seen["session"]["status"] == "busy"
        assert "busy running turn 1" in await call_error(second, "send_message", session_id=sid, text="true")
        stopped = await call(second, "interrupt", session_id=sid)
        assert stopped["interrupted"] is True and stopped["status"] == "ready"
        detail = await call(first, "get_session", session_id=sid)
        assert detail["session"]["last_turn"]["status"] == "interrupted"
        assert detail["session"]["last_turn"]["output"] == "working\n"
        assert processes_marked(sid) == []
        reply = await call(second, "send_message", session_id=sid, text="echo from the second server")
        assert reply["output"] == "from the second server\n"


async def test_a_server_killed_during_a_turn_loses_nothing(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client, title="survivor")
        await call(client, "send_message", session_id=sid, text="cd /tmp && export KEEP=yes && echo before")
        await start_turn(client, sid, "echo partial; sleep 300", shown="partial\n")
        await kill_server(home)
    async with Client(stdio_params(home), mode="legacy") as client:
        listed = await call(client, "list_sessions")
        assert [s["id"] for s in listed["sessions"]] == [sid] and listed["sessions"][0]["status"] == "ready"
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["last_turn"]["status"] == "interrupted"
        assert session["last_turn"]["reason"] == "server restarted"
        assert session["last_turn"]["output"] == "partial\n"
        transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
        assert "echo before" in transcript and "partial" in transcript and "server restarted" in transcript
        assert processes_marked(sid) == []
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $KEEP")
        assert reply["output"] == "/tmp\nyes\n"


def test_help_explains_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "mcp_sessions", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--home", "--driver", "--agent", "--image", "--command-timeout", "--max-output-bytes", "--log-level"):
        assert flag in out.stdout
    assert "MCP_SESSIONS_" in out.stdout


def test_a_database_from_a_newer_version_is_refused_and_left_untouched(home: Path) -> None:
    import sqlite3

    home.mkdir(parents=True)
    db = home / "sessions.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=99")
    before = db.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_sessions"],
        env={**os.environ, "MCP_SESSIONS_HOME": str(home)},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "newer mcp-sessions (schema 99" in proc.stderr
    assert db.read_bytes() == before


def test_a_corrupt_database_is_reported_and_left_untouched(home: Path) -> None:
    home.mkdir(parents=True)
    db = home / "sessions.db"
    db.write_bytes(b"this is not a database" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_sessions"],
        env={**os.environ, "MCP_SESSIONS_HOME": str(home)},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "cannot be read" in proc.stderr and "left untouched" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert db.read_bytes() == b"this is not a database" * 100


async def test_the_stdio_transport_handles_pipelined_huge_and_broken_lines(home: Path) -> None:
    """Raw JSON-RPC lines on the real pipes: several requests in one write, a line of 12 MB that arrives
    in many reads, a line that is not JSON (answered with a parse error, id null); every request is
    answered, then closing stdin stops the server."""
    params = stdio_params(home)
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    huge = {"session_id": "ses_" + "0" * 32, "text": "x" * (12 * 1024 * 1024)}
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_session", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_sessions", "arguments": {}}},
        "{this is not json",
        "",
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "send_message", "arguments": huge}},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
    ]
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests).encode()
    by_id: dict[int, dict] = {}
    others = []
    with anyio.fail_after(60):
        async with await anyio.open_process([params.command, *params.args], env=params.env, stderr=subprocess.DEVNULL) as server:
            assert server.stdin is not None and server.stdout is not None
            await server.stdin.send(data)  # one write: the server reads it in many chunks
            lines = BufferedByteReceiveStream(server.stdout)
            while len(by_id) < 5:
                reply = json.loads(await lines.receive_until(b"\n", 1 << 20))
                if reply.get("id") is None:
                    others.append(reply)
                else:
                    by_id[reply["id"]] = reply
            await server.stdin.aclose()
            assert await server.wait() == 0
    assert "result" in by_id[2], by_id[2]
    assert by_id[2]["result"]["structuredContent"]["status"] == "ready"
    assert by_id[3]["result"]["structuredContent"]["total"] >= 1
    assert by_id[4]["result"]["isError"] and "bytes, over this server's limit" in by_id[4]["result"]["content"][0]["text"]
    assert {t["name"] for t in by_id[5]["result"]["tools"]} == TOOLS
    assert not [r for r in by_id.values() if "error" in r]
    assert [r["error"]["code"] for r in others if "error" in r] == [-32700]


async def test_replies_larger_than_the_pipe_arrive_whole_while_the_client_is_slow_to_read(home: Path) -> None:
    """Four 3 MB file reads and a turn's notifications, pipelined while the client reads nothing: the
    server's writes fill the pipe and wait. Once the client reads, every line is one whole message, and
    every reply carries the whole file."""
    params = stdio_params(home)
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    size = 3_000_000

    def line(id_: int | None, method: str, params: dict | None = None) -> bytes:
        msg: dict = {"jsonrpc": "2.0", "method": method}
        if id_ is not None:
            msg["id"] = id_
        if params is not None:
            msg["params"] = params
        return (json.dumps(msg) + "\n").encode()

    out, into = os.pipe()  # the server's stdout, ours to measure
    with anyio.fail_after(90):
        async with (
            await anyio.open_process(
                [params.command, *params.args], env=params.env, stdout=into, stderr=subprocess.DEVNULL
            ) as server,
            PipeReader(out) as pipe,
        ):
            os.close(into)
            assert server.stdin is not None
            lines = BufferedByteReceiveStream(pipe)

            async def reply_to(id_: int) -> dict:
                while True:
                    msg = json.loads(await lines.receive_until(b"\n", 1 << 24))
                    if msg.get("id") == id_:
                        return msg

            await server.stdin.send(line(1, "initialize", init) + line(None, "notifications/initialized"))
            await reply_to(1)
            script = f"head -c {size} /dev/zero | tr '\\0' a > big.txt"
            await server.stdin.send(
                line(2, "tools/call", {"name": "create_session", "arguments": {"files": {"make.sh": script}}})
            )
            sid = (await reply_to(2))["result"]["structuredContent"]["id"]
            await server.stdin.send(
                line(3, "tools/call", {"name": "send_message", "arguments": {"session_id": sid, "text": "bash make.sh"}})
            )
            assert (await reply_to(3))["result"]["structuredContent"]["exit_code"] == 0

            uri = f"session://{sid}/files/big.txt"
            reads = [line(10 + i, "resources/read", {"uri": uri}) for i in range(4)]
            turn = line(20, "tools/call", {"name": "send_message", "arguments": {"session_id": sid, "text": "echo done"}})
            await server.stdin.send(reads[0] + reads[1] + turn + reads[2] + reads[3])
            while pipe.unread() < pipe.capacity - 4096:  # the server fills the pipe (to a page), then waits for room
                await anyio.sleep(0.02)
            by_id: dict[int, dict] = {}
            while len(by_id) < 5:
                raw = await lines.receive_until(b"\n", 1 << 24)
                msg = json.loads(raw)  # a line cut by another would not parse
                if "id" in msg:
                    by_id[msg["id"]] = msg
            await server.stdin.aclose()
            assert await server.wait() == 0
    for i in range(4):
        (content,) = by_id[10 + i]["result"]["contents"]
        assert content["uri"] == uri and content["text"] == "a" * size
    assert by_id[20]["result"]["structuredContent"]["output"] == "done\n"


def test_stdin_and_stdout_that_are_files_are_served_by_the_sdk_transport(home: Path, tmp_path: Path) -> None:
    """Requests from a file, replies into a file (no pipes to poll): the server still answers, then ends
    at the end of its input."""
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}) + "\n")
    replies = tmp_path / "replies.jsonl"
    params = stdio_params(home)
    with requests.open("rb") as stdin, replies.open("wb") as stdout:
        proc = subprocess.run(
            [params.command, *params.args], env=params.env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=60
        )
    assert proc.returncode == 0, proc.stderr.decode()
    (reply,) = [json.loads(line) for line in replies.read_text().splitlines()]
    assert reply["id"] == 1 and reply["result"]["serverInfo"]["name"] == "mcp-sessions"
