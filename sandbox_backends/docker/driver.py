"""DockerDriver: the container policy, and making, claiming and attaching the containers sandboxes live in.

The front of the driver, what `create` and `attach` do. Its engine side (the SDK client, outages, the
event watch) is in engine.py and its warm pool in pool.py; `DockerDriver` joins the three.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from typing import Any

import anyio
import docker
import docker.errors
import docker.types

from ..base import MOUNTS_ENV, Limits, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec
from ..control.client import MIN_PYTHON, Broken, ControlClient, Lost, control_command, python_too_old, say_hello
from .container import (
    BASE_ENV,
    CONTAINER_USER,
    CONTROL_CAPS,
    DEFAULT_IMAGE,
    GVISOR_RUNTIME,
    KEEPALIVE_CMD,
    LABEL_NAME,
    LABEL_POOL,
    LABEL_SANDBOX,
    LABEL_SERVER,
    MOUNTS_DIR,
    SESSION_PREFIX,
    STATE_DIR,
    VOLUME_PREFIX,
    WORKSPACE,
    Policy,
    host_pids,
    runtime_missing,
)
from .engine import ContainerStopped, EngineDown, EngineMixin, blocking
from .forks import ForkMixin
from .pool import PoolMixin
from .sandbox import DockerSandbox
from .transport import open_exec
from .workspace import DiskMode, WorkspaceMixin

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
"""How long a new control shell may take to answer its hello."""


def workspace_volume(info: dict[str, Any]) -> str | None:
    """The name of the volume at the workspace of a container as the engine describes it."""
    mounts = info.get("Mounts") or []
    return next((m.get("Name") for m in mounts if m.get("Destination") == WORKSPACE and m.get("Name")), None)


class DockerDriver(EngineMixin, PoolMixin, WorkspaceMixin, ForkMixin):
    """Makes `DockerSandbox`es: one hardened container per sandbox on a Docker engine.

    All arguments are keyword-only; none touches the engine until first use.

    - `image`: the image for specs that name none. It needs bash and python3
      (`scripts/build-sandbox-image.sh` builds the default).
    - `server_id`: written to the `mcp-sessions.server` label; `watch` and the pool only look at
      containers with this server's id, so several servers can share one engine.
    - `pool_size`: containers kept ready for specs matching the pool policy (`image`, `pool_limits`,
      no network). 0 (default) disables the pool. The pool is filled while `watch()` runs.
    - `pool_limits`: the limits of pooled containers (default `Limits()`).
    - `pool_mounts`: host files bound read-only into every pooled container (name -> host path, as
      `SandboxSpec.mounts`): a spec whose mounts are among them is served from the pool.
    - `max_limits`: the most a spec may ask for; `create` refuses more (default: no ceiling).
    - `default_disk_mb`: the workspace size of specs that ask for none (default: no limit).
    - `disk_root`: a folder of the server's for workspace filesystems (without one, workspaces are measured);
      `disk_mode`: "auto", "hard" or "measured" (see `workspace.py`).
    - `allow_network`: whether `SandboxSpec.network=True` is allowed; such sandboxes join `network`
      (default "bridge"). Without it every sandbox has network mode "none" (only `lo`).
    - `user`: the uid:gid commands run as (default "1000:1000"; the default image's `sandbox` user).
    - `nofile`: the open-files limit inside the sandbox.
    - `base_url`: the engine address (default: DOCKER_HOST, else the local unix socket).
    - `runtime`: the engine runtime of specs that choose no `isolation` option ("runc", or gVisor's).
    - `gvisor_runtime`: the engine runtime of `isolation="gvisor"` (default "runsc").
    """

    name = "docker"

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        server_id: str = "default",
        pool_size: int = 0,
        pool_limits: Limits | None = None,
        pool_mounts: Mapping[str, str] | None = None,
        max_limits: Limits | None = None,
        allow_network: bool = False,
        network: str = "bridge",
        user: str = "1000:1000",
        nofile: int = 16384,
        base_url: str | None = None,
        default_disk_mb: int | None = None,
        disk_root: str | os.PathLike[str] | None = None,
        disk_mode: DiskMode = "auto",
        runtime: str = "runc",
        gvisor_runtime: str = GVISOR_RUNTIME,
    ) -> None:
        if pool_size < 0:
            raise ValueError("pool_size must be 0 or more")
        self.image = image
        self.server_id = server_id
        self.pool_size = pool_size
        self.max_limits = max_limits
        self._init_workspaces(disk_root, disk_mode, default_disk_mb)
        self.pool_limits = self._disk_limit(pool_limits or Limits())
        self.pool_mounts = dict(pool_mounts or {})
        self.allow_network = allow_network
        self.network = network
        self.user = user
        self.nofile = nofile
        self.base_url = base_url
        self.runtime = runtime
        self.gvisor_runtime = gvisor_runtime
        self._closing: set[str] = set()
        self._sandboxes: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()
        self._init_engine()
        self._init_pool()

    def _labels(self, spec: SandboxSpec | None) -> dict[str, str]:
        labels = {LABEL_SANDBOX: "1", LABEL_SERVER: self.server_id}
        if spec is None:
            labels[LABEL_POOL] = "1"
        else:
            labels.update(spec.labels)
            labels.update({LABEL_SANDBOX: "1", LABEL_SERVER: self.server_id, LABEL_NAME: spec.name})
        return labels

    def _policy(self, spec: SandboxSpec) -> Policy:
        limits = spec.limits
        ceiling = self.max_limits
        if ceiling is not None:
            for field_name in ("memory_mb", "cpus", "pids", "tmp_mb"):
                asked, most = getattr(limits, field_name), getattr(ceiling, field_name)
                if asked > most:
                    raise SandboxError(f"limits.{field_name}={asked} is over this server's maximum of {most}.")
        for field_name in ("memory_mb", "cpus", "pids", "tmp_mb"):
            if getattr(limits, field_name) <= 0:
                raise SandboxError(f"limits.{field_name} must be positive.")
        if spec.network and not self.allow_network:
            raise SandboxError("This server does not allow network access for sandboxes (start it with networking allowed).")
        runtime = {"runc": "runc", "gvisor": self.gvisor_runtime}.get(spec.options.get("isolation") or "", self.runtime)
        mounts = tuple(sorted(spec.mounts.items()))
        return Policy(spec.image or self.image, self._disk_limit(limits), spec.network, runtime, mounts)

    def _host_config(self, api: docker.APIClient, policy: Policy, volume: str) -> dict[str, Any]:
        lim = policy.limits
        gvisor = policy.runtime == self.gvisor_runtime
        ulimits = [docker.types.Ulimit(name="nofile", soft=self.nofile, hard=self.nofile)]
        if gvisor:
            ulimits.append(docker.types.Ulimit(name="nproc", soft=lim.pids, hard=lim.pids))
        return api.create_host_config(
            network_mode=self.network if policy.network else "none",
            runtime=policy.runtime,
            init=True,
            mem_limit=f"{lim.memory_mb}m",
            memswap_limit=f"{lim.memory_mb}m",
            nano_cpus=int(lim.cpus * 1e9),
            pids_limit=host_pids(gvisor, lim.pids),
            read_only=True,
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,size={lim.tmp_mb}m,mode=1777",
                "/run": "rw,nosuid,nodev,noexec,size=16m,mode=1777",
                # Root's alone (mode 0711: the turn shells may run the bash copy in it, by name, nothing else).
                STATE_DIR: f"rw,nosuid,nodev,exec,size={lim.tmp_mb}m,mode=0711",
            },
            binds={
                volume: {"bind": WORKSPACE, "mode": "rw"},
                **{host: {"bind": f"{MOUNTS_DIR}/{name}", "mode": "ro"} for name, host in policy.mounts},
            },
            cap_drop=["ALL"],
            cap_add=CONTROL_CAPS,
            security_opt=["no-new-privileges:true"],
            ulimits=ulimits,
        )

    async def _make_container(
        self,
        policy: Policy,
        name: str,
        volume: str,
        labels: dict[str, str],
        env: dict[str, str],
        on_phase: PhaseCallback | None,
    ) -> tuple[str, dict[str, Any], ControlClient]:
        """Create and start a container and open its control shell; remove everything on failure."""
        api = await self._api()
        if on_phase:
            await on_phase("creating_sandbox", f"image {policy.image}")
        new_volume = await self._make_volume(api, volume, labels, policy)
        host_config = self._host_config(api, policy, volume)
        cid: str | None = None
        try:
            try:
                created = await blocking(
                    api.create_container,
                    policy.image,
                    command=KEEPALIVE_CMD,
                    name=name,
                    user=CONTAINER_USER,
                    labels=labels,
                    environment={**BASE_ENV, MOUNTS_ENV: MOUNTS_DIR} if policy.mounts else BASE_ENV,
                    working_dir=WORKSPACE,
                    host_config=host_config,
                )
            except docker.errors.ImageNotFound:
                raise SandboxError(
                    f"image not found: {policy.image}. Build it with scripts/build-sandbox-image.sh or pass another image."
                ) from None
            except docker.errors.APIError as e:
                if e.status_code == 409:
                    raise SandboxError(f"A sandbox container named {name} already exists.") from None
                if "unknown runtime" in str(e.explanation).lower():
                    raise SandboxError(runtime_missing(policy.runtime, policy.runtime == self.gvisor_runtime)) from None
                raise SandboxError(f"Docker refused to create the sandbox: {e.explanation or e}") from None
            cid = created["Id"]
            if on_phase:
                await on_phase("starting", f"container {cid[:12]}")
            try:
                await blocking(api.start, cid)
            except docker.errors.APIError as e:
                raise SandboxError(f"The sandbox container did not start: {e.explanation or e}") from None
            conn = await self._open_control(cid, env)
            return cid, host_config, conn
        except BaseException as e:
            # An engine that went away mid-create may have made the container without saying so: remove it by name.
            ref = cid or (name if isinstance(e, EngineDown) else None)
            with anyio.CancelScope(shield=True):
                try:
                    await self._remove(ref, volume if new_volume else None)
                except EngineDown:
                    log.warning("the engine went away while %s was made; it is removed once the engine is back", name)
                except Exception:
                    log.exception("cleaning up a failed sandbox")
            raise

    async def _open_control(self, cid: str, env: dict[str, str] | None = None, *, shells: bool = True) -> ControlClient:
        """Start the control shell in the container (one `docker exec`) and say hello. With `shells=False` it
        starts no command shells ahead (a connection for byte streams)."""
        api = await self._api()
        try:
            transport = await blocking(open_exec, api, cid, control_command(STATE_DIR, WORKSPACE), WORKSPACE)
        except docker.errors.NotFound:
            raise SandboxNotFound(f"The sandbox container {cid[:12]} no longer exists.") from None
        except docker.errors.APIError as e:
            if stopped := await self._stopped(cid):
                raise ContainerStopped(stopped) from None
            if e.status_code == 409 and any(w in str(e.explanation) for w in ("not running", "restarting")):
                raise ContainerStopped(str(e.explanation)) from None  # it was, and someone started it since
            raise SandboxError(f"Cannot reach the sandbox's shell: {e.explanation or e}") from None
        exec_id = transport.exec_id
        conn = ControlClient(transport, name=cid[:12])
        try:
            msg = await say_hello(conn, env, self.user, CONNECT_TIMEOUT_S, shells=shells)
        except (Lost, TimeoutError) as e:
            await conn.aclose()
            detail = conn.stderr.strip().splitlines()
            try:
                exit_code = (await blocking(api.exec_inspect, exec_id)).get("ExitCode")
            except docker.errors.APIError:
                exit_code = None
            if stopped := await self._stopped(cid):  # killed meanwhile: say so, not "no python3"
                raise ContainerStopped(stopped) from None
            if exit_code in (126, 127):
                # The exit code of a missing python3, and also of an exec cut short by the container's death
                # while the engine still calls it running: only a container that stays up lacks python3.
                with anyio.move_on_after(2):
                    while not (stopped := await self._stopped(cid)):
                        await anyio.sleep(0.2)
                if stopped:
                    raise ContainerStopped(stopped) from None
                raise SandboxError(
                    "The sandbox image has no python3; the docker driver needs bash and python3 in the image."
                ) from None
            if isinstance(e, Broken):
                raise SandboxError(f"The sandbox's control shell did not start properly: {e}.") from None
            raise SandboxError("The sandbox's control shell did not start" + (f": {detail[-1]}" if detail else ".")) from None
        if msg.get("error") == "setup":
            await conn.aclose()
            raise SandboxError(
                f"The sandbox container {cid[:12]} cannot be used: {msg.get('message')}. It was made by an older "
                "version of mcp-sessions or by hand; delete the session and create a new one."
            )
        if msg.get("error"):
            await conn.aclose()
            raise SandboxError(f"The sandbox's control shell refused to start: {msg.get('message') or msg['error']}.")
        if old := python_too_old(msg):
            await conn.aclose()
            raise SandboxError(
                f"The sandbox image's python3 is {old}; the docker driver needs "
                f"{'.'.join(map(str, MIN_PYTHON))} or newer in the image."
            )
        if not msg.get("ws_writable"):
            log.warning("the workspace of container %s is not writable by %s", cid[:12], self.user)
        return conn

    # -- the protocol ---------------------------------------------------------------------------

    def check(self, spec: SandboxSpec) -> None:
        """Refuse limits outside this server's range, or a network it does not allow, before anything is made."""
        try:
            self._policy(spec)
        except SandboxError as e:
            raise ValueError(str(e)) from None

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> DockerSandbox:
        if not spec.name or not all(c.isalnum() or c in "_.-" for c in spec.name) or not spec.name[0].isalnum():
            raise SandboxError(f"Invalid sandbox name {spec.name!r}: use letters, digits, '_', '.' and '-'.")
        policy = self._policy(spec)
        name = SESSION_PREFIX + spec.name
        if self._pool_serves(policy):
            sandbox = await self._claim(spec, name, on_phase)
            if sandbox is not None:
                return sandbox
        volume = VOLUME_PREFIX + spec.name
        cid, host_config, conn = await self._make_container(policy, name, volume, self._labels(spec), spec.env, on_phase)
        disk = await self._workspace_disk(volume, policy.limits.disk_mb)
        return DockerSandbox(
            self, cid, name, spec, image=policy.image, host_config=host_config, volume=volume, disk=disk, conn=conn
        )

    async def _inspect_own(self, sandbox_id: str, spec: SandboxSpec) -> dict[str, Any]:
        """The container `sandbox_id` as the engine describes it, if it is the sandbox of `spec` (else SandboxNotFound)."""
        api = await self._api()
        try:
            info = await blocking(api.inspect_container, sandbox_id)
        except docker.errors.NotFound:
            raise SandboxNotFound(f"The sandbox container {sandbox_id[:12]} no longer exists.") from None
        labels = info["Config"].get("Labels") or {}
        cname = info["Name"].lstrip("/")
        if labels.get(LABEL_SANDBOX) != "1" or (cname != SESSION_PREFIX + spec.name and labels.get(LABEL_NAME) != spec.name):
            raise SandboxNotFound(f"The container {sandbox_id[:12]} is not the sandbox of {spec.name}.")
        return info

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> DockerSandbox:
        api = await self._api()
        info = await self._inspect_own(sandbox_id, spec)
        labels = info["Config"].get("Labels") or {}
        cname = info["Name"].lstrip("/")
        state = info["State"]
        cid = info["Id"]
        if state.get("Paused"):
            await blocking(api.unpause, cid)
        elif not state.get("Running"):
            if state.get("Status") in ("removing", "dead"):
                raise SandboxNotFound(f"The sandbox container {cid[:12]} is {state.get('Status')}.")
            await self._start(
                cid,
                f"The sandbox container {cid[:12]} had stopped (exit code {state.get('ExitCode')}) and did not start again",
                info,
            )
        volume = workspace_volume(info)
        self._closing.discard(cid)
        if state.get("Running"):
            await self._thaw_disk(volume)  # a clone of it cut short by its server's death leaves it frozen
        conn = await self._open_control(cid, spec.env)
        disk = await self._workspace_disk(volume, self._disk_asked(spec.limits))
        return DockerSandbox(
            self,
            cid,
            cname,
            spec,
            image=info["Config"].get("Image") or "",
            host_config=info["HostConfig"],
            volume=volume,
            disk=disk,
            pooled=labels.get(LABEL_POOL) == "1",
            conn=conn,
        )

    async def close_paused(self, sandbox_id: str, spec: SandboxSpec, *, delete: bool) -> None:
        """Remove a paused sandbox's container as it lies, never started again, and with `delete` its workspace;
        without, the workspace stays as a close leaves it (its filesystem let go)."""
        info = await self._inspect_own(sandbox_id, spec)
        cid, volume = info["Id"], workspace_volume(info)
        self._closing.add(cid)  # its removal is no failure
        await self._remove(cid, volume if delete else None)
        if not delete:
            await self._release_disk(volume)

    async def remove_leftovers(self, sandbox_id: str, described: Mapping[str, object]) -> None:
        """The workspace volume a closed sandbox kept (named in its description: a pool container's volume has
        the pool's name, not the session's) and its container if one is left (dead); only ones labelled as
        sandboxes of this program."""
        api = await self._api()
        cid: str | None = None
        try:
            info = await blocking(api.inspect_container, sandbox_id)
            if (info["Config"].get("Labels") or {}).get(LABEL_SANDBOX) == "1":
                cid = info["Id"]
        except docker.errors.NotFound:
            pass
        volume = described.get("volume")
        if not isinstance(volume, str) or not volume.startswith(VOLUME_PREFIX):
            volume = None
        else:
            try:
                if ((await blocking(api.inspect_volume, volume)).get("Labels") or {}).get(LABEL_SANDBOX) != "1":
                    volume = None
            except docker.errors.NotFound:
                volume = None
        await self._remove(cid, volume)

    async def aclose(self) -> None:
        """Remove unclaimed pool containers, close control shells and the engine connection.

        Session containers keep running (with any command in them); a sandbox object used afterwards
        reconnects.
        """
        with anyio.CancelScope(shield=True):
            pool, self._pool = self._pool, []
            for entry in pool:
                await self._discard(entry)
            for sandbox in list(self._sandboxes):
                await sandbox._disconnect()
            if self._client is not None:
                client, self._client = self._client, None
                await anyio.to_thread.run_sync(client.close)
