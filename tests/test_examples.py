"""The examples a new user starts from run, and do what they say."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from mcp_sessions.app import server_id
from mcp_sessions.settings import Settings

from .docker_support import docker_engine, remove_labelled  # noqa: F401
from .fake_llm import FakeLLM, Reply, ToolCall
from .test_tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLIENTS = EXAMPLES / "clients"
PLACEHOLDER = "/path/to/mcp-sessions/.venv/bin/mcp-sessions"
COMMAND = str(Path(sys.executable).parent / "mcp-sessions")


def run_orchestrator(home: Path, driver: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "orchestrator.py"), "--driver", driver, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    return proc.stdout


def check_orchestrator_summary(out: str) -> None:
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in out.splitlines() if "|" in line}
    assert rows["test shard 1/2"][2] == "ok" and rows["test shard 1/2"][4] == "OK"
    assert rows["count lines of code"][2] == "ok" and rows["count lines of code"][4] == "9 total"
    assert rows["build and run"][2] == "interrupted (deadline)"
    assert "built and running on linux" in out and "benchmark done" not in out
    assert "kept the fix 'a * b' of 2 tried in forks" in out
    # the subtasks ran as the parent's children; the bug's session and its two forks too (3 more turns)
    assert "tree: 7 sessions, 7 of 10 turns; 6 children deleted" in out


def test_the_orchestrator_example_on_the_local_driver(tmp_path: Path) -> None:
    check_orchestrator_summary(run_orchestrator(tmp_path / "home", "local"))


@pytest.mark.docker
def test_the_orchestrator_example_on_the_docker_driver(tmp_path: Path, docker_engine: Any) -> None:  # noqa: F811
    home = tmp_path / "home"
    try:
        check_orchestrator_summary(run_orchestrator(home, "docker"))
        left = docker_engine.containers.list(all=True, filters={"label": f"mcp-sessions.server={server_id(Settings(home=home))}"})
        assert left == [], "the example closes every session it made"
    finally:
        remove_labelled(docker_engine, server_id(Settings(home=home)))


def configs() -> list[tuple[str, dict[str, Any]]]:
    """(file, server entry) for every client example, each as its client would read it."""
    found = []
    desktop = json.loads((CLIENTS / "claude_desktop_config.json").read_text())
    found.append(("claude_desktop_config.json", desktop["mcpServers"]["sessions"]))
    vscode = json.loads((CLIENTS / ".vscode/mcp.json").read_text())
    assert vscode["servers"]["sessions"]["type"] == "stdio"
    found.append((".vscode/mcp.json", vscode["servers"]["sessions"]))
    cursor = json.loads((CLIENTS / ".cursor/mcp.json").read_text())
    found.append((".cursor/mcp.json", cursor["mcpServers"]["sessions"]))
    (line,) = [text for text in (CLIENTS / "claude-code.sh").read_text().splitlines() if text.startswith("claude ")]
    words = shlex.split(line)
    assert words[:4] == ["claude", "mcp", "add", "sessions"] and words[4] == "--"
    found.append(("claude-code.sh", {"command": words[5], "args": words[6:]}))
    return found


@pytest.mark.anyio
@pytest.mark.parametrize("name,entry", configs(), ids=[name for name, _ in configs()])
async def test_each_client_config_starts_a_server_that_lists_the_tools(
    name: str, entry: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert entry["command"] == PLACEHOLDER, "every example uses the same placeholder the README explains"
    home = tmp_path / "home"
    if "docker" in entry.get("args", []):
        engine = request.getfixturevalue("docker_engine")
        request.addfinalizer(lambda: remove_labelled(engine, server_id(Settings(home=home))))
    env = {**entry.get("env", {}), "MCP_SESSIONS_HOME": str(home)}
    params = StdioServerParameters(command=COMMAND, args=entry.get("args", []), env=env)
    async with Client(params, mode="legacy") as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert names == TOOLS


def run_delegate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "delegate_to_llm.py"), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_llm_example_says_what_to_set_without_a_provider() -> None:
    proc = run_delegate({})
    assert proc.returncode == 0
    assert "No model provider is configured" in proc.stdout and "OPENAI_API_KEY" in proc.stdout


def test_the_llm_example_fixes_the_bug_with_the_test_model_server(tmp_path: Path) -> None:
    fixed_order = "    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:"
    with FakeLLM() as llm:
        llm.script(
            Reply(text="Running the tests first.", tool_calls=[ToolCall("bash", {"command": "python3 -m unittest -q"})]),
            Reply(
                tool_calls=[
                    ToolCall(
                        "edit_file",
                        {
                            "path": "fizzbuzz.py",
                            "old_text": "    if n % 3 == 0:",
                            "new_text": fixed_order,
                        },
                    )
                ]
            ),
            Reply(tool_calls=[ToolCall("bash", {"command": "python3 -m unittest -q 2>&1; echo rc=$?"})]),
            Reply(text="Fixed: 15 is checked before 3 and 5, and the tests pass."),
        )
        proc = run_delegate(
            {"OPENAI_BASE_URL": llm.openai_base_url, "OPENAI_API_KEY": "sk-test-secret"},
            "--model",
            "gpt-4o-mini",
            "--home",
            str(tmp_path / "home"),
        )
        assert proc.returncode == 0, proc.stderr
        sent = json.dumps([r.body for r in llm.requests])
    out = proc.stdout
    assert "return 'FizzBuzz'\n    if n % 3 == 0:" in out.split("== fizzbuzz.py after the turn")[1]
    assert "rc=0" in out and "Fixed: 15 is checked" in out
    cost = float(out.split("cost $")[1].split()[0])
    assert cost == pytest.approx(4 * (100 * 0.15 + 20 * 0.6) / 1e6)  # four calls at gpt-4o-mini's listed price
    assert "(gpt-4o-mini: $" in out
    assert "sk-test-secret" not in out + proc.stderr and "sk-test-secret" not in sent
