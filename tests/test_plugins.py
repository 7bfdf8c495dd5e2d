"""A driver added as a package: one module with a `DriverPlugin` and one entry point, nothing else.

The test plugins are installed through their entry point (tests/plugin_site.py), so what passes here is
what a third-party package gets: the registry finds the driver, the server offers it to callers, and
sessions run on it end to end, in this process and in a server started as a subprocess.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends import registry
from sandbox_backends.base import SandboxSpec
from sandbox_backends.registry import DriverContext
from tests.plugin_site import PACKAGE, installed

from .conftest import call, call_error, new_session, stdio_params

pytestmark = pytest.mark.anyio


def test_the_memory_driver_is_found_by_its_entry_point(plugins_installed: Path) -> None:
    [point] = [ep for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP) if ep.name == "memory"]
    assert point.value == f"{PACKAGE}.memory_driver:plugin"
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
