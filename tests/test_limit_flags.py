"""Limits given as flags to a real server process, as a user starts it: `--create-timeout`,
`--max-command-timeout` and `--max-file-bytes` (the settings objects behind them are tested elsewhere)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .asgi import serve
from .conftest import call, call_error, new_session, stdio_params

pytestmark = pytest.mark.anyio


def never_answers() -> Starlette:
    """A platform whose session create never answers, so a session made there stays `creating`."""

    async def create(request: Request) -> Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return Starlette(routes=[Route("/api/v1/sessions", create, methods=["POST"])])


async def test_create_timeout_fails_a_session_still_creating(home: Path) -> None:
    async with serve(never_answers()) as url:
        params = stdio_params(home, "--create-timeout", "2")
        slow = {"slow": {"url": url, "read_timeout_s": 120, "reconnect_s": 120}}
        params.env = {**(params.env or {}), "MCP_SESSIONS_REMOTES": json.dumps(slow)}
        async with Client(params, mode="legacy") as client:
            session = await call(client, "create_session", driver="remote", remote="slow", wait_s=30)
    assert session["status"] == "failed" and session["failure_reason"] == "creating timeout", session


async def test_max_command_timeout_caps_what_a_caller_may_ask_for(home: Path) -> None:
    async with Client(stdio_params(home, "--command-timeout", "3", "--max-command-timeout", "5"), mode="legacy") as client:
        text = await call_error(client, "create_session", command_timeout_s=10)
        assert "command_timeout_s 10 is over this server's maximum of 5 s" in text, text
        assert (await call(client, "create_session", command_timeout_s=5))["command_timeout_s"] == 5
        assert (await call(client, "create_session"))["command_timeout_s"] == 3


async def test_max_file_bytes_bounds_files_written_and_read_through_the_server(home: Path) -> None:
    async with Client(stdio_params(home, "--max-file-bytes", "2000"), mode="legacy") as client:
        text = await call_error(client, "create_session", files={"big.txt": "x" * 2001})
        assert "File 'big.txt' is over the 2000-byte limit" in text, text
        sid = await new_session(client, files={"small.txt": "x" * 2000})
        await call(client, "send_message", session_id=sid, text="head -c 2001 /dev/zero > made.bin")
        with pytest.raises(MCPError, match=re.escape("'made.bin' is 2001 bytes, over the 2000-byte limit")):
            await client.read_resource(f"session://{sid}/files/made.bin")
        assert (await client.read_resource(f"session://{sid}/files/small.txt")).contents[0].text == "x" * 2000
