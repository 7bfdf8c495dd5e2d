"""mcp-sessions: an MCP server that runs agent sessions in sandboxes."""

__version__ = "0.1.0"
