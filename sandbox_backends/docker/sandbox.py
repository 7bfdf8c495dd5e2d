"""DockerSandbox: one container's commands and files, over its control shell.

Separate from the driver, which makes, finds and watches containers: a sandbox only talks to its own
control shell (the commands and files themselves are `ControlSandbox`'s), and asks the driver for a new
connection when the old one is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ..base import DiskUse, SandboxSpec
from ..control.client import ControlClient
from ..control.sandbox import ControlSandbox
from .container import WORKSPACE

if TYPE_CHECKING:
    from .driver import DockerDriver
    from .workspace import WorkspaceDisk

ENGINE_RESTARTED = (
    "docker engine restarted: the command was stopped and the sandbox started again with its /workspace files "
    "(its /tmp, background processes and the shell's cwd and variables were reset)"
)


class DockerSandbox(ControlSandbox):
    """A container with an attached control shell. Made by `DockerDriver.create` or `.attach`."""

    def __init__(
        self,
        driver: DockerDriver,
        container_id: str,
        container_name: str,
        spec: SandboxSpec,
        *,
        image: str,
        host_config: dict[str, Any],
        volume: str | None,
        disk: WorkspaceDisk,
        pooled: bool = False,
        conn: ControlClient | None = None,
    ) -> None:
        super().__init__(spec, WORKSPACE, conn)
        self._driver = driver
        self._cid = container_id
        self._cname = container_name
        self._image = image
        self._host_config = host_config
        self._volume = volume
        self._disk = disk
        self._pooled = pooled
        driver._sandboxes.add(self)

    @property
    def id(self) -> str:
        return self._cid

    @property
    def container_name(self) -> str:
        return self._cname

    @property
    def volume(self) -> str | None:
        return self._volume

    def describe(self) -> dict[str, object]:
        hc = self._host_config
        tmpfs = hc.get("Tmpfs") or {}
        tmp_mb = None
        for opt in str(tmpfs.get("/tmp", "")).split(","):
            if opt.startswith("size=") and opt.endswith("m"):
                tmp_mb = int(opt[5:-1])
        memory = hc.get("Memory") or 0
        return {
            "driver": "docker",
            "id": self._cid,
            "container": self._cname,
            "image": self._image,
            "workspace": WORKSPACE,
            "volume": self._volume,
            "network": hc.get("NetworkMode") or "default",
            "isolation": "gvisor" if hc.get("Runtime") == self._driver.gvisor_runtime else "runc",
            "runtime": hc.get("Runtime") or "runc",
            "user": self._driver.user,
            "read_only_root": bool(hc.get("ReadonlyRootfs")),
            "capabilities": self._capabilities(hc),
            "no_new_privileges": any("no-new-privileges" in o for o in hc.get("SecurityOpt") or []),
            "limits": {
                "memory_mb": memory // (1 << 20) if memory else None,
                "cpus": (hc.get("NanoCpus") or 0) / 1e9 or None,
                "pids": self._pids(hc),
                "tmp_mb": tmp_mb,
                "swap": "none" if memory and hc.get("MemorySwap") == memory else "allowed",
            },
            "disk": self._disk.describe(),
            "pooled": self._pooled,
            "labels": dict(self._spec.labels),
        }

    async def disk_use(self) -> DiskUse | None:
        """The workspace's use, for a workspace whose limit is measured (None when a filesystem of its own keeps it)."""
        if self._disk.mode != "measured" or self._disk.limit_mb is None:
            return None
        return await self._measure(self._disk.limit_mb)

    @staticmethod
    def _pids(hc: dict[str, Any]) -> int | None:
        """The sandbox's process limit: the cgroup's, or under gVisor its RLIMIT_NPROC (see `host_pids`)."""
        nproc = [u for u in hc.get("Ulimits") or [] if u.get("Name") == "nproc"]
        return int(nproc[0]["Hard"]) if nproc else hc.get("PidsLimit")

    @staticmethod
    def _capabilities(hc: dict[str, Any]) -> str:
        if "ALL" not in (hc.get("CapDrop") or []):
            return "docker default"
        kept = [c.removeprefix("CAP_") for c in hc.get("CapAdd") or []]
        return "none for commands; the control shell keeps " + ", ".join(kept) if kept else "all dropped"

    # -- what ControlSandbox asks of a driver ----------------------------------------------------

    async def _reopen(self, *, shells: bool = True) -> ControlClient:
        return await self._driver._reopen(self._cid, self._spec.env, shells=shells)

    def _restarted_since(self, t0: float) -> str | None:
        return ENGINE_RESTARTED if self._driver._revived.get(self._cid, 0.0) >= t0 else None

    def _limit_mb(self, name: str) -> int | None:
        if name == "memory_mb":
            return (self._host_config.get("Memory") or 0) >> 20 or None
        if name == "tmp_mb":
            return self.describe()["limits"]["tmp_mb"]  # type: ignore[index]
        return self._disk.limit_mb

    # -- pause ----------------------------------------------------------------------------------------

    async def pause(self) -> bytes:
        """Stop the container; `DockerDriver.attach` starts it again. The volume stays, and so does its
        filesystem's mount (where it has one of its own): mounting it again cost a resume 10-20 ms of its
        200-300 (more under load), for a mount and a loop device that an idle filesystem holds at no other
        cost. A close lets it go; after a reboot the resume mounts it again."""
        state = await self.shell_state()
        self._closed = True
        self._driver._closing.add(self._cid)  # its stop is no failure; attach takes it off
        await self._streams.aclose()
        if self._conn is not None:
            await self._conn.aclose()
        with anyio.CancelScope(shield=True):
            await self._driver._stop_container(self._cid)
        return state

    async def resume(self, saved: bytes) -> None:
        await self.set_shell_state(saved)

    # -- life -----------------------------------------------------------------------------------

    async def close(self, *, delete: bool = False) -> None:
        self._closed = True
        self._driver._closing.add(self._cid)
        await self._streams.aclose()
        if self._conn is not None:
            await self._conn.aclose()
        with anyio.CancelScope(shield=True):
            await self._driver._remove(self._cid, self._volume if delete else None)
            if not delete:
                await self._driver._release_disk(self._volume)
