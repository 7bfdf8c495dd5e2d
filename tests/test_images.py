"""Images sent with a message: they reach the llm agent's model in each provider's own form, stay in the
conversation as image blocks (placeholders where a model reads the session), and are refused, each with a
sentence naming the problem, when they are malformed, too many or too big, or the agent cannot see them; the
session stays usable. Claude Code and Codex get theirs in test_claude_code.py and test_codex.py."""
# ruff: noqa: F811  (the `llm` fixture imported from test_llm_agent is used by name)

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, types

from mcp_sessions.images import MAX_IMAGE_BYTES
from mcp_sessions.server import create_server

from .conftest import ERAS, call, call_error, new_session, stdio_params
from .fake_llm import FakeLLM, Reply
from .test_http import ALICE, TOKENS, http, mcp_client, running
from .test_llm_agent import ANTHROPIC_KEY, MODELS, llm, llm_settings, stored_messages  # noqa: F401
from .test_llm_providers import answering_client

pytestmark = pytest.mark.anyio


def png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real PNG image of one colour (a CLI may decode what it is given)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = base64.b64encode(png()).decode()
PNG_BLUE = base64.b64encode(png(3, 1, (20, 40, 220))).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)).decode()


def image(data: str = PNG, media_type: str = "image/png") -> dict[str, str]:
    return {"data": data, "media_type": media_type}


def big_png(size: int) -> str:
    """`size` bytes that start as a PNG does: enough for the server, which checks the header only."""
    return base64.b64encode(png() + bytes(size - len(png()))).decode()


def anthropic_images(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b["type"] == "image"]


@pytest.mark.parametrize("mode", ERAS)
async def test_an_image_reaches_the_anthropic_model_and_stays_in_the_conversation(home: Path, llm: FakeLLM, mode: str) -> None:
    llm.script(Reply(text="A red square."), Reply(text="Still red."))
    async with Client(create_server(llm_settings(home, llm)), mode=mode) as client:
        sid = await new_session(client, agent="llm", provider="anthropic", model=MODELS["anthropic"])
        reply = await call(client, "send_message", session_id=sid, text="What is this?", images=[image()], wait_s=30)
        assert reply["turn_status"] == "completed" and reply["output"] == "A red square.", reply
        second = await call(client, "send_message", session_id=sid, text="And now?", wait_s=30)
        assert second["output"] == "Still red."
        detail = await call(client, "get_session", session_id=sid, events_after=0)
        transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text

    first = llm.requests[0].body["messages"]
    source = {"type": "base64", "media_type": "image/png", "data": PNG}
    assert first == [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "source": source}]}
    ]
    assert anthropic_images(llm.requests[1].body) == [{"type": "image", "source": source}]  # the conversation keeps it

    size = len(png())
    stored = (await stored_messages(home, sid))[0]
    assert [b.model_dump() for b in stored.content] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "media_type": "image/png", "data": PNG},
    ]
    assert f"What is this?\n[image image/png, {size} bytes]" in transcript and PNG not in transcript
    shown = [b for m in detail["recent_messages"] for b in m["content"]]
    assert {"type": "text", "text": f"[image image/png, {size} bytes]"} in shown and PNG not in str(detail)
    started = next(e for e in detail["events"] if e["type"] == "turn.started")
    assert started["data"]["images"] == [{"media_type": "image/png", "bytes": size}]


