"""The remote driver, `mcp-sessions` dialect, end to end: a back server (the real HTTP app, local driver, on
a loopback port) and a front server (in-memory MCP) whose sessions live on the back one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from mcp_sessions.agents.pricing import PriceTable
from mcp_sessions.agents.providers.common import TokenUsage
from mcp_sessions.http import build_app
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends.remote import HttpDialect, load_remotes

from .asgi import serve
from .conftest import call, call_error, stdio_params
from .fake_llm import FakeLLM, Reply, ToolCall

pytestmark = pytest.mark.anyio

TOKEN = "back-token-0123456789abcdef"
API = "/api/v1"


@asynccontextmanager
async def back_server(home: Path, port: int = 0, **settings: Any) -> AsyncIterator[str]:
    app = build_app(Settings(home=home, command_timeout_s=120, **settings), {TOKEN: "front"})
    async with serve(app, port=port, lifespan="on") as url:
        yield url


def front_settings(home: Path, url: str, **remote: Any) -> Settings:
    remotes = {"back": {"url": url, "token_env": "BACK_TOKEN", "reconnect_s": 30, **remote}}
    return Settings(home=home, remotes=json.dumps(remotes), command_timeout_s=120)


async def back_view(url: str, rid: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = await c.get(f"{API}/sessions/{rid}")
        return {"status_code": r.status_code, **r.json()}


async def wait_turn(client: Client, sid: str, turn: int) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:
            got = await call(client, "get_session", session_id=sid, wait_s=20)
            last = got["session"].get("last_turn") or {}
            if last.get("turn") == turn and last.get("status") != "running":
                return got


async def test_remote_session_end_to_end_with_a_back_server_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACK_TOKEN", TOKEN)
    back_home = tmp_path / "back"
    async with anyio.create_task_group() as tg:
        stopped = anyio.Event()
        restart = anyio.Event()
        first_down = anyio.Event()
        urls: list[str] = []

        async def back(port: int = 0) -> None:
            async with back_server(back_home, port) as url:
                urls.append(url)
                await restart.wait() if port == 0 else await stopped.wait()
            if port == 0:
                first_down.set()  # its port is free again only now

        async def back_again(port: int) -> None:
            await first_down.wait()
            await back(port)

        tg.start_soon(back)
        with anyio.fail_after(30):
            while not urls:
                await anyio.sleep(0.02)
        url = urls[0]
        port = int(url.rsplit(":", 1)[1])

        async with Client(create_server(front_settings(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="back", title="delegated")
            assert s["status"] == "ready", s
            assert s["driver"] == "remote" and s["agent"] == "remote"
            assert s["sandbox"]["remote"] == "back" and s["sandbox"]["dialect"] == "mcp-sessions"
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            assert (await back_view(url, rid))["session"]["status"] == "ready"

            # a long turn, followed through get_session
            r = await call(
                client, "send_message", session_id=sid, text="for i in 1 2 3; do echo step $i; sleep 0.4; done", wait_s=0
            )
            assert r["turn_status"] in ("running", "completed")
            got = await wait_turn(client, sid, 1)
            assert got["session"]["status"] == "ready"
            assert got["session"]["last_turn"]["status"] == "completed"
            assert got["session"]["last_turn"]["output"] == "step 1\nstep 2\nstep 3\n"
            events = await call(client, "get_session", session_id=sid, events_after=0)
            types = [e["type"] for e in events["events"]]
            assert "tool.started" in types and "tool.output" in types and "tool.completed" in types
            assert (
                "".join(e["data"]["text"] for e in events["events"] if e["type"] == "tool.output") == "step 1\nstep 2\nstep 3\n"
            )

            # interrupt stops the remote turn too
            r = await call(client, "send_message", session_id=sid, text="echo start; sleep 60", wait_s=1)
            assert r["turn_status"] == "running"
            stopped_reply = await call(client, "interrupt", session_id=sid)
            assert stopped_reply["interrupted"] is True
            with anyio.fail_after(15):
                while (await back_view(url, rid))["session"]["status"] != "ready":
                    await anyio.sleep(0.1)
            r = await call(client, "send_message", session_id=sid, text="echo ok", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "ok\n"

            # the back server restarts in the middle of a turn: the turn ends, the session goes on
            r = await call(client, "send_message", session_id=sid, text="echo before; sleep 30", wait_s=1)
            assert r["turn_status"] == "running"
            restart.set()
            tg.start_soon(back_again, port)
            got = await wait_turn(client, sid, 4)
            assert got["session"]["last_turn"]["status"] == "interrupted"
            assert got["session"]["last_turn"]["reason"] == "on the remote: server stopped"
            assert got["session"]["status"] == "ready"
            r = await call(client, "send_message", session_id=sid, text="echo after", wait_s=30)
            assert r["turn_status"] == "completed" and r["output"] == "after\n", r

            transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
            assert "echo after" in transcript and "step 3" in transcript

            closed = await call(client, "close_session", session_id=sid)
            assert closed["status"] == "dead"
            assert (await back_view(url, rid))["session"]["status"] == "dead"

            # a remote session that disappears: the local session fails with the reason
            s = await call(client, "create_session", driver="remote", remote="back")
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                assert (await c.post(f"{API}/sessions/{rid}/close", params={"delete": "true"})).status_code == 200
            r = await call(client, "send_message", session_id=sid, text="echo hi", wait_s=30)
            assert r["turn_status"] == "failed"
            got = await call(client, "get_session", session_id=sid)
            assert got["session"]["status"] == "failed"
            assert "gone" in got["session"]["failure_reason"] and "back" in got["session"]["failure_reason"]

        stopped.set()


async def test_remote_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACK_TOKEN", TOKEN)
    async with back_server(tmp_path / "back") as url:
        async with Client(create_server(front_settings(tmp_path / "front", url))) as client:
            text = await call_error(client, "create_session", driver="remote", remote="nowhere")
            assert "Unknown remote 'nowhere'" in text and "Known remotes: back" in text
            assert (await call(client, "list_sessions"))["total"] == 0  # refused before anything was made

            text = await call_error(client, "create_session", driver="remote", remote="back", agent="shell")
            assert "agent='remote'" in text
            text = await call_error(client, "create_session", driver="remote")
            assert "remote" in text

            s = await call(client, "create_session", driver="remote", remote="back", files={"a.txt": "x"})
            assert s["status"] == "failed"
            assert "not supported by remote sandboxes" in s["failure_reason"] and "mcp-sessions" in s["failure_reason"]

        monkeypatch.setenv("BACK_TOKEN", "wrong-token-0123456789")
        async with Client(create_server(front_settings(tmp_path / "front2", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="back")
            assert (
                s["status"] == "failed"
                and "refused the credentials" in s["failure_reason"]
                and "BACK_TOKEN" in s["failure_reason"]
            )

    # nothing listens there any more: a bounded, clear failure
    async with Client(create_server(front_settings(tmp_path / "front3", url, reconnect_s=1, connect_timeout_s=1))) as client:
        s = await call(client, "create_session", driver="remote", remote="back")
        assert s["status"] == "failed" and "unreachable" in s["failure_reason"]


def test_remotes_configuration(tmp_path: Path) -> None:
    path = tmp_path / "remotes.toml"
    path.write_text('[remotes.a]\nurl = "http://a.example/"\ntoken_env = "A_TOKEN"\n')
    remotes = load_remotes('{"b": {"url": "http://b.example", "options": {"agent": "llm"}}}', path)
    assert remotes["a"].url == "http://a.example" and remotes["a"].token_env == "A_TOKEN"
    assert remotes["b"].options == {"agent": "llm"} and remotes["b"].dialect == "mcp-sessions"
    with pytest.raises(ValueError, match="unknown dialect"):
        load_remotes('{"c": {"url": "http://c", "dialect": "carrier-pigeon"}}')
    with pytest.raises(ValueError, match="url"):
        load_remotes('{"c": {}}')


async def test_closing_a_session_whose_remote_is_down_does_not_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACK_TOKEN", TOKEN)
    monkeypatch.setattr(HttpDialect, "close_patience_s", 0.5)
    async with back_server(tmp_path / "back") as url:
        async with Client(create_server(front_settings(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="back")
            assert s["status"] == "ready"
    # the back server is gone now; a new front process finds the session and closes it at once
    async with Client(create_server(front_settings(tmp_path / "front", url))) as client:
        with anyio.fail_after(10):
            closed = await call(client, "close_session", session_id=s["id"])
        assert closed["status"] == "dead"


async def test_the_drivers_watch_fails_an_idle_session_whose_remote_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No message is sent: the driver's own watch (every 5 s) finds the remote session closed and fails ours."""
    monkeypatch.setenv("BACK_TOKEN", TOKEN)
    async with back_server(tmp_path / "back") as url:
        async with Client(create_server(front_settings(tmp_path / "front", url))) as client:
            s = await call(client, "create_session", driver="remote", remote="back")
            sid, rid = s["id"], s["sandbox"]["remote_session_id"]
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                assert (await c.post(f"{API}/sessions/{rid}/close")).status_code == 200
            with anyio.fail_after(30):  # only turns a hang into a failure; list_sessions reads the store alone
                while (await call(client, "list_sessions", statuses=["failed"]))["total"] == 0:
                    await anyio.sleep(0.2)
            reason = (await call(client, "get_session", session_id=sid))["session"]["failure_reason"]
            assert reason == f"the session on remote 'back' (mcp-sessions at {url}) was closed (closed)", reason


