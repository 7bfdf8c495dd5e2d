"""A driver, an agent and a tool added as a package: each one module and one entry point, nothing else.

The test plugins are installed through their entry points (tests/plugin_site.py), so what passes here is
what a third-party package gets: the registries find them, the server offers them to callers (flags,
schemas, descriptions, REST routes included), and sessions use them end to end, in this process and in a
server started as a subprocess.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

import httpx
import pytest
from mcp import Client

from mcp_sessions.agents.registry import agents
from mcp_sessions.http import build_app
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends import registry
from sandbox_backends.base import SandboxSpec
from sandbox_backends.registry import DriverContext
from tests.asgi import serve
from tests.plugin_site import PACKAGE, installed

from .conftest import call, call_error, new_session, stdio_params

pytestmark = pytest.mark.anyio


def test_the_memory_driver_is_found_by_its_entry_point(plugins_installed: Path) -> None:
    [point] = [ep for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP) if ep.name == "memory"]
    assert point.value == f"{PACKAGE}.memory.driver:plugin"
    assert point.dist is not None and point.dist.name == PACKAGE
    plugin = registry.drivers()["memory"]
    assert plugin.name == "memory" and plugin.summary
    assert Path(importlib.import_module(PACKAGE).__file__ or "").is_relative_to(plugins_installed)


def test_without_the_install_there_is_no_memory_driver() -> None:
    assert "memory" not in registry.drivers()
    with pytest.raises(ImportError):
        importlib.import_module(PACKAGE)


def test_uninstalling_takes_the_driver_away(tmp_path: Path) -> None:
    with installed(tmp_path / "site"):
        assert "memory" in registry.drivers()
    assert "memory" not in registry.drivers()
    assert not (tmp_path / "site").exists()
    with pytest.raises(ImportError):
        importlib.import_module(PACKAGE)


async def test_a_memory_session_runs_end_to_end_through_the_mcp_client(plugins_installed: Path, settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        sid = await new_session(client, driver="memory", files={"notes/hello.txt": "from create\n"})
        await call(client, "send_message", session_id=sid, text="cat notes/hello.txt; cd notes && export X=1")
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo X=$X; echo err >&2; exit 3")
        assert (reply["output"], reply["exit_code"]) == ("/workspace/notes\nX=1\nerr\n", 3)
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["driver"] == "memory" and session["sandbox"]["driver"] == "memory"
        assert session["turns"] == 2
        await call(client, "close_session", session_id=sid)
        assert "memory" in (await call_error(client, "create_session", driver="no-such-driver"))


async def test_a_server_subprocess_finds_the_installed_plugin(plugins_installed: Path, home: Path) -> None:
    async with Client(stdio_params(home)) as client:
        sid = await new_session(client, driver="memory")
        reply = await call(client, "send_message", session_id=sid, text="echo served by $HOME")
        assert reply["output"] == "served by /workspace\n"


async def test_the_memory_shell_fails_like_bash_on_what_it_does_not_know(plugins_installed: Path, tmp_path: Path) -> None:
    driver = registry.drivers()["memory"].make(None, DriverContext(home=tmp_path, server_id="plugins"))
    async with await driver.create(SandboxSpec(name="t")) as sb:
        r = await sb.exec("echo a | tr a b")
        assert r.exit_code == 2 and "not supported" in r.output
        r = await sb.exec("echo a; (echo b")
        assert r.exit_code == 2 and "syntax error" in r.output
        r = await sb.exec("grep -r x .")
        assert (r.exit_code, r.output) == (127, "memory: grep: command not found\n")


# -- an agent -------------------------------------------------------------------------------------


async def test_an_agent_plugin_is_offered_configured_and_prepares_its_sandbox(plugins_installed: Path, home: Path) -> None:
    assert "echo" in agents()
    settings = Settings(home=home, echo_greeting="hi from settings")  # its settings section, by keyword
    async with Client(create_server(settings)) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "create_session")
        props = tool.input_schema["properties"]
        assert "'echo': answers each message with the message" in props["agent"]["description"]
        assert props["prefix"]["description"] == "echo agent: put before every reply."
        assert props["system_prompt"]["description"] == (
            "llm, claude-code, codex, opencode agents: replaces the default system prompt; echo agent: said once, before the first reply."
        )

        sid = await new_session(client, driver="memory", agent="echo", prefix="> ", system_prompt="Be brief.")
        events = (await call(client, "get_session", session_id=sid, events_after=0))["events"]
        phases = [(e["data"]["phase"], e["data"].get("detail")) for e in events if e["type"] == "phase"]
        assert ("starting_agent", "writing the greeting") in phases and phases[-1] == ("ready", None)
        reply = await call(client, "send_message", session_id=sid, text="hello")
        assert reply["output"] == "hi from settings\nBe brief.\n> hello"
        reply = await call(client, "send_message", session_id=sid, text="again")
        assert reply["output"] == "> again"
        # what prepare wrote is in the sandbox, where every turn read it from
        assert (await client.read_resource(f"session://{sid}/files/.echo-greeting")).contents[0].text == "hi from settings"

        text = await call_error(client, "create_session", driver="memory", agent="shell", prefix="> ")
        assert "'prefix' is not an option of agent 'shell'" in text and "'prefix' is for the echo agent" in text
        text = await call_error(client, "create_session", driver="memory", agent="echo", provider="openai")
        assert "'provider' is not an option of agent 'echo' (it takes prefix, system_prompt)" in text
        assert "is for the llm agent" in text
        text = await call_error(client, "create_session", driver="memory", agent="echo", prefix="a\nb")
        assert "prefix must be one line" in text
        assert (await call(client, "list_sessions"))["total"] == 1  # the refused ones made nothing


async def test_an_agent_plugin_s_settings_are_flags_and_variables(plugins_installed: Path, home: Path) -> None:
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "mcp_sessions", "--help"], capture_output=True, text=True, check=True)
    assert "echo agent options:" in shown.stdout and "--echo-greeting" in shown.stdout
    params = stdio_params(home, "--echo-greeting", "from the flag")
    async with Client(params) as client:
        sid = await new_session(client, driver="memory", agent="echo")
        assert (await call(client, "send_message", session_id=sid, text="x"))["output"] == "from the flag\nx"
    params = stdio_params(home)
    params.env = {**(params.env or {}), "MCP_SESSIONS_ECHO_GREETING": "from the variable"}
    async with Client(params) as client:
        sid = await new_session(client, driver="memory", agent="echo")
        assert (await call(client, "send_message", session_id=sid, text="x"))["output"] == "from the variable\nx"


# -- a tool ---------------------------------------------------------------------------------------


async def test_a_tool_plugin_is_an_mcp_tool(plugins_installed: Path, settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "word_count")
        assert tool.description == "Count the words of a session's messages."
        assert tool.annotations is not None and tool.annotations.read_only_hint and tool.annotations.idempotent_hint
        assert set(tool.input_schema["properties"]) == {"session_id", "role"}
        assert tool.output_schema is not None and {"messages", "words"} <= set(tool.output_schema["properties"])
        sid = await new_session(client, driver="memory")
        await call(client, "send_message", session_id=sid, text="echo one two three")
        counted = await call(client, "word_count", session_id=sid)
        assert counted == {"session_id": sid, "messages": 2, "words": 7}  # "echo one two three" + "one two three"
        assert (await call(client, "word_count", session_id=sid, role="user"))["words"] == 4
        assert "ses_" + "0" * 32 in await call_error(client, "word_count", session_id="ses_" + "0" * 32)
        assert tool.input_schema["additionalProperties"] is False
        refused = await call_error(client, "word_count", session_id=sid, rol="user")
        assert refused == "Unknown argument 'rol' (did you mean 'role'?) for word_count, which takes only: session_id, role."


async def test_a_tool_plugin_is_a_rest_route_scoped_to_its_caller(plugins_installed: Path, settings: Settings) -> None:
    tokens = {"alice-token-0123456789": "alice", "bob-token-0123456789abc": "bob"}
    async with serve(build_app(settings, tokens), lifespan="on") as url:
        alice = httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer alice-token-0123456789"})
        bob = httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer bob-token-0123456789abc"})
        async with alice, bob:
            doc = (await alice.get("/api/v1/openapi.json")).json()
            assert doc["paths"]["/api/v1/tools/word_count"]["post"]["operationId"] == "word_count"
            ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
            assert len(ids) == len(set(ids)) and {"greet", "slow_compute"} <= set(ids)
            sid = (await alice.post("/api/v1/sessions", json={"driver": "memory"})).json()["id"]
            await alice.post(f"/api/v1/sessions/{sid}/messages", json={"text": "echo hi"})
            r = await alice.post("/api/v1/tools/word_count", json={"session_id": sid})
            assert r.status_code == 200 and r.json() == {"session_id": sid, "messages": 2, "words": 3}
            r = await bob.post("/api/v1/tools/word_count", json={"session_id": sid})
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
            r = await alice.post("/api/v1/tools/word_count", json={"session_id": sid, "role": "nobody"})
            assert r.status_code == 400 and "role" in r.json()["error"]["message"]


CLASHING_TOOL = """
from mcp_sessions.tools import ToolPlugin
from mcp_sessions_test_plugins.word_count_tool import count_words

list_files = ToolPlugin(name="list_files", run=count_words, title="Clash")
"""


def test_a_tool_plugin_named_like_a_rest_operation_is_refused_at_start(tmp_path: Path, settings: Settings) -> None:
    """Its route would share the operationId of GET .../files, and a client generated from the document
    would lose one of the two."""
    site = tmp_path / "site"
    with installed(site):
        (site / "clashing_tool.py").write_text(CLASHING_TOOL)
        info = site / "clashing_tool-0.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clashing-tool\nVersion: 0.0.0\n")
        (info / "entry_points.txt").write_text("[mcp_sessions.tools]\nlist_files = clashing_tool:list_files\n")
        importlib.invalidate_caches()
        try:
            with pytest.raises(registry.PluginError) as refused:
                build_app(settings)
        finally:
            sys.modules.pop("clashing_tool", None)
    said = str(refused.value)
    assert "'list_files' of POST /api/v1/tools/list_files is also that of GET /api/v1/sessions/{session_id}/files" in said
    assert "rename it" in said