async def test_images_reach_an_openai_style_model_through_rest_up_to_the_limits(home: Path, llm: FakeLLM) -> None:
    """Four images of the largest size, in one request body: the server's default limits take them."""
    llm.script(Reply(text="Four pictures."))
    biggest = big_png(MAX_IMAGE_BYTES)
    jpeg = image(JPEG, "image/jpeg")
    async with running(llm_settings(home, llm), TOKENS) as (url, _), http(url, ALICE) as c:
        created = await c.post("/api/v1/sessions", json={"agent": "llm", "provider": "openai", "model": MODELS["openai"]})
        sid = created.json()["id"]
        body = {"text": "Compare them.", "images": [image(biggest), image(biggest), image(biggest), jpeg]}
        sent = await c.post(f"/api/v1/sessions/{sid}/messages?wait_s=50", json=body)
        assert sent.status_code == 200 and sent.json()["output"] == "Four pictures.", sent.text[:500]
        view = (await c.get(f"/api/v1/sessions/{sid}")).json()

    user = llm.requests[0].body["messages"][1]
    assert user["content"][0] == {"type": "text", "text": "Compare them."}
    urls = [part["image_url"]["url"] for part in user["content"][1:]]
    assert urls == [f"data:image/png;base64,{biggest}"] * 3 + [f"data:image/jpeg;base64,{JPEG}"]
    # REST's whole conversation keeps the image blocks with their data; the recent messages, read by models, do not
    assert view["messages"][0]["content"][4] == {"type": "image", "media_type": "image/jpeg", "data": JPEG}
    assert biggest not in str(view["recent_messages"])


