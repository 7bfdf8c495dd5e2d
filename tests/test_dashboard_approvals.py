"""Tool calls answered on the dashboard: a claude-code session with permission_mode="ask" (the real Claude Code
CLI, its model a scripted fake behind the server's model proxy, as in test_claude_code.py) waits on each
tool call; a person allows, edits or denies it on the session page, in Debian's chromium driven by
Playwright, while another page of the same session (a phone's) follows along.

The screenshot of a waiting call goes to .ci/artifacts/dashboard-approval.png.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from mcp_sessions.app import server_id
from mcp_sessions.settings import Settings

from . import test_dashboard
from .conftest import call
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401  (the docker param needs the engine)
from .fake_llm import FakeLLM, Reply, ToolCall
from .test_claude_code import KEY, MODEL, Inside, installed
from .test_dashboard import ARTIFACTS, HANG_S, signed_in
from .test_http import ALICE, BOB, TOKENS, mcp_client, running

pytestmark = pytest.mark.anyio

browser = test_dashboard.browser  # its fixture: chromium under Playwright

CARD = "#approvals .approval"
WAIT_MS = HANG_S * 1000


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    installed("claude-code")
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def served(request: pytest.FixtureRequest, home: Any, llm: FakeLLM) -> AsyncIterator[tuple[str, Settings, Any]]:
    """The server under uvicorn with two owners' tokens, its sessions claude-code on the local driver or on
    docker; yields its URL, its settings and the docker engine (None: local)."""
    engine = request.getfixturevalue("docker_engine") if request.param == "docker" else None
    settings = Settings(
        home=home, driver=request.param, image=IMAGE, agent="claude-code", claude_code_base_url=llm.url, claude_code_api_key=KEY
    )
    try:
        async with running(settings, TOKENS) as (url, _):
            yield url, settings, engine
    finally:
        if engine is not None:
            remove_labelled(engine, server_id(settings))


def bash(command: str) -> ToolCall:
    return ToolCall("Bash", {"command": command, "description": "write"})


async def said_in_transcript(page: Any, text: str) -> None:
    await page.wait_for_function(
        "t => [...document.querySelectorAll('#transcript .text')].some(n => n.textContent === t)", arg=text, timeout=WAIT_MS
    )


async def asked(page: Any, command: str) -> str:
    """The request id of the call the page shows waiting, once it shows the one that runs `command`."""
    await page.wait_for_function(
        "c => [...document.querySelectorAll('#approvals .approval-input pre')].some(n => n.textContent === c)",
        arg=command,
        timeout=WAIT_MS,
    )
    return str(await page.get_attribute(CARD, "data-request"))


async def test_a_waiting_tool_call_is_allowed_edited_and_denied_on_the_page_and_every_page_follows(
    served: tuple[str, Settings, Any],
    browser: Any,
    llm: FakeLLM,
) -> None:
    server, settings, engine = served
    llm.script(
        Reply(tool_calls=[bash("echo hello > hi.txt")]),
        Reply(tool_calls=[bash("echo draft > draft.txt")]),
        Reply(text="Allowed and edited."),
        Reply(tool_calls=[bash("echo bye > bye.txt")]),
        Reply(text="It was denied."),
        Reply(tool_calls=[bash("echo never > never.txt")]),
    )
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session", model=MODEL, permission_mode="ask"))["id"]
        look = Inside(settings.driver, settings.home, sid, engine)
        page = await signed_in(browser, server, ALICE)
        phone = await signed_in(browser, server, ALICE, width=390, height=844)  # a second page, on a phone
        for p in (page, phone):
            await p.goto(f"{server}/ui/sessions/{sid}")
            await p.wait_for_selector("#state .status-ready", timeout=WAIT_MS)

        # Allow: the prompt shows the tool and its input; once answered it leaves every page, and the tool runs
        await call(alice, "send_message", session_id=sid, text="write two files", wait_s=0)
        first = await asked(page, "echo hello > hi.txt")
        assert await page.inner_text(f"{CARD} .tool-name") == "Bash"
        await asked(phone, "echo hello > hi.txt")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await phone.screenshot(path=str(ARTIFACTS / "dashboard-approval.png"))
        assert await look.sh("ls") == ""  # nothing ran before the answer
        await page.click(f"{CARD} button.allow")
        # the same turn asks again: the answered call has left every page, the next one shows
        for p in (page, phone):
            second = await asked(p, "echo draft > draft.txt")
            assert second != first and await p.eval_on_selector_all(CARD, "cs => cs.length") == 1
        assert await look.sh("cat hi.txt") == "hello\n"
        events = await page.inner_text("#events")
        assert "approval.requested" in events and '"behavior":"allow"' in events  # the answer shows among the events

        # Allow with edited input: what is not a JSON object is refused on the page, saying why
        await page.click(f"{CARD} details summary")
        for typed, said in (("{not json", "not valid JSON"), ('["echo"]', "must be a JSON object")):
            await page.fill(f"{CARD} textarea", typed)
            await page.click(f"{CARD} button.allow-edited")
            assert said in await page.inner_text(f"{CARD} .approval-note")
        await page.fill(f"{CARD} textarea", json.dumps({"command": "echo edited > edited.txt", "description": "write"}))
        await page.click(f"{CARD} button.allow-edited")
        for p in (page, phone):
            await p.wait_for_selector(CARD, state="detached", timeout=WAIT_MS)
            await said_in_transcript(p, "Allowed and edited.")
        assert await look.sh("ls") == "edited.txt\nhi.txt\n"  # what ran is the edited command

        # Deny, with a message: another owner cannot answer in her stead; the model reads her reason
        await call(alice, "send_message", session_id=sid, text="write bye.txt", wait_s=0)
        request_id = await asked(phone, "echo bye > bye.txt")
        async with httpx.AsyncClient(base_url=server, cookies={"mcp_sessions_token": BOB}) as as_bob:
            body = {"session_id": sid, "request_id": request_id, "decision": "allow"}
            refused = await as_bob.post("/api/v1/tools/answer_approval", json=body, headers={"X-MCP-Sessions-UI": "1"})
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "session_not_found", refused.text
        await phone.fill(f"{CARD} input[name=message]", "Not that file.")
        await phone.click(f"{CARD} button.deny")
        await page.wait_for_selector(CARD, state="detached", timeout=WAIT_MS)
        await said_in_transcript(phone, "It was denied.")
        assert "No such file" in await look.sh("cat bye.txt")
        results = [
            b
            for m in llm.requests[-1].body["messages"]
            if isinstance(m["content"], list)
            for b in m["content"]
            if b.get("type") == "tool_result"
        ]
        assert results[-1]["is_error"] and "Not that file." in json.dumps(results[-1]["content"])
        await page.wait_for_function(
            "() => document.getElementById('events').textContent.includes('\"behavior\":\"deny\"')", timeout=WAIT_MS
        )

        # A turn that ends takes its waiting call away with it
        await call(alice, "send_message", session_id=sid, text="write never.txt", wait_s=0)
        await asked(page, "echo never > never.txt")
        await phone.click("#interrupt")
        for p in (page, phone):
            await p.wait_for_selector(CARD, state="detached", timeout=WAIT_MS)
        assert (await call(alice, "get_session", session_id=sid, wait_s=HANG_S))["session"]["last_turn"][
            "status"
        ] == "interrupted"
