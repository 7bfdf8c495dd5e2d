"""Stopping a sandbox's container for a pause, copying a sandbox (`Forks`) and keeping checkpoints of it
(`Checkpoints`: each a volume of its own, `mcp-ck-<name>-<key>`, filled and emptied the same way).

A fork's workspace is a new volume. Where the source's workspace is a filesystem of its own (`disks.py`)
and the fork's is to have the same size, that filesystem is cloned: frozen for the tens of milliseconds its
image's data takes to copy on the host (the source's writes wait meanwhile, nothing stops), so the copy is
the filesystem as it was at one instant, made without reading a single path of the hostile workspace. Else
(a measured workspace, or a checkpoint's volume) the new volume is filled by a short-lived helper container
that mounts the source's volume read-only and the new one, and runs `cp -a` as root (ownership, modes,
times and links kept) with no network and only the capabilities a copy needs, while the new sandbox's
container is made and started (they share nothing but the new volume, and no command runs before both are
done). Then the new shell is given the source's state. The ways were measured against each other and a tar
stream through the engine in BENCHMARKS.md ("Fork, checkpoints and resume of docker sessions"): the clone
takes 20-50 ms for 100 MB against 400-900 ms for the helper (most of it a container's start).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any, cast

import anyio
import docker
import docker.errors

from ..base import PhaseCallback, Sandbox, SandboxError, SandboxSpec
from .container import LABEL_SERVER, SESSION_PREFIX, VOLUME_PREFIX
from .engine import blocking
from .sandbox import DockerSandbox

if TYPE_CHECKING:
    from .driver import DockerDriver

log = logging.getLogger(__name__)

COPY_PREFIX = "mcp-copy-"
CHECKPOINT_PREFIX = "mcp-ck-"
COPY = "cp -a /from/. /to/"
LABEL_COPY = "mcp-sessions.copy"
COPY_CAPS = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"]
"""What `cp -a` as root needs to read every file and keep owners and modes; nothing else."""
STOP_S = 2


class ForkMixin:
    """The part of `DockerDriver` that stops containers for a pause and copies sandboxes."""

    async def _stop_container(self, cid: str) -> None:
        """Stop a container and wait until it has (its processes get SIGTERM, then SIGKILL after STOP_S)."""
        driver = cast("DockerDriver", self)
        api = await driver._api()
        try:
            await blocking(api.stop, cid, timeout=STOP_S)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise SandboxError(f"The sandbox container {cid[:12]} did not stop: {e.explanation or e}") from None

    async def fork(
        self, source: Sandbox, spec: SandboxSpec, on_phase: PhaseCallback | None = None, at: tuple[str, bytes] | None = None
    ) -> Sandbox:
        if not isinstance(source, DockerSandbox) or source.volume is None:
            raise SandboxError("The docker driver copies only docker sandboxes with a workspace volume.")
        driver = cast("DockerDriver", self)
        policy = driver._policy(spec)
        api = await driver._api()
        from_volume = source.volume if at is None else CHECKPOINT_PREFIX + f"{source.name}-{at[0]}"
        state = await source.shell_state() if at is None else at[1]
        name, volume, labels = SESSION_PREFIX + spec.name, VOLUME_PREFIX + spec.name, driver._labels(spec)
        if on_phase:
            await on_phase("copying_workspace", f"from {from_volume}")
        disk = source._disk
        same_disk = at is None and disk.mode == "hard" and disk.limit_mb == policy.limits.disk_mb
        cloned = same_disk and await driver._clone_volume(api, from_volume, volume, labels)
        if not cloned and not await driver._make_volume(api, volume, labels, policy):
            raise SandboxError(f"A workspace volume named {volume} already exists.")
        made: list[tuple[str, dict[str, Any], Any]] = []
        try:
            async with anyio.create_task_group() as tg:
                if not cloned:
                    tg.start_soon(driver._copy_volume, from_volume, volume, policy.image)

                async def container() -> None:
                    made.append(await driver._make_container(policy, name, volume, labels, spec.env, None))

                tg.start_soon(container)
            cid, host_config, conn = made[0]
            sandbox = DockerSandbox(
                driver,
                cid,
                name,
                spec,
                image=policy.image,
                host_config=host_config,
                volume=volume,
                disk=await driver._workspace_disk(volume, policy.limits.disk_mb),
                conn=conn,
            )
            await sandbox.set_shell_state(state)
            return sandbox
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await driver._remove(made[0][0] if made else name, volume)
                except Exception as e:
                    log.warning("removing the half-made copy %s failed: %s", name, e)
            raise

    async def checkpoint(self, sandbox: Sandbox, key: str) -> tuple[int, bytes]:
        if not isinstance(sandbox, DockerSandbox) or sandbox.volume is None:
            raise SandboxError("The docker driver keeps checkpoints of docker sandboxes with a workspace volume only.")
        driver = cast("DockerDriver", self)
        api = await driver._api()
        state = await sandbox.shell_state()
        volume = CHECKPOINT_PREFIX + f"{sandbox.name}-{key}"
        labels = {LABEL_SERVER: driver.server_id, LABEL_COPY: "1"}
        await driver._drop_volume_named(volume)
        await blocking(api.create_volume, name=volume, labels=labels)
        try:
            said = await driver._copy_volume(sandbox.volume, volume, sandbox._image, COPY + " && du -sm /to")
            return int(said.split()[0]), state
        except BaseException:
            with anyio.CancelScope(shield=True):
                await driver._drop_volume_named(volume)
            raise

    async def restore(self, sandbox: Sandbox, key: str, state: bytes) -> None:
        if not isinstance(sandbox, DockerSandbox) or sandbox.volume is None:
            raise SandboxError("The docker driver restores docker sandboxes with a workspace volume only.")
        driver = cast("DockerDriver", self)
        await sandbox.interrupt()  # what earlier commands left running would write on into the restored files
        volume = CHECKPOINT_PREFIX + f"{sandbox.name}-{key}"
        await driver._copy_volume(volume, sandbox.volume, sandbox._image, "find /to -mindepth 1 -delete && " + COPY)
        await sandbox.set_shell_state(state)

    async def drop_checkpoint(self, name: str, key: str) -> None:
        await cast("DockerDriver", self)._drop_volume_named(CHECKPOINT_PREFIX + f"{name}-{key}")

    async def _drop_volume_named(self, volume: str) -> None:
        api = await cast("DockerDriver", self)._api()
        try:
            await blocking(api.remove_volume, volume, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise SandboxError(f"Could not remove the checkpoint volume {volume}: {e.explanation or e}") from None

    async def _copy_volume(self, source: str, target: str, image: str, script: str = "") -> str:
        """`cp -a` of the volume `source` into `target` (or `script` over /from and /to) in a helper container;
        what it printed. SandboxError with its words."""
        driver = cast("DockerDriver", self)
        api = await driver._api()
        host_config = api.create_host_config(
            binds={source: {"bind": "/from", "mode": "ro"}, target: {"bind": "/to", "mode": "rw"}},
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=COPY_CAPS,
            security_opt=["no-new-privileges:true"],
            read_only=True,
        )
        created = await blocking(
            api.create_container,
            image,
            command=["sh", "-c", script or COPY],
            name=COPY_PREFIX + secrets.token_hex(6),
            user="0:0",
            labels={LABEL_COPY: "1", LABEL_SERVER: driver.server_id},
            host_config=host_config,
        )
        cid = created["Id"]
        try:
            await blocking(api.start, cid)
            code = (await blocking(api.wait, cid)).get("StatusCode")
            if code != 0:
                words = (await blocking(api.logs, cid)).decode(errors="replace").strip().splitlines()
                full = any("No space left" in w for w in words)
                raise SandboxError(
                    "The workspace does not fit the new session's workspace size: ask for a larger limits.disk_mb."
                    if full
                    else f"Copying the workspace failed: {words[-1] if words else f'cp exited with {code}'}."
                )
            return str((await blocking(api.logs, cid)).decode(errors="replace"))
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await blocking(api.remove_container, cid, force=True)
                except docker.errors.APIError as e:
                    log.warning("removing the copy helper %s failed: %s", cid[:12], e)