async def test_the_largest_images_cross_stdio_and_mcp_over_http(
    home: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message of four images of the largest size is one line of about 27 MB on stdio, one body on HTTP."""
    biggest = [image(big_png(MAX_IMAGE_BYTES))] * 4
    llm.script(Reply(text="over stdio"), Reply(text="over http"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    flags = ("--agent", "llm", "--llm-provider", "anthropic", "--anthropic-base-url", llm.url, "--model", MODELS["anthropic"])
    async with Client(stdio_params(home, *flags)) as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="look", images=biggest, wait_s=50)
        assert reply["output"] == "over stdio", reply
    async with running(llm_settings(home, llm, llm_provider="anthropic"), TOKENS) as (url, _):
        async with mcp_client(url, ALICE) as client:
            sid = await new_session(client, model=MODELS["anthropic"])
            reply = await call(client, "send_message", session_id=sid, text="look", images=biggest, wait_s=50)
            assert reply["output"] == "over http", reply
    for request in llm.requests:
        assert [b["source"]["data"] for b in anthropic_images(request.body)] == [biggest[0]["data"]] * 4


async def test_the_calling_clients_model_gets_the_image_through_sampling(home: Path, llm: FakeLLM) -> None:
    seen: list[types.CreateMessageRequestParams] = []
    settings = llm_settings(home, llm, llm_provider="sampling", model=None, openai_api_key=None, anthropic_api_key=None)
    async with answering_client(settings, "a square", seen) as client:
        sid = await new_session(client, agent="llm")
        reply = await call(client, "send_message", session_id=sid, text="look", images=[image()], wait_s=30)
    assert reply["output"] == "a square", reply
    content = seen[0].messages[0].content
    assert isinstance(content, list) and content[0] == types.TextContent(type="text", text="look")
    assert content[1] == types.ImageContent(type="image", data=PNG, mime_type="image/png")


REFUSALS = [
    ([image("not base64!")], "Image 1's data is not valid base64"),
    ([image(), image(JPEG)], "Image 2 is declared image/png, but its bytes are a JPEG image: set its media_type to image/jpeg"),
    ([image(base64.b64encode(b"hello world").decode())], "Image 1 is declared image/png, but its bytes are not a PNG, JPEG"),
    ([image()] * 5, "The message has 5 images; a message takes at most 4"),
    ([image(big_png(MAX_IMAGE_BYTES + 1))], "Image 1 is 5.0 MB, over the limit of 5.0 MB an image"),
    ([image(big_png(3 * MAX_IMAGE_BYTES))], "Image 1 is about 15.0 MB decoded, over the limit of 5.0 MB an image"),
]


async def test_bad_images_are_refused_over_mcp_with_a_sentence_and_the_session_goes_on(home: Path, llm: FakeLLM) -> None:
    llm.script(Reply(text="Fine."))
    async with Client(create_server(llm_settings(home, llm))) as client:
        sid = await new_session(client, agent="llm", provider="anthropic", model=MODELS["anthropic"])
        for images, said in REFUSALS:
            error = await call_error(client, "send_message", session_id=sid, text="look", images=images)
            assert said in error, error
        detail = await call(client, "get_session", session_id=sid)
        assert detail["session"]["status"] == "ready" and detail["session"]["turns"] == 0
        wrapped = "\n".join(PNG[i : i + 20] for i in range(0, len(PNG), 20))  # as MIME tools wrap base64
        reply = await call(client, "send_message", session_id=sid, text="look", images=[image(wrapped)], wait_s=30)
        assert reply["turn"] == 1 and reply["output"] == "Fine."
    (request,) = llm.requests
    assert anthropic_images(request.body)[0]["source"]["data"] == PNG


async def test_bad_images_are_refused_over_rest_with_a_status_and_a_sentence(home: Path, llm: FakeLLM) -> None:
    llm.script(Reply(text="Fine."))
    async with running(llm_settings(home, llm), TOKENS) as (url, _), http(url, ALICE) as c:
        created = await c.post("/api/v1/sessions", json={"agent": "llm", "provider": "anthropic", "model": MODELS["anthropic"]})
        sid = created.json()["id"]
        for images, said in REFUSALS:
            sent = await c.post(f"/api/v1/sessions/{sid}/messages", json={"text": "look", "images": images})
            assert sent.status_code in (400, 413) and said in sent.json()["error"]["message"], sent.text[:500]
        wrong_type = await c.post(f"/api/v1/sessions/{sid}/messages", json={"text": "look", "images": [image(PNG, "image/bmp")]})
        assert wrong_type.status_code == 400 and "media_type" in wrong_type.json()["error"]["message"]
        sent = await c.post(f"/api/v1/sessions/{sid}/messages?wait_s=30", json={"text": "look", "images": [image()]})
        assert sent.status_code == 200 and sent.json()["turn"] == 1 and sent.json()["output"] == "Fine."


async def test_an_agent_that_cannot_see_images_refuses_them_before_the_turn(home: Path, llm: FakeLLM) -> None:
    async with Client(create_server(llm_settings(home, llm, agent="shell"))) as client:
        sid = await new_session(client)
        error = await call_error(client, "send_message", session_id=sid, text="echo hi", images=[image()])
        assert "The shell agent" in error and "cannot see images" in error and "llm" in error, error
        assert (await call(client, "get_session", session_id=sid))["session"]["turns"] == 0
        assert (await call(client, "send_message", session_id=sid, text="echo hi"))["output"] == "hi\n"
    async with running(llm_settings(home, llm, agent="shell"), TOKENS) as (url, _), http(url, ALICE) as c:
        sid = (await c.post("/api/v1/sessions", json={})).json()["id"]
        sent = await c.post(f"/api/v1/sessions/{sid}/messages", json={"text": "echo hi", "images": [image()]})
        assert sent.status_code == 400 and "cannot see images" in sent.json()["error"]["message"]


async def test_a_message_with_images_does_not_wait_in_the_queue(home: Path, llm: FakeLLM) -> None:
    llm.script(Reply(text="thinking", hang=True), Reply(text="Now I see it."))
    async with Client(create_server(llm_settings(home, llm))) as client:
        sid = await new_session(client, agent="llm", provider="anthropic", model=MODELS["anthropic"])
        assert (await call(client, "send_message", session_id=sid, text="think", wait_s=0))["status"] == "busy"
        with anyio.fail_after(30):
            while not llm.requests:  # the model has the first turn's call: interrupting it cannot race its request
                await anyio.sleep(0.02)
        error = await call_error(client, "send_message", session_id=sid, text="look", images=[image()], queue=True)
        assert "cannot wait in the queue" in error and "get_session" in error, error
        await call(client, "interrupt", session_id=sid)
        with anyio.fail_after(30):
            while (await call(client, "get_session", session_id=sid, wait_s=5))["session"]["status"] != "ready":
                pass
        reply = await call(client, "send_message", session_id=sid, text="look", images=[image()], wait_s=30)
        assert reply["output"] == "Now I see it.", reply
    assert anthropic_images(llm.requests[-1].body)[0]["source"]["data"] == PNG
