"""A Docker engine restarted under a running server: nothing is lost and every session tells the truth.

The engine of the rest of the suite is shared, so this test starts a private `dockerd` of its own
(its own data root, exec root, socket and managed containerd), loads the sandbox image into it and
points a real server process at it through DOCKER_HOST. Without live-restore, stopping the engine
stops every container, so the test restarts it while one session runs a command, two sit idle (one
of them is sent a command while the engine is away) and the warm pool is full.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.app import server_id
from mcp_sessions.settings import Settings
from sandbox_backends.docker.container import LABEL_SERVER, POOL_PREFIX
from sandbox_backends.docker.disks import mounted_under

from .ci import unavailable
from .conftest import call, new_session, start_turn, stdio_params
from .docker_support import IMAGE, docker_engine  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

POOL = 2


class PrivateEngine:
    """A dockerd that only this test uses, under one short folder (unix socket paths are limited to 108 bytes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"unix://{root}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "dockerd.log"
        self.docker: Any = None
        """A docker SDK client of this engine, for what a person would check with `docker -H`."""

    def start(self) -> None:
        import docker

        args = [
            "dockerd",
            f"--data-root={self.root}/data",
            f"--exec-root={self.root}/exec",
            f"--pidfile={self.root}/docker.pid",
            f"--host={self.url}",
            "--bridge=none",
            "--iptables=false",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with docker.APIClient(base_url=self.url, version="auto", timeout=5) as api:
                    api.ping()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the private dockerd did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: it stops every container (no live-restore), then exits."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def destroy(self) -> None:
        """Stop it, then make sure no process, mount or file of it is left, whatever state it is in."""
        if self.docker is not None:
            self.docker.close()
        self.stop()
        marker = str(self.root).encode()
        for entry in os.scandir("/proc"):  # its containerd and shims name the folder on their command lines
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        if marker in f.read():
                            os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for mountpoint in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):  # itself last
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_engine(docker_engine: Any) -> Iterator[PrivateEngine]:  # noqa: F811
    """A running private dockerd with the sandbox image; skipped (failed under CI) where it cannot run."""
    if os.geteuid() != 0:
        unavailable("a private dockerd needs root")
    if shutil.which("dockerd") is None:
        unavailable("dockerd is not installed. Install it with scripts/start-docker.sh")
    root = Path(tempfile.mkdtemp(prefix="mcp-dockerd-", dir="/tmp"))
    # On a tmpfs if it may mount one: loading the image there takes a third of the time it takes on disk.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0700", "tmpfs", str(root)], check=False, capture_output=True)
    engine = PrivateEngine(root)
    try:
        engine.start()
        import docker

        engine.docker = docker.DockerClient(base_url=engine.url, version="auto")
        engine.docker.api.load_image(docker_engine.api.get_image(IMAGE))
        yield engine
    finally:
        engine.destroy()


async def last_turn_when_over(client: Client, sid: str, within: float = 30) -> dict[str, Any]:
    with anyio.fail_after(within):
        while (turn := (await call(client, "get_session", session_id=sid))["session"]["last_turn"])["status"] == "running":
            await anyio.sleep(0.1)
    return turn


def containers(engine: Any, settings: Settings) -> dict[str, str]:
    """Name -> state of this server's containers on the engine, as `docker ps -a` shows them."""
    found = engine.api.containers(all=True, filters={"label": f"{LABEL_SERVER}={server_id(settings)}"})
    return {c["Names"][0].lstrip("/"): c["State"] for c in found}


async def full_pool(engine: Any, settings: Settings) -> set[str]:
    """The warm pool's containers once it holds POOL running ones and nothing else."""
    with anyio.fail_after(30):
        while True:
            found = await anyio.to_thread.run_sync(containers, engine, settings)
            pool = {name: state for name, state in found.items() if name.startswith(POOL_PREFIX)}
            if len(pool) == POOL and set(pool.values()) == {"running"}:
                return set(pool)
            await anyio.sleep(0.1)


async def test_a_restarted_docker_engine_interrupts_the_running_turn_and_brings_every_sandbox_back(
    home: Path, private_engine: PrivateEngine
) -> None:
    settings = Settings(home=home)
    params = stdio_params(home, "--driver", "docker", "--image", IMAGE, "--docker-pool", str(POOL))
    params.env = {**(params.env or {}), "DOCKER_HOST": private_engine.url}
    engine = private_engine.docker
    async with Client(params, mode="legacy") as client:
        idle = await new_session(client, title="idle")
        assert (await call(client, "send_message", session_id=idle, text="echo kept > notes.txt && echo ok"))["output"] == "ok\n"
        disk = (await call(client, "get_session", session_id=idle))["session"]["sandbox"]["disk"]
        assert disk["mode"] == "hard", disk  # its workspace is a filesystem of its own, mounted from the state folder
        later = await new_session(client, title="sent a command while the engine is away")
        assert (await call(client, "send_message", session_id=later, text="echo mine > mine.txt && echo ok"))["output"] == "ok\n"
        busy = await new_session(client, title="busy")
        await start_turn(client, busy, "echo started; sleep 300", shown="started\n")
        old_pool = await full_pool(engine, settings)

        await anyio.to_thread.run_sync(private_engine.stop)
        with anyio.fail_after(10):  # the server answers while the engine is away
            listed = await call(client, "list_sessions")
            assert {s["id"]: s["status"] for s in listed["sessions"]} == {idle: "ready", later: "ready", busy: "busy"}
            waiting = await call(client, "send_message", session_id=later, text="cat mine.txt", wait_s=1)
            assert waiting["status"] == "busy", waiting
            refused = await call(client, "create_session", title="made while the engine is away")
            assert refused["status"] == "failed" and "Docker engine" in refused["failure_reason"], refused
        await anyio.to_thread.run_sync(private_engine.start)

        turn = await last_turn_when_over(client, busy)
        assert turn["status"] == "interrupted" and turn["reason"].startswith("docker engine restarted"), turn["reason"]
        assert turn["output"] == "started\n"
        transcript = (await client.read_resource(f"session://{busy}/transcript")).contents[0].text
        assert "sleep 300" in transcript and "started" in transcript and "docker engine restarted" in transcript
        turn = await last_turn_when_over(client, later)
        assert turn["status"] == "completed", turn["reason"]  # it ran once the engine was back
        assert turn["output"] == "mine\n"

        listed = await call(client, "list_sessions")
        statuses = {s["id"]: s["status"] for s in listed["sessions"]}
        assert statuses == {idle: "ready", later: "ready", busy: "ready", refused["id"]: "failed"}
        assert (await call(client, "send_message", session_id=idle, text="cat notes.txt"))["output"] == "kept\n"
        assert (await call(client, "send_message", session_id=busy, text="echo again"))["output"] == "again\n"
        fresh = await new_session(client, title="made after the restart")
        assert (await call(client, "send_message", session_id=fresh, text="echo new"))["output"] == "new\n"

        new_pool = await full_pool(engine, settings)
        assert not new_pool & old_pool, "the pool kept containers the engine had stopped"
        expected = {f"mcp-ses-{sid}": "running" for sid in (idle, later, busy, fresh)} | dict.fromkeys(new_pool, "running")
        with anyio.fail_after(15):  # anything the outage left half made goes once the engine is back
            while containers(engine, settings) != expected:
                await anyio.sleep(0.2)
        assert (await call(client, "send_message", session_id=idle, text="df --output=size -m . | tail -1"))["output"] != ""
        for sid in (idle, later, busy, fresh):
            assert (await call(client, "close_session", session_id=sid))["status"] == "dead"
    assert containers(engine, settings) == {}, "containers left behind after every session was closed"
    assert mounted_under(home) == [], "closed sessions' and the pool's workspace filesystems are still mounted"
    kept = sorted(p.name for p in (home / "docker" / "workspaces").glob("*.img"))
    volumes = engine.volumes.list(filters={"label": f"{LABEL_SERVER}={server_id(settings)}"})
    assert len(kept) == 4 and kept == sorted(f"{v.name}.img" for v in volumes), "only the closed sessions' workspaces stay"
