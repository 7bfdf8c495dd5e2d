"""Where a docker sandbox's /workspace lives, and how its size limit (`Limits.disk_mb`) is kept.

Docker's own storage cannot do it here: overlay2 takes `--storage-opt size` only on xfs with project
quotas, and volumes have no size. So the limit is kept one of two ways, chosen per driver:

- **hard**: the workspace is a filesystem of its own, a sparse ext4 image on a loop device (`disks.py`),
  and its docker volume binds the image's folder. A write past the limit fails with ENOSPC, like a full
  disk; nothing needs measuring. It needs a server that may mount (root) and an engine on this host that
  sees its mounts (a `unix://` address). Making one costs about 6 ms (twice that the first time for a size).
- **measured**: the workspace is a plain volume, and the session layer asks `disk_use()` (the control shell
  walks it with the sandbox user's rights) while a turn runs and when it ends, and fails the turn that
  passed the limit (`MeasuresDisk`).

`disk_mode` "auto" (the server's default) takes hard where the host allows it, else measured, and says why
in `describe()["disk"]`; "hard" refuses to make a sandbox it cannot limit that way; "measured" always measures.
`WorkspaceMixin` is a part of `DockerDriver`, like the engine and pool parts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import docker
import docker.errors

from ..base import Limits, SandboxError
from ..disk import check_disk_mb
from .container import WORKSPACE
from .disks import Disks, can_mount
from .engine import blocking

if TYPE_CHECKING:
    from .container import Policy

log = logging.getLogger(__name__)

DiskMode = Literal["auto", "hard", "measured"]


@dataclass(frozen=True)
class WorkspaceDisk:
    """How one sandbox's workspace size is limited: `hard` (a filesystem of its own), `measured`, or `none`."""

    limit_mb: int | None
    mode: Literal["hard", "measured", "none"]
    why: str | None = None
    """Why it is measured rather than hard."""

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"limit_mb": self.limit_mb, "mode": self.mode}
        if self.mode == "hard":
            described["how"] = "a filesystem of its own: a write past the limit fails with 'No space left on device'"
        elif self.mode == "measured":
            described["how"] = "measured while a turn runs and when it ends: the turn that passes the limit fails"
            described["why"] = self.why
        return described


