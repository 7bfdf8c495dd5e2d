"""Fixtures for tests that need a Docker engine and the sandbox image.

`docker_engine` yields a connected docker SDK client. Without an engine or without the image the
test is skipped with the reason, except under CI (`CI=true`, `1` or `yes`, see tests/ci.py): there a
missing engine or image fails the test, so a broken CI machine cannot pass by skipping everything.

Every container and volume a test makes carries the label `mcp-sessions.server=<docker_server_id>`,
a per-run id; the session finalizer removes whatever is left with that label, workspace filesystems
(`sandbox_backends/docker/disks.py`) included, and the engine fixture's finalizer unmounts any still
mounted under the run's temporary folder.

Use from a test module (pytest fixtures are found by name, so import the ones the tests use):

    from tests.docker_support import docker_engine, docker_server_id, docker_driver, sandbox_factory  # noqa: F401

Tests of what must hold whatever the runtime take `isolation` (each runs under runc and under gVisor) and
make their sandboxes with `isolated_factory`, or their server with `RUNTIMES[isolation]` as its
`docker_runtime`. Without runsc registered the gVisor half skips, and fails under `CI=true`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_backends.base import Limits, SandboxSpec
from sandbox_backends.docker.container import DEFAULT_IMAGE, GVISOR_RUNTIME, LABEL_SERVER
from sandbox_backends.docker.disks import Disks, mounted_under
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox
from tests.ci import unavailable

IMAGE = os.environ.get("MCP_SESSIONS_TEST_IMAGE", DEFAULT_IMAGE)
RUNTIMES = {"runc": "runc", "gvisor": GVISOR_RUNTIME}
"""The engine runtime each `isolation` of the docker driver runs on, by default."""


def loop_devices_of(root: Path) -> list[str]:
    """Loop devices whose backing file is under `root`, as `losetup` lists them."""
    listed = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], capture_output=True, text=True)
    return [line for line in listed.stdout.splitlines() if str(root) in line]


async def loop_devices_left(root: Path, within: float = 10.0) -> list[str]:
    """The loop devices of `root` that are still there after the kernel has had `within` seconds to let go of
    them (it detaches a loop device once the last mount of it is gone, a moment after the unmount returns)."""
    deadline = anyio.current_time() + within
    while (left := loop_devices_of(root)) and anyio.current_time() < deadline:
        await anyio.sleep(0.05)
    return left


def remove_workspace_disks(root: Path) -> None:
    """Unmount every workspace filesystem under `root` and delete the images (a test that did not close its sandboxes)."""
    for point in mounted_under(root):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    for image in root.rglob("*.img") if root.exists() else []:
        image.unlink()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A connected docker SDK client; skips (fails under CI) without an engine or the image."""
    try:
        import docker
        import docker.errors
    except ImportError as e:  # pragma: no cover - docker is a dependency
        unavailable(f"the docker SDK is not installed: {e}")
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as e:
        unavailable(f"no Docker engine: {e}. Start one with scripts/start-docker.sh")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        unavailable(f"image {IMAGE} is missing. Build it with scripts/build-sandbox-image.sh")
    yield client
    client.close()
    remove_workspace_disks(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def docker_server_id(docker_engine: Any) -> Iterator[str]:
    """A server id unique to this test run; everything labelled with it is removed at the end."""
    server_id = "test-" + secrets.token_hex(4)
    yield server_id
    remove_labelled(docker_engine, server_id)


def remove_labelled(client: Any, server_id: str) -> None:
    import docker.errors

    label = f"{LABEL_SERVER}={server_id}"
    for c in client.containers.list(all=True, filters={"label": label}):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
    for v in client.volumes.list(filters={"label": label}):
        device = (v.attrs.get("Options") or {}).get("device")
        try:
            v.remove(force=True)
        except docker.errors.NotFound:
            pass
        if device:  # a workspace filesystem: <root>/<volume>/workspace
            Disks(Path(device).parent.parent).remove(v.name)


@pytest.fixture
async def docker_driver(docker_server_id: str) -> AsyncIterator[DockerDriver]:
    driver = DockerDriver(image=IMAGE, server_id=docker_server_id)
    yield driver
    await driver.aclose()


SandboxFactory = Callable[..., Awaitable[DockerSandbox]]


@pytest.fixture
async def sandbox_factory(docker_driver: DockerDriver) -> AsyncIterator[SandboxFactory]:
    """`await make(limits=..., env=..., driver=...)` makes a sandbox with a fresh name; all are deleted afterwards."""
    made: list[DockerSandbox] = []

    async def make(*, driver: DockerDriver | None = None, limits: Limits | None = None, **spec: Any) -> DockerSandbox:
        spec.setdefault("name", "t-" + secrets.token_hex(5))
        sandbox = await (driver or docker_driver).create(SandboxSpec(limits=limits or Limits(), **spec))
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        await sandbox.close(delete=True)


@pytest.fixture(params=list(RUNTIMES))
def isolation(request: pytest.FixtureRequest, docker_engine: Any) -> str:
    """Each isolation the docker driver offers, "runc" and "gvisor"; the latter needs runsc registered."""
    runtime = RUNTIMES[request.param]
    if runtime not in (docker_engine.info().get("Runtimes") or {}):
        unavailable(f"the engine has no runtime {runtime!r}. Register it with scripts/install-runsc.sh")
    return str(request.param)


@pytest.fixture
async def isolated_factory(sandbox_factory: SandboxFactory, isolation: str) -> SandboxFactory:
    """`sandbox_factory` whose sandboxes ask for the `isolation` of the test's parameter."""

    async def make(**spec: Any) -> DockerSandbox:
        spec.setdefault("options", {"isolation": isolation})
        return await sandbox_factory(**spec)

    return make