async def test_options_reach_the_remotes_create_and_its_usage_comes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`options` are fields of the back server's create body: here its llm agent and model, which the back server
    runs against a fake model server; the turn's reply, messages and usage come back to the front session."""
    monkeypatch.setenv("BACK_TOKEN", TOKEN)
    with FakeLLM() as llm:
        llm.script(
            Reply(text="Looking.", tool_calls=[ToolCall("bash", {"command": "echo found"}, id="t1")]),
            Reply(text="It says found.", input_tokens=1000, output_tokens=200),
        )
        back = {"openai_base_url": llm.openai_base_url, "openai_api_key": "sk-back-" + "1" * 24, "llm_retries": 0}
        async with back_server(tmp_path / "back", **back) as url:
            options = {"options": {"agent": "llm", "model": "gpt-4o-mini", "provider": "openai", "max_steps": 5}}
            async with Client(create_server(front_settings(tmp_path / "front", url, **options))) as client:
                s = await call(client, "create_session", driver="remote", remote="back")
                assert s["status"] == "ready", s
                remote = (await back_view(url, s["sandbox"]["remote_session_id"]))["session"]
                assert (remote["agent"], remote["model"]) == ("llm", "gpt-4o-mini")
                reply = await call(client, "send_message", session_id=s["id"], text="What does it say?", wait_s=30)
                got = await call(client, "get_session", session_id=s["id"])
    assert reply["turn_status"] == "completed" and reply["output"] == "It says found.", reply
    cost = PriceTable.load().cost("gpt-4o-mini", TokenUsage(input_tokens=1100, output_tokens=220))
    assert reply["usage"] is not None, "the remote turn's usage did not come back"
    assert reply["usage"]["input_tokens"] == 1100 and reply["usage"]["output_tokens"] == 220
    assert reply["usage"]["cost_usd"] == pytest.approx(cost) and cost > 0
    assert got["session"]["usage"]["total_tokens"] == 1320
    assert [m["role"] for m in got["recent_messages"]] == ["user", "assistant", "tool", "assistant"]
    assert "found" in json.dumps(got["recent_messages"][2]["content"])


