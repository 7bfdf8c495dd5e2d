"""Closing a paused session, by a caller or by its paused timer, on the local driver and on the real Docker
engine: the sandbox is closed where it lies, never run again to be closed (the engine's own event log of the
container says so: it is destroyed and not started), its workspace kept by a close and removed by a delete,
and nothing of it left mounted on the host; a session paused for its `paused_timeout_s` is closed with the
reason "paused timeout", one that asks for 0 stays paused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends.docker.disks import mounted_under

from .conftest import call, new_session, processes_marked
from .docker_support import docker_engine  # noqa: F401

pytestmark = pytest.mark.anyio

DRIVERS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(params=DRIVERS)
def driven(request: pytest.FixtureRequest, home: Path) -> Settings:
    """Settings of a server whose sessions run on the driver of this run."""
    if request.param == "docker":
        return request.getfixturevalue("docker_settings")  # type: ignore[no-any-return]
    return Settings(home=home, command_timeout_s=120)


async def paused(client: Client, **args: Any) -> dict[str, Any]:
    """A new session with a file in its workspace, paused (its sandbox stopped)."""
    sid = await new_session(client, **args)
    await call(client, "send_message", session_id=sid, text="echo kept > note.txt")
    session = await call(client, "pause_session", session_id=sid)
    assert session["status"] == "paused" and session["phase"] == "paused" and session["paused_at"], session
    return session


async def closed(client: Client, sid: str, within: float = 60) -> dict[str, Any]:
    """The session once it is closed."""
    with anyio.fail_after(within):
        while (session := (await call(client, "get_session", session_id=sid))["session"])["status"] != "dead":
            await anyio.sleep(0.1)
    return session


async def container_events(container: str, since: float, within: float = 30) -> list[str]:
    """What the engine logged of the container since `since` (its event log, which keeps a removed container's
    history), once that includes its removal."""
    import docker

    engine = docker.from_env()
    try:
        with anyio.fail_after(within):
            while True:
                logged = engine.api.events(
                    since=f"{since:.6f}", until=f"{time.time():.6f}", filters={"container": container}, decode=True
                )
                actions = [e.get("Action") or e.get("status") for e in logged]
                if "destroy" in actions:
                    return actions
                await anyio.sleep(0.1)
    finally:
        engine.close()


def volume_exists(name: str) -> bool:
    import docker

    engine = docker.from_env()
    try:
        engine.api.inspect_volume(name)
        return True
    except docker.errors.NotFound:
        return False
    finally:
        engine.close()


async def check_closed_where_it_lay(settings: Settings, session: dict[str, Any], since: float, delete: bool) -> None:
    """What a person checks after a paused session was closed: its container removed without a start since it was
    paused (docker), no process of it running (local), its workspace kept or removed, nothing left mounted."""
    if session["driver"] == "docker":
        actions = await container_events(session["sandbox"]["id"], since)
        assert "start" not in actions, actions
        assert volume_exists(session["sandbox"]["volume"]) is not delete
        assert mounted_under(settings.home) == [], "the closed workspace's filesystem is still mounted"
    else:
        assert processes_marked(session["id"]) == []
        assert Path(session["workspace"], "note.txt").exists() is not delete


@pytest.mark.parametrize("delete", [False, True], ids=["close", "delete"])
async def test_closing_a_paused_session_does_not_run_its_sandbox_again(driven: Settings, delete: bool) -> None:
    async with Client(create_server(driven)) as client:
        session = await paused(client)
        since = time.time()
        reply = await call(client, "close_session", session_id=session["id"], delete=delete)
        assert reply["status"] == "dead" and reply["deleted"] is delete
        await check_closed_where_it_lay(driven, session, since, delete)
        if not delete:
            assert (await call(client, "get_session", session_id=session["id"]))["session"]["close_reason"] == "closed"


async def test_a_session_paused_for_its_paused_timeout_is_closed(driven: Settings) -> None:
    async with Client(create_server(driven)) as client:
        session = await paused(client, paused_timeout_s=1)
        since = time.time()
        assert session["paused_timeout_s"] == 1
        ended = await closed(client, session["id"])
        assert ended["close_reason"] == "paused timeout"
        await check_closed_where_it_lay(driven, session, since, delete=False)


async def test_the_servers_paused_timeout_applies_and_zero_means_never(home: Path) -> None:
    async with Client(create_server(Settings(home=home, paused_timeout_s=1))) as client:
        never = await paused(client, paused_timeout_s=0)
        first = await paused(client)
        assert first["paused_timeout_s"] == 1 and never["paused_timeout_s"] == 0
        await closed(client, first["id"])
        # Paused after `first` was closed, so closed by a later pass of the timer than the one that closed
        # `first`, which `never` would have been due by, had it a paused timeout.
        later = await paused(client)
        assert (await closed(client, later["id"]))["close_reason"] == "paused timeout"
        kept = (await call(client, "get_session", session_id=never["id"]))["session"]
        assert kept["status"] == "paused" and kept["phase"] == "paused"
        reply = await call(client, "send_message", session_id=never["id"], text="cat note.txt", wait_s=60)
        assert reply["output"] == "kept\n"
