"""Forks of docker workspaces that have a filesystem of their own, against a real engine: the fork's filesystem
is a clone of the source's (the same ext4 filesystem, by its UUID), taken at one instant while the source
writes on; a fork that is to have another size is copied file by file instead; and a workspace a clone left
frozen (its server killed in those milliseconds) takes writes again once a server attaches its sandbox.
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

import fcntl
import os
import secrets
import uuid
from pathlib import Path

import anyio
import pytest

from sandbox_backends.base import Limits, SandboxSpec
from sandbox_backends.docker.disks import FIFREEZE, Disks
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox
from tests.docker_support import IMAGE, docker_engine, docker_server_id  # noqa: F401
from tests.test_docker_workspace import driver, root  # noqa: F401  (a driver with 64 MiB workspace filesystems)

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
HANG_S = 60.0
WRITER = "(i=0; while :; do echo line$i >> /workspace/log; i=$((i+1)); done) > /dev/null 2>&1 &"


def filesystem_id(root: Path, sandbox: DockerSandbox) -> uuid.UUID:
    """The UUID in the ext4 superblock of the sandbox's workspace image (mkfs gives every new one its own)."""
    with open(Disks(root).image(sandbox.volume or ""), "rb") as f:
        f.seek(1024 + 0x68)
        return uuid.UUID(bytes=f.read(16))


async def lines(sandbox: DockerSandbox) -> int:
    return int((await sandbox.exec("wc -l < /workspace/log")).output)


async def test_a_fork_clones_the_filesystem_at_one_instant_while_the_source_writes_on(driver: DockerDriver, root: Path) -> None:
    source = await driver.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
    fork: DockerSandbox | None = None
    try:
        assert (await source.exec(f"mkdir deep; cd deep; echo kept > note; {WRITER} echo started")).exit_code == 0
        with anyio.fail_after(HANG_S):
            while (await source.exec("test -s /workspace/log")).exit_code != 0:
                await anyio.sleep(0.05)
        made = await driver.fork(source, SandboxSpec(name="t-" + secrets.token_hex(5)))
        assert isinstance(made, DockerSandbox)
        fork = made
        assert filesystem_id(root, fork) == filesystem_id(root, source) and fork.volume != source.volume
        assert fork.describe()["disk"] == source.describe()["disk"]
        assert (await fork.exec("pwd; cat note")).output == "/workspace/deep\nkept\n"
        torn = await fork.exec("grep -cv '^line[0-9]*$' /workspace/log")
        assert torn.output == "0\n", "the clone caught a line half written"
        copied = await lines(fork)
        with anyio.fail_after(HANG_S):  # the source's writer was held for the copy, not stopped
            while await lines(source) <= copied:
                await anyio.sleep(0.05)
        assert await lines(fork) == copied  # the fork's workspace is its own: the writer is not in it
        await fork.exec("echo mine > only-in-fork")
        assert (await source.exec("test -e only-in-fork")).exit_code == 1
    finally:
        await source.close(delete=True)  # its writer with it
        if fork is not None:
            await fork.close(delete=True)


async def test_a_fork_of_another_size_is_copied_file_by_file(driver: DockerDriver, root: Path) -> None:
    source = await driver.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
    fork: DockerSandbox | None = None
    try:
        await source.exec("echo kept > note && cd /tmp && export MARK=forked")
        made = await driver.fork(source, SandboxSpec(name="t-" + secrets.token_hex(5), limits=Limits(disk_mb=32)))
        assert isinstance(made, DockerSandbox)
        fork = made
        assert filesystem_id(root, fork) != filesystem_id(root, source)
        assert fork.describe()["disk"]["limit_mb"] == 32 and fork.describe()["disk"]["mode"] == "hard"
        assert (await fork.exec("pwd; echo $MARK; cat /workspace/note")).output == "/tmp\nforked\nkept\n"
    finally:
        await source.close(delete=True)
        if fork is not None:
            await fork.close(delete=True)


async def test_a_workspace_a_clone_left_frozen_takes_writes_again_once_attached(
    driver: DockerDriver, docker_server_id: str, root: Path
) -> None:
    name = "t-" + secrets.token_hex(5)
    sandbox = await driver.create(SandboxSpec(name=name))
    await driver.aclose()
    # What a server killed between a clone's freeze and its thaw leaves: the running sandbox's workspace frozen.
    fd = os.open(Disks(root).mountpoint(sandbox.volume or ""), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)
    restarted = DockerDriver(image=IMAGE, server_id=docker_server_id, default_disk_mb=64, disk_root=root)
    try:
        back = await restarted.attach(sandbox.id, SandboxSpec(name=name))
        with anyio.fail_after(HANG_S):
            assert (await back.exec("echo written > /workspace/f && cat /workspace/f")).output == "written\n"
        await back.close(delete=True)
    finally:
        Disks(root).thaw(sandbox.volume or "")  # a failed check must not leave the host's mount frozen
        await restarted.aclose()
