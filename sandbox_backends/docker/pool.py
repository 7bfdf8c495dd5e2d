"""The warm pool: containers made ahead for the default policy, each with its control shell open.

Pooled containers also bind the driver's `pool_mounts` (the installed CLIs' binaries), so a session whose
mounts are among those is served from the pool too.

Separate because it is a background job with its own life (filled while `watch()` runs, claimed by
`create`, emptied by `aclose()`); `PoolMixin` is a part of `DockerDriver` that makes its containers the
way the driver does and removes them through the engine side.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import anyio
import docker
import docker.errors

from ..base import Limits, PhaseCallback, SandboxError, SandboxSpec
from ..control.client import ControlClient
from .container import LABEL_POOL, LABEL_SERVER, POOL_PREFIX, VOLUME_PREFIX, WORKSPACE, Policy
from .engine import EngineDown, blocking
from .sandbox import DockerSandbox
from .workspace import WorkspaceDisk

if TYPE_CHECKING:
    from .driver import DockerDriver

log = logging.getLogger(__name__)

REFILL_DELAY_S = 0.1  # after a claim, before the pool makes its replacement


@dataclass
class PoolEntry:
    """A warm container, its control shell already open."""

    container_id: str
    container_name: str
    volume: str
    host_config: dict[str, Any]
    conn: ControlClient
    disk: WorkspaceDisk


class PoolMixin:
    """DockerDriver's warm pool: claimed by `create`, filled while `watch()` runs, emptied by `aclose()`.

    Makes its containers with the driver's `_make_container` and `_labels`, and removes them with the
    engine side's `_remove`.
    """

    # Set by DockerDriver; shared with its other parts.
    image: str
    server_id: str
    pool_size: int
    pool_limits: Limits
    pool_mounts: dict[str, str]
    runtime: str
    _closing: set[str]

    if TYPE_CHECKING:  # what it calls on the driver's other parts

        async def _api(self) -> docker.APIClient: ...
        def _labels(self, spec: SandboxSpec | None) -> dict[str, str]: ...
        async def _remove(self, cid: str | None, volume: str | None) -> None: ...
        async def _workspace_disk(self, volume: str | None, limit_mb: int | None) -> WorkspaceDisk: ...
        async def _make_container(
            self,
            policy: Policy,
            name: str,
            volume: str,
            labels: dict[str, str],
            env: dict[str, str],
            on_phase: PhaseCallback | None,
        ) -> tuple[str, dict[str, Any], ControlClient]: ...

    def _init_pool(self) -> None:
        self._pool: list[PoolEntry] = []
        self._pool_wanted = anyio.Event()
        mounts = tuple(sorted(self.pool_mounts.items()))
        self._pool_policy = Policy(self.image, self.pool_limits, False, self.runtime, mounts)

    def _pool_serves(self, policy: Policy) -> bool:
        """Whether a pooled container fits `policy`: the same container but for the pool's extra mounts, which a
        session that does not use them never looks at (read-only files under MOUNTS_DIR)."""
        pool = self._pool_policy
        return replace(policy, mounts=pool.mounts) == pool and set(policy.mounts) <= set(pool.mounts)

    async def _claim(self, spec: SandboxSpec, name: str, on_phase: PhaseCallback | None) -> DockerSandbox | None:
        """Take a warm container for `spec` (renaming binds it), or None if the pool is empty."""
        api = await self._api()
        while self._pool:
            entry = self._pool.pop(0)
            self._pool_wanted.set()
            if entry.conn.lost:
                await self._discard(entry)
                continue
            try:
                if on_phase:
                    await on_phase("creating_sandbox", f"warm pool container {entry.container_id[:12]}")
                    await on_phase("starting", f"container {entry.container_id[:12]}")
            except BaseException:
                self._pool.insert(0, entry)
                raise
            try:
                with anyio.CancelScope(shield=True):  # once renamed, it must reach its owner
                    await blocking(api.rename, entry.container_id, name)
            except docker.errors.NotFound:
                await self._discard(entry)
                continue
            except (docker.errors.APIError, SandboxError) as e:
                self._pool.insert(0, entry)
                if isinstance(e, docker.errors.APIError) and e.status_code == 409:
                    raise SandboxError(f"A sandbox container named {name} already exists.") from None
                raise SandboxError(f"Could not claim a pooled sandbox: {e}") from None
            return DockerSandbox(
                cast("DockerDriver", self),  # a part of the driver
                entry.container_id,
                name,
                spec,
                image=self._pool_policy.image,
                host_config=entry.host_config,
                volume=entry.volume,
                disk=entry.disk,
                pooled=True,
                conn=entry.conn,
            )
        return None

    @property
    def pool_available(self) -> int:
        """How many warm containers are ready to be claimed."""
        return len(self._pool)

    async def _keep_pool(self) -> None:
        await self._remove_stale_pool()
        failures = 0
        while True:
            if len(self._pool) >= self.pool_size:
                wanted = self._pool_wanted = anyio.Event()
                await wanted.wait()
                # Making a container keeps the engine and both cores here busy for ~0.3 s: let the session
                # that just claimed one run its first commands first (they took 7 ms instead of 2 alongside).
                await anyio.sleep(REFILL_DELAY_S)
                continue
            name = POOL_PREFIX + secrets.token_hex(6)
            volume = VOLUME_PREFIX + name
            try:
                cid, host_config, conn = await self._make_container(self._pool_policy, name, volume, self._labels(None), {}, None)
            except SandboxError as e:
                failures += 1
                log.warning("could not fill the sandbox pool: %s", e)
                wanted = self._pool_wanted = anyio.Event()
                with anyio.move_on_after(min(60, 2**failures)):
                    await wanted.wait()  # set early once the engine is back from an outage
                continue
            failures = 0
            disk = await self._workspace_disk(volume, self._pool_policy.limits.disk_mb)
            self._pool.append(PoolEntry(cid, name, volume, host_config, conn, disk))

    async def _remove_stale_pool(self) -> None:
        """Remove unclaimed pool containers a previous run of this server left behind."""
        api = await self._api()
        mine = {e.container_id for e in self._pool}
        stale = await blocking(
            api.containers,
            all=True,
            filters={"label": [f"{LABEL_POOL}=1", f"{LABEL_SERVER}={self.server_id}"], "name": POOL_PREFIX},
        )
        for c in stale:
            names = [n.lstrip("/") for n in c.get("Names") or []]
            if c["Id"] in mine or not any(n.startswith(POOL_PREFIX) for n in names):
                continue
            self._closing.add(c["Id"])
            volume = next((m.get("Name") for m in c.get("Mounts") or [] if m.get("Destination") == WORKSPACE), None)
            await self._remove(c["Id"], volume)

    async def _discard(self, entry: PoolEntry) -> None:
        self._closing.add(entry.container_id)
        await entry.conn.aclose()
        try:
            await self._remove(entry.container_id, entry.volume)
        except EngineDown:
            log.info("pool container %s is removed once the engine is back", entry.container_name)
        except SandboxError as e:
            log.warning("could not remove pool container %s: %s", entry.container_name, e)
