"""Sessions on the docker driver through real MCP clients and a real engine."""

from __future__ import annotations

import io
import secrets
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import ERAS, call, call_error, new_session, stdio_params
from .docker_support import IMAGE, docker_engine  # noqa: F401
from .test_stdio import kill_server

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def containers_of(engine: Any, session_id: str) -> list[Any]:
    return engine.containers.list(all=True, filters={"name": f"mcp-ses-{session_id}"})


async def wait_for(client: Client, sid: str, status: str, within: float = 10) -> dict[str, Any]:
    with anyio.fail_after(within):
        while (session := (await call(client, "get_session", session_id=sid))["session"])["status"] != status:
            await anyio.sleep(0.1)
    return session


@pytest.mark.parametrize("mode", ERAS)
async def test_a_docker_session_end_to_end(docker_settings: Settings, docker_engine: Any, mode: str) -> None:  # noqa: F811
    async with Client(create_server(docker_settings), mode=mode) as client:
        session = await call(client, "create_session", files={"notes/todo.txt": "ship it\n"}, limits={"memory_mb": 256})
        assert session["status"] == "ready" and session["driver"] == "docker" and session["workspace"] == "/workspace"
        assert session["sandbox"]["limits"]["memory_mb"] == 256
        sid = session["id"]
        await call(client, "send_message", session_id=sid, text="cd /tmp && export X=1")
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $X; id -u; cat /workspace/notes/todo.txt")
        assert reply["output"] == "/tmp\n1\n1000\nship it\n"
        assert (await call(client, "send_message", session_id=sid, text="ls /sys/class/net"))["output"] == "lo\n"
        text = (await client.read_resource(f"session://{sid}/files/notes/todo.txt")).contents[0].text
        assert text == "ship it\n"
        with pytest.raises(MCPError, match="Unknown resource"):  # the URI template takes no dot segments
            await client.read_resource(f"session://{sid}/files/../../etc/passwd")
        await call(client, "send_message", session_id=sid, text="ln -s /etc/passwd /workspace/notes/pw")
        with pytest.raises(MCPError, match="resolves outside the workspace"):  # the driver refuses the rest
            await client.read_resource(f"session://{sid}/files/notes/pw")

        busy = await call(client, "send_message", session_id=sid, text="sleep 300 & setsid sleep 301 & sleep 302", wait_s=1)
        assert busy["status"] == "busy"
        stopped = await call(client, "interrupt", session_id=sid)
        assert stopped["interrupted"] and stopped["status"] == "ready"
        left = await call(client, "send_message", session_id=sid, text="ps -eo args= | grep -c '^sleep 30' || true")
        assert left["output"].strip() == "0"
        await call(client, "close_session", session_id=sid)
        assert containers_of(docker_engine, sid) == []


async def test_a_container_removed_behind_the_servers_back_fails_its_session(
    docker_settings: Settings,
    docker_engine: Any,  # noqa: F811
) -> None:
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client)
        (container,) = containers_of(docker_engine, sid)
        await anyio.to_thread.run_sync(lambda: container.remove(force=True))
        session = await wait_for(client, sid, "failed", within=5)
        assert session["failure_reason"] == "sandbox removed"
        assert "failed (sandbox removed)" in await call_error(client, "send_message", session_id=sid, text="true")


async def test_an_image_without_python3_fails_its_session_saying_so(docker_settings: Settings, docker_engine: Any) -> None:  # noqa: F811
    dockerfile = f"FROM {IMAGE}\nUSER root\nRUN rm -f /usr/bin/python3*\nUSER 1000\n"
    # A tag of this run's own: every build is the same image, and test runs on a shared engine must not remove
    # it under each other (removing it by id did, and timed out while another run removed it too).
    tag = f"mcp-sessions-test-nopython:{secrets.token_hex(4)}"
    await anyio.to_thread.run_sync(lambda: docker_engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True))
    try:
        async with Client(create_server(docker_settings), mode="legacy") as client:
            session = await call(client, "create_session", image=tag)
            assert session["status"] == "failed"
            assert session["failure_reason"].endswith("the docker driver needs bash and python3 in the image."), session
    finally:
        await anyio.to_thread.run_sync(lambda: docker_engine.images.remove(tag, force=True))  # the image goes with its last tag


