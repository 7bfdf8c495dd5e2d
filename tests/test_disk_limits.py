"""Workspace size limits (`limits.disk_mb`) through real MCP and REST clients, on the real engine and locally.

A disk filler (`dd` of more than the limit) is stopped at the limit: on docker with a filesystem of the
workspace's own (this machine: the server runs as root next to its engine) the write fails with ENOSPC and
the turn is the command's; where the size is measured (docker told so, and the local driver) the turn
that passes it fails with the reason, a filler that keeps writing is stopped while it runs, and the next
turn can delete files. The limit shows in the session's `sandbox`; one over the server's maximum is
refused with the range; a deleted session leaves nothing on the host; a restarted server re-attaches.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from mcp_sessions.app import server_id
from mcp_sessions.http import build_app
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends.docker.disks import mounted_under

from .asgi import serve
from .conftest import call, call_error, new_session, stdio_params
from .docker_support import IMAGE, docker_engine, loop_devices_left, remove_labelled  # noqa: F401
from .test_stdio import kill_server

pytestmark = pytest.mark.anyio
HANG_S = 60.0
FILLER = "dd if=/dev/zero of=fill bs=1M count=100 2>&1; echo rc=$?"
ENDLESS = "for i in $(seq 64); do dd if=/dev/zero bs=1M count=8 2>/dev/null >> fill; sleep 0.05; done; sleep 600"
"""Writes 8 MiB every 0.05 s, and then goes on running: a turn that is not stopped holds 512 MiB at most (a test
of a broken guard does not fill the host)."""


def over(limit: int, used: int) -> str:
    return f"the workspace is over its {limit} MiB limit ({used} MiB used): delete files, then send the next message"


async def traces(home: Path, engine: Any) -> dict[str, object]:
    """What sessions left on the host: mounts and loop devices under the state folder, workspace images, volumes."""
    root = home / "docker" / "workspaces"
    images = sorted(p.name for p in root.glob("*.img")) if root.exists() else []
    volumes = [v.name for v in engine.volumes.list(filters={"label": f"mcp-sessions.server={server_id(Settings(home=home))}"})]
    return {"mounts": mounted_under(home), "loops": await loop_devices_left(home), "images": images, "volumes": volumes}


@pytest.mark.docker
async def test_a_docker_filler_fails_with_enospc_at_the_limit_and_the_session_goes_on(
    docker_settings: Settings,
    docker_engine: Any,  # noqa: F811
) -> None:
    async with Client(create_server(docker_settings), mode="legacy") as client:
        session = await call(client, "create_session", limits={"disk_mb": 64})
        assert session["status"] == "ready", session
        assert session["sandbox"]["disk"]["limit_mb"] == 64 and session["sandbox"]["disk"]["mode"] == "hard"
        sid = session["id"]
        reply = await call(client, "send_message", session_id=sid, text=FILLER)
        assert reply["turn_status"] == "completed" and "No space left on device" in reply["output"], reply
        assert reply["output"].endswith("rc=1\n")
        reply = await call(client, "send_message", session_id=sid, text="rm fill && df --output=avail -m . | tail -1")
        assert reply["turn_status"] == "completed" and 64 <= int(reply["output"]) <= 70, reply
        default = await call(client, "create_session")
        assert default["sandbox"]["disk"] == {**session["sandbox"]["disk"], "limit_mb": 4096}  # the server's default
        for made in (sid, default["id"]):
            await call(client, "close_session", session_id=made, delete=True)
    assert await traces(docker_settings.home, docker_engine) == {"mounts": [], "loops": [], "images": [], "volumes": []}


async def fills_and_recovers(client: Client, limit: int) -> None:
    """A session whose workspace size is measured: the turn that passes it fails with the reason, an endless filler
    is stopped while it runs, and the next turn can delete files."""
    session = await call(client, "create_session", limits={"disk_mb": limit})
    assert session["sandbox"]["disk"]["limit_mb"] == limit and session["sandbox"]["disk"]["mode"] == "measured", session
    sid = session["id"]
    reply = await call(client, "send_message", session_id=sid, text=FILLER)
    assert reply["turn_status"] == "failed" and reply["output"].endswith("rc=0\n"), reply
    assert reply["reason"] == over(limit, 100), reply
    after = await call(client, "get_session", session_id=sid)
    assert after["session"]["status"] == "ready"
    reply = await call(client, "send_message", session_id=sid, text="du -sm fill | cut -f1")
    assert reply["turn_status"] == "failed" and reply["reason"] == over(limit, 100), "still over: still failing"
    reply = await call(client, "send_message", session_id=sid, text="rm fill && echo gone")
    assert reply["turn_status"] == "completed" and reply["output"] == "gone\n" and reply.get("reason") is None, reply

    stopped = await call(client, "send_message", session_id=sid, text=ENDLESS, wait_s=HANG_S)
    assert stopped["turn_status"] == "failed", stopped
    assert stopped["reason"].startswith(f"the workspace is over its {limit} MiB limit ("), stopped
    sizes = [(await call(client, "send_message", session_id=sid, text="du -sm fill | cut -f1"))["output"] for _ in range(2)]
    assert sizes[0] == sizes[1], f"the filler kept writing after its turn was stopped: {sizes}"
    assert int(sizes[0]) < 512, "the filler was not stopped before it was done"
    assert (await call(client, "send_message", session_id=sid, text="rm fill; echo ok"))["turn_status"] == "completed"
    await call(client, "close_session", session_id=sid, delete=True)


@pytest.mark.docker
async def test_a_docker_turn_that_passes_a_measured_limit_fails_with_the_reason(
    docker_settings: Settings,
    docker_engine: Any,  # noqa: F811
) -> None:
    settings = docker_settings.replace(docker_disk="measured")
    async with Client(create_server(settings), mode="legacy") as client:
        await fills_and_recovers(client, 32)
    assert await traces(settings.home, docker_engine) == {"mounts": [], "loops": [], "images": [], "volumes": []}


async def test_a_local_turn_that_passes_the_limit_fails_with_the_reason(settings: Settings) -> None:
    async with Client(create_server(settings), mode="legacy") as client:
        await fills_and_recovers(client, 32)


@pytest.mark.parametrize("driver", [pytest.param("docker", marks=pytest.mark.docker), "local"])
async def test_a_size_over_the_servers_maximum_is_refused_with_the_range(
    request: pytest.FixtureRequest, settings: Settings, driver: str
) -> None:
    if driver == "docker":
        settings = request.getfixturevalue("docker_settings")
    capped = settings.replace(max_disk_mb=1024, default_disk_mb=64, local_max_disk_mb=1024, local_default_disk_mb=64)
    async with Client(create_server(capped), mode="legacy") as client:
        error = await call_error(client, "create_session", limits={"disk_mb": 2048})
        assert "limits.disk_mb=2048 is outside this server's range: ask for 16 to 1024 (MiB)" in error, error
        schema = await call_error(client, "create_session", limits={"disk_mb": 1 << 30})
        assert "disk_mb" in schema and "between 16 and 16777216" in schema, schema
        assert (await call(client, "list_sessions"))["sessions"] == [], "a refused session was made"
    async with serve(build_app(capped, {}), lifespan="on") as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as rest:
            r = await rest.post("/api/v1/sessions", json={"limits": {"disk_mb": 2048}})
            assert r.status_code == 400 and "ask for 16 to 1024 (MiB)" in r.json()["error"]["message"], r.text


@pytest.mark.docker
async def test_a_restarted_server_reattaches_a_limited_workspace_whose_mount_was_lost(
    home: Path,
    docker_engine: Any,  # noqa: F811
) -> None:
    params = stdio_params(home, "--driver", "docker", "--image", IMAGE)
    try:
        async with Client(params, mode="legacy") as client:
            sid = await new_session(client, limits={"disk_mb": 48})
            reply = await call(client, "send_message", session_id=sid, text="echo kept > notes && echo ok")
            assert reply["output"] == "ok\n"
            await kill_server(home)
        # What a reboot of the host leaves: the container stopped, its workspace's mount and loop device gone.
        (container,) = docker_engine.containers.list(filters={"name": f"mcp-ses-{sid}"})
        await anyio.to_thread.run_sync(lambda: container.stop(timeout=1))
        for point in mounted_under(home):
            subprocess.run(["umount", str(point)], check=True)
        assert await loop_devices_left(home) == []
        async with Client(params, mode="legacy") as client:
            reply = await call(client, "send_message", session_id=sid, text="cat notes; df --output=avail -m . | tail -1")
            found, free = reply["output"].split()
            assert found == "kept" and 48 <= int(free) <= 52, reply
            filler = await call(client, "send_message", session_id=sid, text=FILLER)
            assert "No space left on device" in filler["output"], filler
            session = (await call(client, "get_session", session_id=sid))["session"]
            assert session["sandbox"]["disk"]["mode"] == "hard" and session["sandbox"]["disk"]["limit_mb"] == 48
            await call(client, "close_session", session_id=sid, delete=True)
        assert await traces(home, docker_engine) == {"mounts": [], "loops": [], "images": [], "volumes": []}
    finally:
        remove_labelled(docker_engine, server_id(Settings(home=home)))
