"""JSON-RPC and MCP at the protocol level, as the official conformance suite checks them: what the server
advertises is what it serves, and malformed messages get the error codes JSON-RPC names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import ERAS, stdio_params

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ERAS)
async def test_no_prompts_are_advertised_and_asking_for_one_is_method_not_found(settings: Settings, mode: str) -> None:
    async with Client(create_server(settings), mode=mode) as client:
        assert client.server_capabilities.prompts is None
        assert client.server_capabilities.tools is not None and client.server_capabilities.resources is not None
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("anything")
        assert refused.value.error.code == -32601
        with pytest.raises(MCPError) as refused:
            await client.list_prompts()
        assert refused.value.error.code == -32601


@pytest.mark.parametrize("mode", ERAS)
async def test_the_tool_list_is_not_announced_as_changing(settings: Settings, mode: str) -> None:
    """The tools are fixed: no era advertises tools/list_changed (2026-07-28 would, as the SDK derives it
    from subscriptions/listen, which is served for the resources' changes, and those are announced)."""
    async with Client(create_server(settings), mode=mode) as client:
        capabilities = client.server_capabilities
        assert capabilities.tools is not None and not capabilities.tools.list_changed
        assert capabilities.resources is not None and capabilities.resources.list_changed


BAD_LINES = [
    b"not json",
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
    b'{"jsonrpc":"2.0","id":7,"method":5}',
    b'{"jsonrpc":"2.0","id":2,"method":"ping"}',
]
EXPECTED = [(None, -32700), (None, -32600), (7, -32600), (2, None)]
"""What each line gets: (id, error code), None for a result. The last, good one shows the server goes on."""


def answers(out: bytes) -> list[tuple[object, object]]:
    replies = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [(r.get("id"), (r.get("error") or {}).get("code")) for r in replies]


async def test_stdio_answers_lines_that_are_not_messages(home: Path) -> None:
    params = stdio_params(home)
    async with await anyio.open_process([params.command, *params.args], env=params.env) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(b"\n".join(BAD_LINES) + b"\n")
        out = b""
        with anyio.fail_after(30):
            while out.count(b"\n") < len(EXPECTED):
                out += await proc.stdout.receive()
        await proc.stdin.aclose()
    assert answers(out) == EXPECTED, out


def test_stdio_from_files_answers_them_too(home: Path, tmp_path: Path) -> None:
    """stdin and stdout that are files are served by the SDK's own transport: the same errors (it keeps no
    line, so no id). The good line is left out: at the end of a file the SDK stops before it answers."""
    params = stdio_params(home)
    source, sink = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"\n".join(BAD_LINES[:3]) + b"\n")
    with source.open("rb") as stdin, sink.open("wb") as stdout:
        subprocess.run([params.command, *params.args], env=params.env, stdin=stdin, stdout=stdout, timeout=60, check=True)
    assert answers(sink.read_bytes()) == [(None, -32700), (None, -32600), (None, -32600)]


async def test_http_answers_bodies_that_are_not_messages(settings: Settings) -> None:
    """POST /mcp in the handshake era (the SDK's own answer to a batch was -32602 with a pydantic dump)."""
    from .test_http import running

    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with running(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        got = []
        for body in BAD_LINES[:3]:
            r = await http.post("/mcp", content=body)
            assert r.status_code == 400, r.text
            got.append((r.json()["id"], r.json()["error"]["code"]))
            if r.json()["error"]["code"] == -32600:
                assert r.json()["error"]["message"].startswith("Invalid Request: ") and "\n" not in r.text
        assert got == EXPECTED[:3]
        r = await http.post("/mcp", content=b"[]")
        assert r.json()["error"] == {
            "code": -32600,
            "message": "Invalid Request: batches (JSON arrays) are not supported; send one JSON-RPC message per request.",
        }
        initialize = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }
        r = await http.post("/mcp", json=initialize, headers={"Accept": "application/json, text/event-stream"})
        assert r.status_code == 200 and '"id":2' in r.text and "serverInfo" in r.text  # the body reached the SDK whole