async def test_limits_over_the_servers_maximum_are_refused(docker_settings: Settings) -> None:
    async with Client(create_server(docker_settings), mode="legacy") as client:
        error = await call_error(client, "create_session", limits={"memory_mb": 100_000})
        assert "limits.memory_mb=100000 is over this server's maximum of 8192" in error, error
        assert (await call(client, "list_sessions"))["sessions"] == [], "refused before anything was made"


async def test_a_killed_server_reattaches_its_container(docker_settings: Settings, docker_engine: Any) -> None:  # noqa: F811
    home = docker_settings.home
    env = ["--driver", "docker", "--image", IMAGE]
    async with Client(stdio_params(home, *env), mode="legacy") as client:
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text="cd /tmp && export KEEP=yes && echo made > /workspace/f")
        busy = await call(client, "send_message", session_id=sid, text="echo partial; sleep 300", wait_s=1)
        assert busy["status"] == "busy"
        await kill_server(home)
    (before,) = containers_of(docker_engine, sid)
    async with Client(stdio_params(home, *env), mode="legacy") as client:
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["status"] == "ready"
        assert session["last_turn"]["status"] == "interrupted" and session["last_turn"]["reason"] == "server restarted"
        assert session["last_turn"]["output"] == "partial\n"
        reply = await call(
            client, "send_message", session_id=sid, text="pwd; echo $KEEP; cat /workspace/f; pgrep -fc '^sleep 300' || true"
        )
        assert reply["output"] == "/tmp\nyes\nmade\n0\n"
    (after,) = containers_of(docker_engine, sid)
    assert after.id == before.id


async def test_sessions_from_the_warm_pool(docker_settings: Settings, docker_engine: Any) -> None:  # noqa: F811
    settings = docker_settings.replace(docker_pool=2)
    async with Client(create_server(settings), mode="legacy") as client:
        first = await new_session(client)
        with anyio.fail_after(30):
            while len(warm := docker_engine.containers.list(filters={"label": "mcp-sessions.pool=1", "name": "mcp-pool-"})) < 2:
                await anyio.sleep(0.2)
        second = await new_session(client)
        (container,) = containers_of(docker_engine, second)
        assert container.id in {c.id for c in warm}, "the session got a new container, not one of the warm pool's"
        assert (await call(client, "send_message", session_id=second, text="echo pooled"))["output"] == "pooled\n"
        for sid in (first, second):
            await call(client, "close_session", session_id=sid, delete=True)


async def test_a_closed_session_deleted_later_leaves_no_volume(docker_settings: Settings, docker_engine: Any) -> None:  # noqa: F811
    """close, then close(delete=true): the workspace volume the close kept goes too, whether the session's
    container was made for it or claimed from the warm pool (whose volume has the pool's name)."""
    settings = docker_settings.replace(docker_pool=1)
    async with Client(create_server(settings), mode="legacy") as client:
        kinds: dict[bool, dict[str, Any]] = {}
        with anyio.fail_after(60):
            while len(kinds) < 2:  # the first create is made while the pool fills; a later one claims from it
                session = await call(client, "create_session")
                kinds.setdefault(session["sandbox"]["pooled"], session)
                await anyio.sleep(0.5)
        pooled, made = kinds[True], kinds[False]
        for session in (pooled, made):
            sid, volume = session["id"], session["sandbox"]["volume"]
            await call(client, "send_message", session_id=sid, text="echo kept > /workspace/f")
            await call(client, "close_session", session_id=sid)
            assert [v.name for v in docker_engine.volumes.list(filters={"name": volume})] == [volume]  # kept
            deleted = await call(client, "close_session", session_id=sid, delete=True)
            assert deleted["deleted"] is True
            assert docker_engine.volumes.list(filters={"name": volume}) == [], f"{volume} outlived the delete"
