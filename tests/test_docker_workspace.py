"""Docker workspaces and their size limit against a real engine: a filesystem of the workspace's own where the
host allows it (this test machine runs the server as root next to its engine), measured otherwise.

What lives with a workspace is checked with its filesystem: a close keeps it (and lets go of the mount), a
sandbox of the same name reuses it, a delete leaves nothing on the host, the warm pool's containers get one,
and a container whose mount the host lost (a reboot) starts again with its files.
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_backends.base import Limits, MeasuresDisk, SandboxError, SandboxSpec
from sandbox_backends.docker.container import VOLUME_PREFIX
from sandbox_backends.docker.disks import Disks, mounted_under
from sandbox_backends.docker.driver import DockerDriver
from tests.docker_support import IMAGE, docker_engine, docker_server_id, loop_devices_left  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
HANG_S = 60.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "workspaces"


@pytest.fixture
async def driver(docker_server_id: str, root: Path) -> AsyncIterator[DockerDriver]:
    made = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=64, disk_root=root)
    yield made
    await made.aclose()


def allocated_mb(path: Path) -> float:
    """What a file costs the host's disk (its allocated blocks), in MiB."""
    return os.stat(path).st_blocks * 512 / (1 << 20)


async def host_traces(root: Path, engine: Any, volume: str) -> dict[str, object]:
    """What a workspace leaves on the host: mounts, loop devices, files under `root`, the docker volume."""
    files = sorted(p.name for p in root.iterdir() if p.name != ".lock") if root.exists() else []
    volumes = [v.name for v in engine.volumes.list(filters={"name": volume}) if v.name == volume]
    return {"mounts": mounted_under(root), "loops": await loop_devices_left(root), "files": files, "volumes": volumes}


async def test_a_write_past_the_limit_fails_with_enospc_and_the_sandbox_goes_on(driver: DockerDriver, root: Path) -> None:
    sandbox = await driver.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
    try:
        disk = sandbox.describe()["disk"]
        assert disk == {"limit_mb": 64, "mode": "hard", "how": disk["how"]} and "No space left" in str(disk["how"])
        assert not isinstance(sandbox, MeasuresDisk) or await sandbox.disk_use() is None  # nothing to measure
        free = await sandbox.exec("df --output=avail -m /workspace | tail -1")
        assert 64 <= int(free.output) <= 70, free.output
        filler = await sandbox.exec("dd if=/dev/zero of=fill bs=1M count=100")
        assert filler.exit_code == 1 and "No space left on device" in filler.output, filler.output
        image = Disks(root).image(sandbox.volume or "")
        assert allocated_mb(image) < 80, "the host's disk took more than the workspace's size"
        after = await sandbox.exec("rm fill && echo done > note && cat note")
        assert after.exit_code == 0 and after.output == "done\n"
    finally:
        await sandbox.close(delete=True)


async def test_close_keeps_the_workspace_unmounted_the_same_name_reuses_it_and_delete_leaves_nothing(
    driver: DockerDriver, root: Path, docker_engine: Any
) -> None:
    name = "t-" + secrets.token_hex(5)
    volume = VOLUME_PREFIX + name
    first = await driver.create(SandboxSpec(name=name, limits=Limits(disk_mb=32)))
    assert (await first.exec("echo kept > /workspace/f && echo ok")).output == "ok\n"
    assert mounted_under(root) == [root / volume]
    await first.close()
    kept = await host_traces(root, docker_engine, volume)
    assert kept == {"mounts": [], "loops": [], "files": [volume, f"{volume}.img"], "volumes": [volume]}, kept

    again = await driver.create(SandboxSpec(name=name, limits=Limits(disk_mb=32)))
    try:
        assert (await again.exec("cat /workspace/f")).output == "kept\n"
        assert again.describe()["disk"]["mode"] == "hard"
        assert mounted_under(root) == [root / volume]
    finally:
        await again.close(delete=True)
    gone = await host_traces(root, docker_engine, volume)
    assert gone == {"mounts": [], "loops": [], "files": [], "volumes": []}, gone


async def test_pool_containers_get_a_workspace_of_the_default_size(docker_server_id: str, root: Path, docker_engine: Any) -> None:
    pooled = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=48, disk_root=root, pool_size=1)

    async def failed(name: str, reason: str) -> None:
        raise AssertionError(f"{name} failed: {reason}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(pooled.watch, failed)
        with anyio.fail_after(HANG_S):
            while pooled.pool_available < 1:
                await anyio.sleep(0.05)
        sandbox = await pooled.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
        try:
            assert sandbox.describe()["pooled"] is True
            assert sandbox.describe()["disk"]["limit_mb"] == 48 and sandbox.describe()["disk"]["mode"] == "hard"
            filler = await sandbox.exec("dd if=/dev/zero of=fill bs=1M count=60")
            assert "No space left on device" in filler.output, filler.output
        finally:
            await sandbox.close(delete=True)
        with anyio.fail_after(HANG_S):  # the pool made the claimed one's replacement, with its own filesystem
            while pooled.pool_available < 1:
                await anyio.sleep(0.05)
        assert len(mounted_under(root)) == 1
        tg.cancel_scope.cancel()
    await pooled.aclose()
    assert mounted_under(root) == [] and await loop_devices_left(root) == []
    assert [p.name for p in root.iterdir() if p.name != ".lock"] == [], "the pool left workspaces behind"


async def test_a_container_whose_mount_the_host_lost_starts_again_with_its_files(
    driver: DockerDriver, docker_server_id: str, root: Path, docker_engine: Any
) -> None:
    name = "t-" + secrets.token_hex(5)
    sandbox = await driver.create(SandboxSpec(name=name))
    assert (await sandbox.exec("echo survived > /workspace/f && echo ok")).output == "ok\n"
    await driver.aclose()
    # What a reboot leaves: the container stopped, the mount and the loop device gone, the image kept.
    await anyio.to_thread.run_sync(lambda: docker_engine.containers.get(sandbox.id).stop(timeout=1))
    await anyio.to_thread.run_sync(Disks(root).release, sandbox.volume or "")
    assert mounted_under(root) == []
    restarted = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=64, disk_root=root)
    back = await restarted.attach(sandbox.id, SandboxSpec(name=name))
    try:
        found, free = (await back.exec("cat /workspace/f; df --output=avail -m /workspace | tail -1")).output.split()
        assert found == "survived" and 60 <= int(free) <= 70, (found, free)
        assert back.describe()["disk"] == sandbox.describe()["disk"]
    finally:
        await back.close(delete=True)
        await restarted.aclose()
    assert mounted_under(root) == [] and await loop_devices_left(root) == []