class WorkspaceMixin:
    """DockerDriver's workspaces: their volumes, the filesystems that limit them, and measuring those that have none."""

    # Set by DockerDriver; shared with its other parts.
    base_url: str | None
    user: str
    max_limits: Limits | None

    if TYPE_CHECKING:  # what it calls on the driver's other parts

        async def _api(self) -> docker.APIClient: ...

    def _init_workspaces(
        self, disk_root: str | os.PathLike[str] | None, disk_mode: DiskMode, default_disk_mb: int | None
    ) -> None:
        self.disk_mode = disk_mode
        self.default_disk_mb = default_disk_mb
        self._disks = Disks(Path(disk_root)) if disk_root is not None else None
        self._no_hard: str | None = None
        """Why workspaces cannot be hard-limited here (None: they can); known after the first workspace."""
        self._hard_checked = False
        self._hard_lock = anyio.Lock()

    def _disk_asked(self, limits: Limits) -> int | None:
        return limits.disk_mb if limits.disk_mb is not None else self.default_disk_mb

    def _disk_limit(self, limits: Limits) -> Limits:
        """`limits` with `disk_mb` the server's default if not given; raises SandboxError outside the server's range."""
        asked = self._disk_asked(limits)
        try:
            check_disk_mb(asked, self.max_limits.disk_mb if self.max_limits is not None else None)
        except ValueError as e:
            raise SandboxError(str(e)) from None
        return replace(limits, disk_mb=asked)

    def _owner(self) -> tuple[int, int] | None:
        uid, _, gid = self.user.partition(":")
        return (int(uid), int(gid or uid)) if uid.isdigit() and (gid or uid).isdigit() else None

    async def _why_measured(self) -> str | None:
        """Why a new workspace is measured rather than given a filesystem of its own; None if it can have one."""
        if self.disk_mode == "measured":
            return "the server was started with --docker-disk measured"
        if self._disks is None:
            return "the driver has no folder for workspace filesystems"
        url = self.base_url or os.environ.get("DOCKER_HOST") or "unix://"
        if not url.startswith("unix://"):
            return f"the Docker engine is not on this machine ({url})"
        async with self._hard_lock:
            if not self._hard_checked:
                self._no_hard = await anyio.to_thread.run_sync(can_mount, self._disks.root)
                self._hard_checked = True
                if self._no_hard:
                    log.warning("docker workspaces are measured, not limited by a filesystem of their own: %s", self._no_hard)
        return self._no_hard

    async def _make_volume(self, api: docker.APIClient, volume: str, labels: dict[str, str], policy: Policy) -> bool:
        """The workspace volume for a new container: kept from an earlier sandbox of the same name (its filesystem
        mounted again if it has one), else made, on a filesystem of its own where it can be. True if made."""
        try:
            await blocking(api.inspect_volume, volume)
            await self._mount_disk(volume)
            return False  # kept from an earlier sandbox of the same name: reuse it, never remove it here
        except docker.errors.NotFound:
            pass
        size = policy.limits.disk_mb
        why = await self._why_measured() if size is not None else "no limit"
        if why is not None and self.disk_mode == "hard" and size is not None:
            raise SandboxError(f"This server cannot give the workspace a filesystem of its own: {why}.")
        options: dict[str, Any] = {}
        if why is None and self._disks is not None and size is not None:
            disks = self._disks
            try:
                await anyio.to_thread.run_sync(disks.make, volume, size, self._owner())
            except OSError as e:
                raise SandboxError(f"Could not make the workspace's filesystem: {e}") from None
            options = self._bound(volume)
        try:
            await blocking(api.create_volume, name=volume, labels=labels, **options)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._drop_disk(volume)
            raise
        return True

    def _bound(self, volume: str) -> dict[str, Any]:
        """The options of a docker volume that binds the folder of the workspace filesystem `volume`."""
        assert self._disks is not None
        return {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": str(self._disks.source(volume))}}

    async def _clone_volume(self, api: docker.APIClient, source: str, volume: str, labels: dict[str, str]) -> bool:
        """A new workspace volume whose filesystem is a copy of the one the volume `source` has (`Disks.clone`); the
        caller checked that it has one, of the size the new workspace needs. False, with nothing made, if `volume`
        exists or `source` has no mounted filesystem."""
        disks = self._disks
        if disks is None:
            return False
        try:
            await blocking(api.inspect_volume, volume)
            return False
        except docker.errors.NotFound:
            pass
        try:
            if not await anyio.to_thread.run_sync(disks.clone, source, volume):
                return False
        except OSError as e:
            raise SandboxError(f"Could not copy the workspace's filesystem: {e}") from None
        try:
            await blocking(api.create_volume, name=volume, labels=labels, **self._bound(volume))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._drop_disk(volume)
            raise
        return True

    async def _workspace_disk(self, volume: str | None, limit_mb: int | None) -> WorkspaceDisk:
        """How the workspace in `volume` is limited, for a sandbox made, claimed or re-attached."""
        if limit_mb is None:
            return WorkspaceDisk(None, "none")
        disks = self._disks
        if volume is not None and disks is not None and await anyio.to_thread.run_sync(disks.has, volume):
            return WorkspaceDisk(limit_mb, "hard")
        why = await self._why_measured() or "the workspace was made without a filesystem of its own"
        return WorkspaceDisk(limit_mb, "measured", why)

    async def _mount_disk(self, volume: str) -> None:
        if self._disks is not None:
            await anyio.to_thread.run_sync(self._disks.mount, volume, self._owner())

    async def _disk_mounter(self, cid: str, info: dict[str, Any] | None = None) -> Callable[[], None]:
        """What a stopped container needs before it starts again, to be called in a worker thread (with the start,
        one thread's trip for both): its workspace's filesystem mounted if the host lost the mount (a reboot)
        or a close let it go; the volume's folder does not exist until then. `info`: the container as the
        caller has just inspected it (one round trip fewer)."""
        disks, owner = self._disks, self._owner()
        if disks is None:
            return lambda: None
        if info is None:
            api = await self._api()
            try:
                info = dict(await blocking(api.inspect_container, cid))
            except docker.errors.NotFound:
                return lambda: None  # the start says so
        volumes = [m["Name"] for m in info.get("Mounts") or [] if m.get("Destination") == WORKSPACE and m.get("Name")]

        def mount() -> None:
            for volume in volumes:
                disks.mount(volume, owner)

        return mount

    async def _thaw_disk(self, volume: str | None) -> None:
        """A workspace a clone left frozen (`Disks.thaw`) takes writes again."""
        if volume is not None and self._disks is not None:
            await anyio.to_thread.run_sync(self._disks.thaw, volume)

    async def _release_disk(self, volume: str | None) -> None:
        """Unmount a kept workspace's filesystem once its container is gone; using it again mounts it again."""
        if volume is not None and self._disks is not None:
            await anyio.to_thread.run_sync(self._disks.release, volume)

    async def _drop_disk(self, volume: str) -> None:
        """Delete a workspace's filesystem, once its volume is removed."""
        if self._disks is not None:
            await anyio.to_thread.run_sync(self._disks.remove, volume)