async def test_remotes_come_from_the_file_flag_and_the_variable_wins_per_name(tmp_path: Path) -> None:
    """A real server process with `--remotes-file` (TOML) and MCP_SESSIONS_REMOTES: both names are known, and for
    the name both give, the variable's remote is the one used."""
    async with back_server(tmp_path / "back") as url:
        remotes_file = tmp_path / "remotes.toml"
        remotes_file.write_text(
            '[remotes.back]\nurl = "http://127.0.0.1:9"\ntoken_env = "BACK_TOKEN"\nreconnect_s = 1\n\n'
            '[remotes.farm]\nurl = "http://127.0.0.1:9"\n'
        )
        params = stdio_params(tmp_path / "front", "--remotes-file", str(remotes_file))
        winner = {"back": {"url": url, "token_env": "BACK_TOKEN"}}
        params.env = {**(params.env or {}), "BACK_TOKEN": TOKEN, "MCP_SESSIONS_REMOTES": json.dumps(winner)}
        async with Client(params, mode="legacy") as client:
            text = await call_error(client, "create_session", driver="remote", remote="nowhere")
            assert "Known remotes: back, farm." in text, text
            s = await call(client, "create_session", driver="remote", remote="back")
            assert s["status"] == "ready" and s["sandbox"]["url"] == url, s
