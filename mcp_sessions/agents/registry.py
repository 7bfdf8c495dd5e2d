"""Agents by name. Like drivers (`sandbox_backends/registry.py`): each agent declares itself with one
`AgentPlugin` object; built-ins are listed here, other packages add theirs through the entry-point group
`mcp_sessions.agents`:

    [project.entry-points."mcp_sessions.agents"]
    aider = "my_package.aider:plugin"
"""

from __future__ import annotations

from sandbox_backends.registry import discover

from .base import AgentPlugin

ENTRY_POINT_GROUP = "mcp_sessions.agents"
BUILTIN = {
    "shell": "mcp_sessions.agents.shell:plugin",
    "llm": "mcp_sessions.agents.llm:plugin",
    "remote": "mcp_sessions.agents.remote:plugin",
    "claude-code": "mcp_sessions.agents.cli.claude_code:plugin",
    "codex": "mcp_sessions.agents.cli.codex:plugin",
    "opencode": "mcp_sessions.agents.cli.opencode:plugin",
}


def agents() -> dict[str, AgentPlugin]:
    """Every known agent plugin by name."""
    return discover(ENTRY_POINT_GROUP, BUILTIN, AgentPlugin)
