"""KubernetesSandbox: one Sandbox's commands and files over its pod's control shell, and its suspend and resume.

The commands and files are `ControlSandbox`'s, as docker's are; this adds what a Sandbox is (its pod, its
workspace claim), how to reconnect (through the driver, which resumes a suspended Sandbox first), and
idle pause: `pause()` sets `operatingMode: Suspended`, which stops the pod and keeps the Sandbox and its
workspace claim; the next command, or `resume()`, brings it back. Only the workspace survives a pause:
the pod's /tmp, /run (with the shell's saved cwd and variables) and processes go with it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from ..base import DiskUse, SandboxBusy, SandboxSpec
from ..control.client import ControlClient
from ..control.sandbox import ControlSandbox
from .resources import WORKSPACE_CLAIM, object_name

if TYPE_CHECKING:
    from .driver import KubernetesDriver

RESUMED = (
    "the sandbox was suspended and resumed: the command was stopped; the workspace is kept (its /tmp, background "
    "processes and the shell's cwd and variables were reset)"
)


class KubernetesSandbox(ControlSandbox):
    """A Sandbox with an attached control shell. Made by `KubernetesDriver.create` or `.attach`."""

    def __init__(
        self,
        driver: KubernetesDriver,
        sandbox_name: str,
        pod: str,
        spec: SandboxSpec,
        *,
        claimed: bool,
        image: str,
        disk_mb: int,
        conn: ControlClient | None = None,
    ) -> None:
        super().__init__(spec, driver.policy.workspace, conn)
        self._driver = driver
        self._sandbox_name = sandbox_name
        self.pod = pod
        self._claimed = claimed
        self._image = image
        self._disk_mb = disk_mb
        self._resumed_at = 0.0

    @property
    def id(self) -> str:
        return self._sandbox_name

    def describe(self) -> dict[str, object]:
        policy = self._driver.policy
        limits = self._spec.limits
        return {
            "driver": "kubernetes",
            "id": self._sandbox_name,
            "namespace": policy.namespace,
            "pod": self.pod,
            "image": self._image,
            "workspace": self.workspace,
            "warm_pool": self._driver.warm_pool if self._claimed else None,
            "runtime_class": policy.runtime_class,
            "isolation": policy.runtime_class or "cluster default runtime",
            "network": "none (deny-all NetworkPolicy)" if self._driver.network_policy else "the namespace's policies",
            "user": self._driver.user,
            "read_only_root": True,
            "capabilities": "none for commands; the control shell keeps SETUID, SETGID, KILL",
            "no_new_privileges": True,
            # A claimed sandbox's limits are its warm pool's template's, which the server does not read.
            "limits": {"memory_mb": None, "cpus": None, "pids": None, "tmp_mb": None, "swap": "none"}
            if self._claimed
            else {"memory_mb": limits.memory_mb, "cpus": limits.cpus, "pids": None, "tmp_mb": limits.tmp_mb, "swap": "none"},
            "disk": {"mode": "measured", "limit_mb": self._disk_mb, "claim": f"{WORKSPACE_CLAIM}-{self._sandbox_name}"},
            "labels": dict(self._spec.labels),
        }

    async def disk_use(self) -> DiskUse | None:
        """The workspace's use against its claim's size: storage classes do not all keep a claim to its size."""
        return await self._measure(self._disk_mb)

    # -- what ControlSandbox asks of a driver ----------------------------------------------------

    async def _reopen(self, *, shells: bool = True) -> ControlClient:
        return await self._driver._reopen(self, shells=shells)

    def _resumed(self) -> None:
        self._resumed_at = time.time()

    def _restarted_since(self, t0: float) -> str | None:
        return RESUMED if self._resumed_at >= t0 else None

    def _limit_mb(self, name: str) -> int | None:
        if name == "disk_mb":
            return self._disk_mb
        return None if self._claimed else int(getattr(self._spec.limits, name))

    # -- pause ----------------------------------------------------------------------------------

    async def pause(self) -> bytes:
        """Suspend the Sandbox: its pod stops, its workspace claim stays. Waits until the controller says so.
        Returns the shell's state, which the pod's /run loses, for `resume`."""
        if self._running:
            raise SandboxBusy("A command is running in this sandbox; interrupt it before pausing.")
        state = await self.shell_state()
        await self._disconnect()
        self._conn = None
        await self._driver._suspend(self._sandbox_name)
        return state

    async def resume(self, saved: bytes) -> None:
        """Run the Sandbox again (a command or an attach would do so too) and give its shell `saved`."""
        async with self._conn_lock:
            await self._driver._resume(self._sandbox_name)
            self._resumed()
        await self.set_shell_state(saved)

    # -- life -----------------------------------------------------------------------------------

    async def close(self, *, delete: bool = False) -> None:
        self._closed = True
        await self._streams.aclose()
        await self._disconnect()
        with anyio.CancelScope(shield=True):
            claim = object_name(self._spec.name) if self._claimed else None
            await self._driver._remove(self._sandbox_name, claim, delete=delete)