async def test_measured_workspaces_report_their_use_and_what_they_cannot_read(
    docker_server_id: str, root: Path, docker_engine: Any
) -> None:
    measured = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=32, disk_root=root, disk_mode="measured")
    sandbox = await measured.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
    try:
        disk = sandbox.describe()["disk"]
        assert disk["mode"] == "measured" and disk["limit_mb"] == 32 and "--docker-disk measured" in str(disk["why"])
        assert isinstance(sandbox, MeasuresDisk)
        empty = await sandbox.disk_use()
        assert empty is not None and empty.used_mb <= 1 and empty.over() is None
        await sandbox.exec("dd if=/dev/zero of=fill bs=1M count=40 2>/dev/null")
        use = await sandbox.disk_use()
        assert use is not None and use.used_mb >= 40 and use.limit_mb == 32
        assert (
            use.over()
            == f"the workspace is over its 32 MiB limit ({use.used_mb} MiB used): delete files, then send the next message"
        )
        await sandbox.exec("rm fill; mkdir -p hidden/deep && chmod 000 hidden")
        use = await sandbox.disk_use()
        assert use is not None and use.unreadable == "/workspace/hidden" and "not readable" in (use.over() or "")
        assert mounted_under(root) == [], "a measured workspace has no filesystem of its own"
    finally:
        await sandbox.close(delete=True)
        await measured.aclose()


FORGER = """
import os, time
while True:
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() != "du":
                    continue
            fd = os.open("/proc/%s/fd/1" % pid, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"0\\t/workspace\\n")
            os.close(fd)
        except OSError:
            pass
    time.sleep(0.0005)
"""


async def test_a_process_of_the_sandbox_user_cannot_make_its_workspace_look_smaller(docker_server_id: str, root: Path) -> None:
    """The measure is the control shell's (root, with the sandbox user's rights), not the output of a process
    of the sandbox user: a process left running that writes a small figure into every `du` it finds, or any
    other such process, changes nothing."""
    measured = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=32, disk_root=root, disk_mode="measured")
    sandbox = await measured.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
    try:
        await sandbox.write_file("forger.py", FORGER.encode())
        # Many small files make a `du` take long enough to be found; 40 MiB put the workspace over its limit.
        setup = "mkdir many && (cd many && seq 3000 | xargs touch) && dd if=/dev/zero of=fill bs=1M count=40 2>/dev/null"
        await sandbox.exec(f"{setup}; python3 forger.py >/dev/null 2>&1 & echo started")
        for _ in range(5):
            use = await sandbox.disk_use()
            assert use is not None and use.used_mb >= 40 and use.unreadable is None, use
    finally:
        await sandbox.close(delete=True)
        await measured.aclose()


async def test_a_size_outside_the_servers_range_is_refused_before_anything_is_made(docker_server_id: str, root: Path) -> None:
    capped = DockerDriver(
        image=IMAGE, server_id=docker_server_id, max_limits=Limits(disk_mb=1024), default_disk_mb=64, disk_root=root
    )
    for asked in (2048, 8):
        with pytest.raises(
            ValueError, match=rf"limits.disk_mb={asked} is outside this server's range: ask for 16 to 1024 \(MiB\)"
        ):
            capped.check(SandboxSpec(name="t", limits=Limits(disk_mb=asked)))
    capped.check(SandboxSpec(name="t", limits=Limits(disk_mb=1024)))
    assert not root.exists(), "a refused size made something"
    await capped.aclose()


async def test_hard_mode_refuses_a_workspace_it_cannot_give_a_filesystem_of_its_own(
    docker_server_id: str, docker_engine: Any
) -> None:
    strict = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=64, disk_mode="hard")  # no folder
    name = "t-" + secrets.token_hex(5)
    with pytest.raises(SandboxError, match="cannot give the workspace a filesystem of its own: the driver has no folder"):
        await strict.create(SandboxSpec(name=name))
    assert docker_engine.volumes.list(filters={"name": VOLUME_PREFIX + name}) == [], "a refused sandbox made its volume"
    assert docker_engine.containers.list(all=True, filters={"name": name}) == []
    await strict.aclose()
