"""Three server processes on one PostgreSQL database, as a deployment behind a load balancer runs them: each
`mcp-sessions serve --http` started for real, talked to over its REST API, sessions spread over all three."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from .postgres_support import postgres_cluster, postgres_url  # noqa: F401
from .test_http import API, sse_events

pytestmark = pytest.mark.anyio
SERVERS = 3
SESSIONS = 60


class Server:
    def __init__(self, home: Path, url: str, port: int, settings: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
        env |= {"MCP_SESSIONS_HOME": str(home), "MCP_SESSIONS_DATABASE_URL": url, "MCP_SESSIONS_IDLE_TIMEOUT_S": "0"}
        env |= settings or {}
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcp_sessions", "serve", "--http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as c:
            with anyio.fail_after(60):
                while True:
                    assert self.process.poll() is None, self.process.stderr.read().decode()  # type: ignore[union-attr]
                    try:
                        if (await c.get(f"{API}/sessions")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)

    def kill(self) -> None:
        """As a crash would: SIGKILL, and wait until the process is gone."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def servers(tmp_path: Path, postgres_url: str) -> Iterator[list[Server]]:  # noqa: F811
    home = tmp_path / "home"  # one folder for the local driver's workspaces, as a shared volume would be
    started = [Server(home, postgres_url, port) for port in free_ports(SERVERS)]
    try:
        anyio.run(_all_ready, started)
        yield started
    finally:
        for server in started:
            server.stop()


async def _all_ready(started: list[Server]) -> None:
    for server in started:
        await server.ready()


@pytest.fixture
async def clients(servers: list[Server]) -> AsyncIterator[list[httpx.AsyncClient]]:
    opened = [httpx.AsyncClient(base_url=s.base, timeout=60) for s in servers]
    try:
        yield opened
    finally:
        for c in opened:
            await c.aclose()


async def create(c: httpx.AsyncClient, title: str) -> str:
    r = await c.post(f"{API}/sessions", json={"title": title})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def send(c: httpx.AsyncClient, sid: str, text: str, wait_s: float = 30) -> dict[str, Any]:
    r = await c.post(f"{API}/sessions/{sid}/messages", params={"wait_s": wait_s}, json={"text": text})
    assert r.status_code in (200, 202), r.text
    return dict(r.json())


async def until_output(c: httpx.AsyncClient, sid: str, text: str, after: int = 0) -> list[dict[str, Any]]:
    """Events of the session's stream from server `c` until one of its tool outputs holds `text`."""
    got = []
    with anyio.fail_after(60):  # only turns a hang into a failure
        async with c.stream("GET", f"{API}/sessions/{sid}/stream", headers={"Last-Event-ID": str(after)}) as response:
            assert response.status_code == 200
            async for event in sse_events(response):
                if "comment" in event:
                    continue
                got.append(event)
                data = json.loads(event["data"]).get("data", {})
                if event["event"] == "tool.output" and text in data.get("text", ""):
                    return got
    raise AssertionError(f"the stream ended before {text!r}: {got}")


async def test_messages_through_any_server_reach_the_right_session(clients: list[httpx.AsyncClient]) -> None:
    sids = [await create(clients[i % SERVERS], f"s{i}") for i in range(SESSIONS)]
    replies: dict[int, dict[str, Any]] = {}

    async def talk(i: int) -> None:
        replies[i] = await send(clients[(i + 1) % SERVERS], sids[i], f"echo {sids[i]}-{i}")

    async with anyio.create_task_group() as tg:
        for i in range(SESSIONS):
            tg.start_soon(talk, i)
    for i, sid in enumerate(sids):
        assert replies[i]["turn_status"] == "completed" and replies[i]["output"] == f"{sid}-{i}\n", replies[i]
    for c in clients:  # every server lists every session, whichever made it
        r = await c.get(f"{API}/sessions", params={"limit": 200})
        assert r.json()["total"] == SESSIONS and sorted(s["id"] for s in r.json()["sessions"]) == sorted(sids)
    for i, sid in enumerate(sids):  # and reads each one's transcript as the server that ran its turn wrote it
        r = await clients[(i + 2) % SERVERS].get(f"{API}/sessions/{sid}")
        texts = [m["content"][0]["text"] for m in r.json()["messages"]]
        assert texts == [f"echo {sid}-{i}", f"{sid}-{i}\n"]


