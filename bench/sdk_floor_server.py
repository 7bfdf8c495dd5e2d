"""A bare MCP server with one trivial tool, served by the SDK over stdio.

bench_e2e.py times calls to it as the floor under any tool call made through the MCP Python SDK on
the machine: what a client and server spend on the protocol alone.
"""

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

server = MCPServer("sdk-floor")


class Pong(BaseModel):
    ok: bool
    n: int


@server.tool()
async def ping(n: int) -> Pong:
    """Answer at once."""
    return Pong(ok=True, n=n)


if __name__ == "__main__":
    server.run()
