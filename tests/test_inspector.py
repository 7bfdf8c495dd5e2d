"""The MCP Inspector CLI (an independent TypeScript client) driving the stdio server, one process per call,
as a new user would try it. Each call starts a fresh server on the same state folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ci import unavailable
from tests.test_tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
INSPECTOR = Path(os.environ.get("MCP_INSPECTOR", ROOT / ".ci/inspector/node_modules/.bin/mcp-inspector"))

if not INSPECTOR.exists():
    unavailable(f"the MCP Inspector CLI is not at {INSPECTOR}: run scripts/install-inspector.sh", allow_module_level=True)


class Inspector:
    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "MCP_SESSIONS_HOME": str(home)}

    def command(self, method: str, *args: str) -> list[str]:
        return [str(INSPECTOR), "--cli", sys.executable, "-m", "mcp_sessions", "--method", method, *args]

    def run(self, method: str, *args: str) -> dict[str, Any]:
        proc = subprocess.run(self.command(method, *args), env=self.env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def tool(self, name: str, **args: Any) -> dict[str, Any]:
        pairs = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items()]
        result = self.run("tools/call", "--tool-name", name, *(["--tool-arg", *pairs] if pairs else []))
        assert not result.get("isError"), result
        return result["structuredContent"]


@pytest.fixture
def inspector(tmp_path: Path) -> Inspector:
    return Inspector(tmp_path / "home")


def test_a_new_user_session_through_the_inspector_cli(inspector: Inspector) -> None:
    tools = inspector.run("tools/list")["tools"]
    assert {t["name"] for t in tools} == TOOLS
    assert all("outputSchema" in t for t in tools)

    session = inspector.tool("create_session", title="inspector")
    assert session["status"] == "ready"
    sid = session["id"]
    inspector.tool("send_message", session_id=sid, text="cd /tmp && export X=1")
    assert inspector.tool("send_message", session_id=sid, text="pwd; echo $X")["output"] == "/tmp\n1\n"

    send = subprocess.Popen(
        inspector.command("tools/call", "--tool-name", "send_message", "--tool-arg", f"session_id={sid}", "text=sleep 300"),
        env=inspector.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while inspector.tool("get_session", session_id=sid)["session"]["status"] != "busy":
        assert time.monotonic() < deadline, "the turn never started"
        time.sleep(0.2)
    stopped = inspector.tool("interrupt", session_id=sid)
    assert stopped["interrupted"] is True and stopped["status"] == "ready"
    reply = json.loads(send.communicate(timeout=60)[0])["structuredContent"]
    assert reply["turn_status"] == "interrupted"

    listed = inspector.tool("list_sessions", statuses=["ready"])
    assert [s["id"] for s in listed["sessions"]] == [sid]
    assert inspector.tool("close_session", session_id=sid)["status"] == "dead"
    assert inspector.tool("close_session", session_id=sid)["status"] == "dead"

    transcript = inspector.run("resources/read", "--uri", f"session://{sid}/transcript")["contents"][0]["text"]
    for said in ("cd /tmp && export X=1", "pwd; echo $X", "/tmp\n1", "sleep 300", "interrupted by the caller"):
        assert said in transcript


def test_the_inspector_sees_tool_errors(inspector: Inspector) -> None:
    result = inspector.run("tools/call", "--tool-name", "get_session", "--tool-arg", "session_id=ses_nope")
    assert result["isError"] is True
    assert "Call list_sessions" in result["content"][0]["text"]
