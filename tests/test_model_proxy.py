"""The model proxy on its own, for each API it speaks: real HTTP from a client to the proxy (served on a
loopback listener here, as a sandbox's stream would reach it) and from the proxy to a fake model server.
The Anthropic dialect with a real CLI in a sandbox: tests/test_claude_code.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute
from mcp import Client

from mcp_sessions.agents.cli.proxy import ANTHROPIC, OPENAI, PLACEHOLDER_KEY, Dialect, ModelProxy, ProxyTurn, Upstream
from mcp_sessions.agents.pricing import PriceTable
from mcp_sessions.models import Usage
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call
from .fake_llm import Fail, FakeLLM, Reply
from .test_claude_code import installed

pytestmark = pytest.mark.anyio

KEY = "sk-real-" + "3" * 30


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@asynccontextmanager
async def served(llm: FakeLLM, dialect: Dialect) -> AsyncIterator[tuple[str, ModelProxy, ProxyTurn]]:
    """A proxy to `llm` in `dialect`, with a turn running, on a loopback listener: its URL, it, its turn."""
    async with httpx.AsyncClient() as upstream, anyio.create_task_group() as tg:
        base = llm.openai_base_url if dialect is OPENAI else llm.url
        proxy = ModelProxy(Upstream(base, KEY, dialect, "MODEL_KEY_VAR"), PriceTable.load(), lambda: upstream)
        turn = proxy.turn = ProxyTurn(Usage())
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        tg.start_soon(listener.serve, proxy.handle)
        yield f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}", proxy, turn
        tg.cancel_scope.cancel()


async def sse_of(base: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    """The data events of a streamed answer through the proxy."""
    events = []
    async with httpx.AsyncClient(base_url=base) as client, client.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


async def test_chat_completions_through_the_proxy_carry_the_key_and_their_usage_is_counted(llm: FakeLLM) -> None:
    llm.script(Reply(text="Hello there.", input_tokens=70, cache_read_tokens=30, output_tokens=9))
    async with served(llm, OPENAI) as (base, _, turn):
        body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        events = await sse_of(base, "/v1/chat/completions", body, {"authorization": f"Bearer {PLACEHOLDER_KEY}"})
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text == "Hello there."
    (request,) = llm.requests
    assert request.headers["authorization"] == f"Bearer {KEY}" and PLACEHOLDER_KEY not in json.dumps(request.headers)
    assert request.body["stream_options"] == {"include_usage": True}  # asked for, so the usage can be counted
    usage = turn.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (70, 30, 9)
    assert usage.cost_usd == pytest.approx((70 * 2.5 + 30 * 1.25 + 9 * 10.0) / 1e6)
    assert turn.requests == 1


async def test_responses_through_the_proxy_have_their_usage_counted(llm: FakeLLM) -> None:
    llm.script(Reply(text="Done.", input_tokens=120, cache_read_tokens=20, output_tokens=15))
    async with served(llm, OPENAI) as (base, _, turn):
        body = {"model": "gpt-4.1", "stream": True, "input": "hi"}
        events = await sse_of(base, "/v1/responses", body, {"authorization": f"Bearer {PLACEHOLDER_KEY}"})
    assert events[-1]["type"] == "response.completed"
    assert llm.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert (turn.usage.input_tokens, turn.usage.cache_read_tokens, turn.usage.output_tokens) == (120, 20, 15)
    assert turn.usage.cost_by_model == {"gpt-4.1": pytest.approx((120 * 2.0 + 20 * 0.5 + 15 * 8.0) / 1e6)}


@pytest.mark.parametrize("dialect", [ANTHROPIC, OPENAI], ids=lambda d: d.name)
async def test_each_dialect_refuses_other_paths_and_requests_outside_a_turn_in_its_own_shape(
    llm: FakeLLM, dialect: Dialect
) -> None:
    other = "/v1/messages" if dialect is OPENAI else "/v1/chat/completions"
    async with served(llm, dialect) as (base, proxy, _):
        async with httpx.AsyncClient(base_url=base) as client:
            refused = await client.post(other, json={})
            proxy.turn = None
            allowed = sorted(dialect.paths)[-1][1]
            between = await client.post(allowed, json={"model": "m"})
    assert refused.status_code == 403 and between.status_code == 400
    for answer, words in ((refused, "not a model API path"), (between, "no turn")):
        error = answer.json()["error"]
        assert words in error["message"]
        assert (answer.json().get("type") == "error") is (dialect is ANTHROPIC)  # Anthropic's envelope, or OpenAI's
    assert llm.requests == []


@pytest.mark.parametrize("dialect", [ANTHROPIC, OPENAI], ids=["anthropic", "openai"])
async def test_a_key_the_upstream_refuses_fails_the_turn_saying_where_to_set_it_and_is_not_tried_again(
    llm: FakeLLM, dialect: Dialect
) -> None:
    llm.script(Fail(401, f"Incorrect API key provided: {KEY}"), Reply(text="never asked"))
    path = "/v1/messages" if dialect is ANTHROPIC else "/v1/chat/completions"
    async with served(llm, dialect) as (base, _, turn), httpx.AsyncClient(base_url=base) as client:
        first = await client.post(path, json={"model": "m", "messages": []})
        again = await client.post(path, json={"model": "m", "messages": []})
    # the API's own error is passed on, without the key it says back (the sandbox never holds it)
    assert first.status_code == 401 and "Incorrect API key provided: [redacted]" in json.dumps(first.json())
    assert turn.refused is not None and turn.refusal.is_set()
    assert "HTTP 401 (Incorrect API key provided: [redacted])" in turn.refused and KEY not in turn.refused
    assert "Set a valid key in MODEL_KEY_VAR where the server runs" in turn.refused
    assert again.status_code == 400 and turn.refused in again.json()["error"]["message"]
    assert len(llm.requests) == 1  # the retry was answered by the proxy


@pytest.mark.parametrize("agent", ["claude-code", "codex", "opencode"])
async def test_a_cli_whose_key_is_refused_fails_its_turn_at_once_saying_which_variable_to_set(home: Path, agent: str) -> None:
    """The real CLIs in local sandboxes. Claude Code retries a 401 with growing pauses for minutes (seven
    requests in 50 s here) and Codex five times: the proxy answers their retries itself."""
    installed(agent)
    with FakeLLM() as llm:
        llm.script(*[Fail(401, "invalid x-api-key")] * 20)
        keys = dict(claude_code_base_url=llm.url, claude_code_api_key=KEY, codex_base_url=llm.openai_base_url)
        keys |= dict(codex_api_key=KEY, opencode_base_url=llm.openai_base_url, opencode_api_key=KEY)
        async with Client(create_server(Settings(home=home, driver="local", agent=agent, **keys))) as client:
            model = None if agent == "claude-code" else "gpt-4.1"
            sid = (await call(client, "create_session", **({"model": model} if model else {})))["id"]
            reply = await call(client, "send_message", session_id=sid, text="hi", wait_s=50)
    variable = {"claude-code": "ANTHROPIC_API_KEY", "codex": "OPENAI_API_KEY", "opencode": "OPENAI_API_KEY"}[agent]
    assert reply["turn_status"] == "failed", reply
    assert "refused the request with HTTP 401 (invalid x-api-key)" in reply["reason"] and variable in reply["reason"], reply
    assert len(llm.requests) == 1


async def test_any_upstream_error_reaches_the_cli_without_the_key_it_quotes(llm: FakeLLM) -> None:
    llm.script(Fail(400, f"key {KEY} may not use model m"), Reply(text="Hello."))
    async with served(llm, ANTHROPIC) as (base, _, turn), httpx.AsyncClient(base_url=base) as client:
        error = await client.post("/v1/messages", json={"model": "m", "messages": []})
        fine = await client.post("/v1/messages", json={"model": "m", "messages": []})
    assert error.status_code == 400 and error.json()["error"]["message"] == "key [redacted] may not use model m"
    assert turn.refused is None and fine.status_code == 200  # not a refusal of the key: the turn goes on
