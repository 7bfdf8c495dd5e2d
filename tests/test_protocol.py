"""JSON-RPC and MCP at the protocol level, as the official conformance suite checks them: what the server
advertises is what it serves, and malformed messages get the error codes JSON-RPC names."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import ERAS

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