async def test_a_server_killed_mid_turn_is_recovered_by_another(servers: list[Server], clients: list[httpx.AsyncClient]) -> None:
    sid = await create(clients[0], "doomed")
    started = await send(clients[0], sid, "echo partial; sleep 300", wait_s=0)
    assert started["turn_status"] == "running"
    await until_output(clients[1], sid, "partial")  # the turn runs on server 0
    servers[0].kill()
    with anyio.fail_after(60):  # the dead server's connection and its lease lock go; another server takes over
        # unasked: a list does not take over what it shows, the servers look for dead servers' turns themselves
        while (await clients[1].get(f"{API}/sessions", params={"status": "busy"})).json()["sessions"]:
            await anyio.sleep(0.2)
    turn = (await clients[1].get(f"{API}/sessions/{sid}")).json()["session"]["last_turn"]
    assert turn["status"] == "interrupted" and turn["reason"] == "server restarted" and turn["output"] == "partial\n", turn
    reply = await send(clients[2], sid, "echo again")
    assert reply["turn_status"] == "completed" and reply["output"] == "again\n"


async def test_a_follower_on_one_server_sees_a_turn_run_by_another(clients: list[httpx.AsyncClient]) -> None:
    sids = [await create(clients[0], f"f{i}") for i in range(SERVERS)]
    seen: dict[int, list[dict[str, Any]]] = {}

    async def follow(i: int) -> None:
        seen[i] = await until_output(clients[(i + 1) % SERVERS], sids[i], f"marker-{i}")

    async with anyio.create_task_group() as tg:
        for i in range(SERVERS):
            tg.start_soon(follow, i)
        for i in range(SERVERS):
            await send(clients[i], sids[i], f"sleep 0.5; echo marker-{i}", wait_s=0)
    for i in range(SERVERS):
        assert [e["event"] for e in seen[i]][-1] == "tool.output"
        assert any(e["event"] == "turn.started" for e in seen[i])


# -- the command line on a database -------------------------------------------------------------------


async def mcp_sessions(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    done = await anyio.run_process([sys.executable, "-m", "mcp_sessions", *args], env=env, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_the_command_line_lists_the_sessions_of_the_database(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    from mcp_sessions.models import Session, SessionRecord
    from mcp_sessions.store_postgres import PostgresStore

    store = await PostgresStore.connect(postgres_url)
    try:
        s = Session(id="ses_" + "a" * 32, title="stored", driver="local", agent="shell", command_timeout_s=1, status="ready")
        await store.insert(SessionRecord(session=s), [])
    finally:
        await store.aclose()
    done = await mcp_sessions("--database-url", postgres_url, "--home", str(tmp_path / "empty"), "ls", "--json")
    assert done.returncode == 0, done.stderr
    assert [row["title"] for row in json.loads(done.stdout)["sessions"]] == ["stored"]


async def test_an_unreachable_database_stops_the_server_with_the_reason_and_no_password(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"postgresql://mcp:hunter2@127.0.0.1:{port}/state"
    done = await mcp_sessions("--home", str(tmp_path), "--database-url", url, "serve")
    assert done.returncode != 0
    assert f"Cannot connect to the PostgreSQL database postgresql://mcp:***@127.0.0.1:{port}/state" in done.stderr, done.stderr
    assert "hunter2" not in done.stderr


async def test_a_database_url_that_is_not_postgresql_is_refused_clearly(tmp_path: Path) -> None:
    done = await mcp_sessions("--home", str(tmp_path), "--database-url", "mysql://db/state", "serve")
    assert done.returncode != 0
    assert "'mysql' is not a database this server keeps its state in: give a postgresql:// URL" in done.stderr, done.stderr


def test_servers_on_one_database_name_their_sandboxes_alike_whatever_their_folders(tmp_path: Path) -> None:
    from mcp_sessions.app import server_id
    from mcp_sessions.settings import Settings

    url = "postgresql://mcp:{}@db.internal/state"
    one = Settings(home=tmp_path / "a", database_url=url.format("first"))
    two = Settings(home=tmp_path / "b", database_url=url.format("second"))
    assert server_id(one) == server_id(two)
    assert server_id(one) != server_id(Settings(home=tmp_path / "a", database_url="postgresql://mcp@db.internal/other"))
    assert server_id(Settings(home=tmp_path / "a")) != server_id(Settings(home=tmp_path / "b"))
