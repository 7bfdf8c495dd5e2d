"""DockerDriver: makes and attaches containers; the engine client, its watch and recovery, the warm pool."""

from __future__ import annotations

import collections
import logging
import re
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.abc
import docker
import docker.errors
import docker.types
import requests.exceptions

from ..base import FailureCallback, Limits, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec
from ..control.client import MIN_PYTHON, ControlClient, Lost, control_boot_input, control_command
from .container import (
    BASE_ENV,
    DEFAULT_IMAGE,
    KEEPALIVE_CMD,
    LABEL_NAME,
    LABEL_POOL,
    LABEL_SANDBOX,
    LABEL_SERVER,
    POOL_PREFIX,
    SESSION_PREFIX,
    STATE_DIR,
    VOLUME_PREFIX,
    WORKSPACE,
    Policy,
)
from .sandbox import DockerSandbox
from .transport import open_exec

log = logging.getLogger(__name__)

ENGINE_HELP = (
    "Start it with scripts/start-docker.sh (as root: installs docker.io if needed and runs "
    "`dockerd --bridge=none --iptables=false`), or point DOCKER_HOST at a running engine."
)
CONNECT_TIMEOUT_S = 30.0
ENGINE_WAIT_S = 30.0
"""How long a command (or file access) waits for an engine that stopped answering before it fails."""
ENGINE_POLL_S = 0.5
REFILL_DELAY_S = 0.1  # after a claim, before the pool makes its replacement
OUTAGE_SLACK_S = 5.0
"""A container that stopped up to this long before the engine was seen going away counts as stopped by it."""
_T = TypeVar("_T")


class _EngineDown(SandboxError):
    """The Docker engine does not answer (stopped, restarting, or never started)."""


class _ContainerStopped(SandboxError):
    """The sandbox's container is not running; the message says why, in the words the failure watch uses."""


def _engine_error(e: BaseException) -> SandboxError:
    return _EngineDown(f"Cannot reach the Docker engine ({type(e).__name__}: {e}). {ENGINE_HELP}")


def _epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an engine time stamp such as 2026-11-22T22:53:16.640892065Z."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp or "")
    if m is None:
        return None
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(m[1] + zone).timestamp() + float(m[2] or 0)


def _is_connection_error(e: BaseException) -> bool:
    if isinstance(e, (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError)):
        return True
    return isinstance(e, docker.errors.DockerException) and not isinstance(e, docker.errors.APIError)


async def _blocking(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a docker SDK call in a worker thread; a lost engine becomes an actionable SandboxError."""
    try:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
    except docker.errors.APIError:
        raise
    except Exception as e:
        if _is_connection_error(e):
            raise _engine_error(e) from e
        raise


@dataclass
class _PoolEntry:
    container_id: str
    container_name: str
    volume: str
    host_config: dict[str, Any]
    conn: ControlClient


class DockerDriver:
    """Makes `DockerSandbox`es: one hardened container per sandbox on a Docker engine.

    All arguments are keyword-only; none touches the engine until first use.

    - `image`: the image for specs that name none. It needs bash and python3
      (`scripts/build-sandbox-image.sh` builds the default).
    - `server_id`: written to the `mcp-sessions.server` label; `watch` and the pool only look at
      containers with this server's id, so several servers can share one engine.
    - `pool_size`: containers kept ready for specs matching the pool policy (`image`, `pool_limits`,
      no network). 0 (default) disables the pool. The pool is filled while `watch()` runs.
    - `pool_limits`: the limits of pooled containers (default `Limits()`).
    - `max_limits`: the most a spec may ask for; `create` refuses more (default: no ceiling).
    - `allow_network`: whether `SandboxSpec.network=True` is allowed; such sandboxes join `network`
      (default "bridge"). Without it every sandbox has network mode "none" (only `lo`).
    - `user`: the uid:gid commands run as (default "1000:1000"; the default image's `sandbox` user).
    - `nofile`: the open-files limit inside the sandbox.
    - `base_url`: the engine address (default: DOCKER_HOST, else the local unix socket).
    """

    name = "docker"

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        server_id: str = "default",
        pool_size: int = 0,
        pool_limits: Limits | None = None,
        max_limits: Limits | None = None,
        allow_network: bool = False,
        network: str = "bridge",
        user: str = "1000:1000",
        nofile: int = 16384,
        base_url: str | None = None,
    ) -> None:
        if pool_size < 0:
            raise ValueError("pool_size must be 0 or more")
        self.image = image
        self.server_id = server_id
        self.pool_size = pool_size
        self.pool_limits = pool_limits or Limits()
        self.max_limits = max_limits
        self.allow_network = allow_network
        self.network = network
        self.user = user
        self.nofile = nofile
        self.base_url = base_url
        self._client: docker.DockerClient | None = None
        self._client_lock = anyio.Lock()
        self._closing: set[str] = set()
        self._pool: list[_PoolEntry] = []
        self._pool_wanted = anyio.Event()
        self._pool_policy = Policy(image, self.pool_limits, False)
        self._sandboxes: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()
        self._down_since: float | None = None
        """When the engine was first seen not answering (wall clock), while it does not."""
        self._down_confirmed = False
        """Whether the engine also ended the event stream meanwhile: it went away, it did not just miss a ping."""
        self._outage: tuple[float, float] | None = None
        """(went away, answered again) of the latest confirmed outage, wall clock."""
        self._outages = 0
        self._reconciled = 0
        self._reconcile_lock = anyio.Lock()
        self._revive_locks: dict[str, anyio.Lock] = collections.defaultdict(anyio.Lock)
        self._revived: dict[str, float] = {}
        """Container id -> when it was started again after an engine outage."""
        self._leftovers: set[tuple[str | None, str | None]] = set()
        """(container, volume) whose removal failed because the engine was away; removed once it is back."""

    # -- engine ---------------------------------------------------------------------------------

    async def client(self) -> docker.DockerClient:
        """The docker SDK client (made on first use, in a worker thread)."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:

                def connect() -> docker.DockerClient:
                    c = self._new_client()
                    c.ping()
                    return c

                try:
                    self._client = await anyio.to_thread.run_sync(connect)
                except Exception as e:
                    raise _engine_error(e) from e
            return self._client

    def _new_client(self, version: str = "auto", timeout: int | None = None) -> docker.DockerClient:
        extra = {"timeout": timeout} if timeout else {}
        if self.base_url:
            return docker.DockerClient(base_url=self.base_url, version=version, **extra)
        return docker.from_env(version=version, **extra)

    async def _api(self) -> docker.APIClient:
        return (await self.client()).api

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
            raise SandboxError(
                "This server does not allow network access for sandboxes (start it with networking allowed)."
            )
        return Policy(spec.image or self.image, limits, spec.network)

    def _host_config(self, api: docker.APIClient, policy: Policy, volume: str) -> dict[str, Any]:
        lim = policy.limits
        return api.create_host_config(
            network_mode=self.network if policy.network else "none",
            init=True,
            mem_limit=f"{lim.memory_mb}m",
            memswap_limit=f"{lim.memory_mb}m",
            nano_cpus=int(lim.cpus * 1e9),
            pids_limit=lim.pids,
            read_only=True,
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,size={lim.tmp_mb}m,mode=1777",
                "/run": "rw,nosuid,nodev,noexec,size=16m,mode=1777",
                STATE_DIR: f"rw,nosuid,nodev,noexec,size={lim.tmp_mb}m,mode=1777",
            },
            binds={volume: {"bind": WORKSPACE, "mode": "rw"}},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            ulimits=[docker.types.Ulimit(name="nofile", soft=self.nofile, hard=self.nofile)],
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
        try:
            await _blocking(api.inspect_volume, volume)
            new_volume = False  # kept from an earlier sandbox of the same name: reuse it, never remove it here
        except docker.errors.NotFound:
            await _blocking(api.create_volume, name=volume, labels=labels)
            new_volume = True
        host_config = self._host_config(api, policy, volume)
        cid: str | None = None
        try:
            try:
                created = await _blocking(
                    api.create_container,
                    policy.image,
                    command=KEEPALIVE_CMD,
                    name=name,
                    user=self.user,
                    labels=labels,
                    environment=BASE_ENV,
                    working_dir=WORKSPACE,
                    host_config=host_config,
                )
            except docker.errors.ImageNotFound:
                raise SandboxError(
                    f"image not found: {policy.image}. "
                    "Build it with scripts/build-sandbox-image.sh or pass another image."
                ) from None
            except docker.errors.APIError as e:
                if e.status_code == 409:
                    raise SandboxError(f"A sandbox container named {name} already exists.") from None
                raise SandboxError(f"Docker refused to create the sandbox: {e.explanation or e}") from None
            cid = created["Id"]
            if on_phase:
                await on_phase("starting", f"container {cid[:12]}")
            try:
                await _blocking(api.start, cid)
            except docker.errors.APIError as e:
                raise SandboxError(f"The sandbox container did not start: {e.explanation or e}") from None
            conn = await self._open_control(cid, env)
            return cid, host_config, conn
        except BaseException as e:
            # An engine that went away mid-create may have made the container without saying so: remove it by name.
            ref = cid or (name if isinstance(e, _EngineDown) else None)
            with anyio.CancelScope(shield=True):
                try:
                    await self._remove(ref, volume if new_volume else None)
                except _EngineDown:
                    log.warning("the engine went away while %s was made; it is removed once the engine is back", name)
                except Exception:
                    log.exception("cleaning up a failed sandbox")
            raise

    async def _open_control(self, cid: str, env: dict[str, str] | None = None) -> ControlClient:
        """Start the control shell in the container (one `docker exec`) and say hello."""
        api = await self._api()
        code = await anyio.to_thread.run_sync(control_boot_input)  # compiled once per process, off the loop
        try:
            transport = await _blocking(open_exec, api, cid, control_command(STATE_DIR, WORKSPACE), WORKSPACE)
        except docker.errors.NotFound:
            raise SandboxNotFound(f"The sandbox container {cid[:12]} no longer exists.") from None
        except docker.errors.APIError as e:
            if stopped := await self._stopped(cid):
                raise _ContainerStopped(stopped) from None
            if e.status_code == 409 and any(w in str(e.explanation) for w in ("not running", "restarting")):
                raise _ContainerStopped(str(e.explanation)) from None  # it was, and someone started it since
            raise SandboxError(f"Cannot reach the sandbox's shell: {e.explanation or e}") from None
        exec_id = transport.exec_id
        conn = ControlClient(transport)
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                await conn.send_raw(code)
                kind, msg = await conn.request({"op": "hello", "env": env or {}})
        except (Lost, TimeoutError):
            await conn.aclose()
            detail = conn.stderr.strip().splitlines()
            try:
                code = (await _blocking(api.exec_inspect, exec_id)).get("ExitCode")
            except docker.errors.APIError:
                code = None
            if stopped := await self._stopped(cid):  # killed meanwhile: say so, not "no python3"
                raise _ContainerStopped(stopped) from None
            if code in (126, 127):
                # The exit code of a missing python3, and also of an exec cut short by the container's death
                # while the engine still calls it running: only a container that stays up lacks python3.
                with anyio.move_on_after(2):
                    while not (stopped := await self._stopped(cid)):
                        await anyio.sleep(0.2)
                if stopped:
                    raise _ContainerStopped(stopped) from None
                raise SandboxError(
                    "The sandbox image has no python3; the docker driver needs bash and python3 in the image."
                ) from None
            raise SandboxError(
                "The sandbox's control shell did not start" + (f": {detail[-1]}" if detail else ".")
            ) from None
        version = tuple(int(part) for part in re.findall(r"\d+", str(msg.get("python", "")))[:2])
        if version < MIN_PYTHON:
            await conn.aclose()
            raise SandboxError(
                f"The sandbox image's python3 is {msg.get('python')}; the docker driver needs "
                f"{'.'.join(map(str, MIN_PYTHON))} or newer in the image."
            )
        if not msg.get("ws_writable"):
            log.warning("the workspace of container %s is not writable by %s", cid[:12], self.user)
        return conn

    async def _stopped(self, cid: str) -> str | None:
        """Why the container is not running (in the words the failure watch uses), or None if it runs."""
        api = await self._api()
        try:
            state = (await _blocking(api.inspect_container, cid)).get("State") or {}
        except docker.errors.NotFound:
            return "sandbox removed"
        except docker.errors.APIError:
            return None
        if state.get("Running"):
            return None
        if state.get("OOMKilled"):
            return "oom killed"
        return f"sandbox exited with code {state.get('ExitCode', '?')}"

    async def _start(self, cid: str, failed: str) -> None:
        """Start a stopped container; `failed` says what went wrong if it does not start."""
        api = await self._api()
        try:
            await _blocking(api.start, cid)
        except docker.errors.NotFound:
            raise SandboxNotFound(f"The sandbox container {cid[:12]} no longer exists.") from None
        except docker.errors.APIError as e:
            raise SandboxError(f"{failed}: {e.explanation or e}") from None

    async def _remove(self, cid: str | None, volume: str | None) -> None:
        """Remove a container (id or name) and a volume; while the engine is away, remember to do it once it is back."""
        try:
            await self._remove_now(cid, volume)
        except _EngineDown:
            self._leftovers.add((cid, volume))
            raise

    async def _remove_now(self, cid: str | None, volume: str | None) -> None:
        api = await self._api()
        if cid:
            try:
                await _blocking(api.remove_container, cid, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: removal already in progress
                    raise SandboxError(f"Could not remove the sandbox container: {e.explanation or e}") from None
        if volume:
            await self._remove_volume(volume)

    async def _remove_volume(self, volume: str) -> None:
        api = await self._api()
        for _ in range(50):
            try:
                await _blocking(api.remove_volume, volume)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: still in use while the container goes away
                    raise SandboxError(
                        f"Could not remove the workspace volume {volume}: {e.explanation or e}"
                    ) from None
            await anyio.sleep(0.1)
        raise SandboxError(f"The workspace volume {volume} is still in use.")

    # -- engine outages -------------------------------------------------------------------------
    #
    # Without live-restore a stopping engine stops every container. It refuses new connections at once
    # but serves those already open for about a second more, so `die` events may or may not arrive, and
    # an inspect may still answer "exited". So a stopped container is only reported dead once the engine
    # answers a new connection; one that stopped while the engine was away is started again instead.

    async def _engine_down(self) -> bool:
        """True (and an outage noted) if the engine does not answer a new connection."""
        version = self._client.api.api_version if self._client is not None else "auto"

        def ping() -> None:
            client = self._new_client(version, timeout=10)
            try:
                client.ping()
            finally:
                client.close()

        try:
            await anyio.to_thread.run_sync(ping)
        except Exception:
            if self._down_since is None:
                self._down_since = time.time()
                log.warning("the Docker engine is not answering; waiting for it")
            return True
        if self._down_since is not None:
            if self._down_confirmed:
                self._outage = (self._down_since, time.time())
            log.warning("the Docker engine answers again")
            self._down_since, self._down_confirmed = None, False
        return False

    def _confirm_outage(self) -> None:
        """The engine ended the event stream and does not answer: it went away (stopping, restarting)."""
        if self._down_since is not None and not self._down_confirmed:
            self._down_confirmed = True
            self._outages += 1
            # A stop ends the stream within seconds of refusing connections; an older first miss was another matter.
            self._down_since = max(self._down_since, time.time() - 60)

    def _stopped_by_outage(self, state: dict[str, Any]) -> bool:
        if self._outage is None or state.get("OOMKilled") or state.get("Status") != "exited":
            return False
        began, ended = self._outage
        finished = _epoch(state.get("FinishedAt"))
        return finished is not None and began - OUTAGE_SLACK_S <= finished <= ended + 1.0

    async def _revive(self, cid: str) -> bool:
        """Whether the container runs (again). One the engine stopped while going away is started again
        (its workspace volume is kept) and its old control shells dropped; one that stopped for another
        reason is left alone. Raises _EngineDown while the engine does not answer, SandboxNotFound if
        the container is gone."""
        async with self._revive_locks[cid]:
            if await self._engine_down():
                raise _EngineDown(f"The Docker engine is not answering. {ENGINE_HELP}")
            api = await self._api()
            try:
                state = (await _blocking(api.inspect_container, cid)).get("State") or {}
            except docker.errors.NotFound:
                raise SandboxNotFound(f"The sandbox container {cid[:12]} no longer exists.") from None
            if state.get("Running"):
                return True
            if cid in self._closing or not self._stopped_by_outage(state):
                return False
            stale = [s._conn for s in list(self._sandboxes) if s._cid == cid and s._conn is not None]
            await self._start(cid, "The Docker engine restarted and the sandbox did not start again")
            self._revived[cid] = time.time()
            for conn in stale:
                await conn.aclose()
            log.warning("started sandbox container %s again: the Docker engine had stopped it", cid[:12])
            return True

    async def _reopen(self, cid: str, env: dict[str, str] | None) -> ControlClient:
        """Open a control shell in the container. Through an engine outage, wait for the engine (up to
        ENGINE_WAIT_S) and start the container again if the engine stopped it."""
        deadline = time.monotonic() + ENGINE_WAIT_S
        retry_now = True
        while True:
            try:
                return await self._open_control(cid, env)
            except SandboxNotFound:
                raise
            except SandboxError as e:
                error: SandboxError = e
            try:
                if isinstance(error, _ContainerStopped) and await self._revive(cid):
                    if retry_now:  # at once after a restart; if it stopped again, at the pace of the wait below
                        retry_now = False
                        continue
                elif not isinstance(error, _EngineDown) and not await self._engine_down():
                    raise error
            except _EngineDown as e:
                error = e
            if time.monotonic() > deadline:
                raise _EngineDown(f"The Docker engine did not come back within {ENGINE_WAIT_S:g} s: {error}")
            await anyio.sleep(ENGINE_POLL_S)

    async def _reconcile(self, on_failure: FailureCallback) -> None:
        """After an outage: start again the session containers the engine stopped, report the ones that
        died otherwise or are gone, drop dead pool containers (the pool refills) and remove leftovers."""
        async with self._reconcile_lock:
            known = [s for s in list(self._sandboxes) if not s._closed]
            try:
                api = await self._api()
                listed = await _blocking(
                    api.containers, all=True, filters={"label": [f"{LABEL_SANDBOX}=1", f"{LABEL_SERVER}={self.server_id}"]}
                )
            except SandboxError as e:
                log.warning("could not check the sandboxes after the engine came back: %s", e)
                return
            present = {c["Id"] for c in listed}
            async with anyio.create_task_group() as tg:
                for c in listed:
                    name = ((c.get("Names") or ["/"])[0]).lstrip("/")
                    if name.startswith(SESSION_PREFIX) and c.get("State") == "exited" and c["Id"] not in self._closing:
                        tg.start_soon(self._recover, c["Id"], name[len(SESSION_PREFIX) :], on_failure)
            for sandbox in known:
                if sandbox._cid not in present and not sandbox._closed and sandbox._cid not in self._closing:
                    await on_failure(sandbox.name, "sandbox removed")
            running = {c["Id"] for c in listed if c.get("State") == "running"}
            for entry in [e for e in self._pool if e.container_id not in running]:
                if entry in self._pool:
                    self._pool.remove(entry)
                    await self._discard(entry)
            self._pool_wanted.set()
            for ref, volume in list(self._leftovers):
                self._leftovers.discard((ref, volume))
                try:
                    await self._remove(ref, volume)
                except SandboxError as e:
                    log.warning("could not remove %s left from the outage: %s", ref or volume, e)

    async def _recover(self, cid: str, name: str, on_failure: FailureCallback) -> None:
        try:
            if await self._revive(cid):
                for sandbox in [s for s in list(self._sandboxes) if s._cid == cid]:
                    await sandbox._connection()  # its control shell, ready for the next command
                return
            reason = await self._stopped(cid)
        except _EngineDown:
            return  # away again: the next reconnect looks again
        except SandboxNotFound:
            reason = "sandbox removed"
        except SandboxError as e:
            reason = str(e)
        if reason:
            await on_failure(name, reason)

    # -- the protocol ---------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> DockerSandbox:
        if not spec.name or not all(c.isalnum() or c in "_.-" for c in spec.name) or not spec.name[0].isalnum():
            raise SandboxError(f"Invalid sandbox name {spec.name!r}: use letters, digits, '_', '.' and '-'.")
        policy = self._policy(spec)
        name = SESSION_PREFIX + spec.name
        if policy == self._pool_policy:
            sandbox = await self._claim(spec, name, on_phase)
            if sandbox is not None:
                return sandbox
        volume = VOLUME_PREFIX + spec.name
        cid, host_config, conn = await self._make_container(
            policy, name, volume, self._labels(spec), spec.env, on_phase
        )
        return DockerSandbox(
            self, cid, name, spec, image=policy.image, host_config=host_config, volume=volume, conn=conn
        )

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
                    await _blocking(api.rename, entry.container_id, name)
            except docker.errors.NotFound:
                await self._discard(entry)
                continue
            except (docker.errors.APIError, SandboxError) as e:
                self._pool.insert(0, entry)
                if isinstance(e, docker.errors.APIError) and e.status_code == 409:
                    raise SandboxError(f"A sandbox container named {name} already exists.") from None
                raise SandboxError(f"Could not claim a pooled sandbox: {e}") from None
            return DockerSandbox(
                self,
                entry.container_id,
                name,
                spec,
                image=self._pool_policy.image,
                host_config=entry.host_config,
                volume=entry.volume,
                pooled=True,
                conn=entry.conn,
            )
        return None

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> DockerSandbox:
        api = await self._api()
        try:
            info = await _blocking(api.inspect_container, sandbox_id)
        except docker.errors.NotFound:
            raise SandboxNotFound(f"The sandbox container {sandbox_id[:12]} no longer exists.") from None
        labels = info["Config"].get("Labels") or {}
        cname = info["Name"].lstrip("/")
        if labels.get(LABEL_SANDBOX) != "1" or (
            cname != SESSION_PREFIX + spec.name and labels.get(LABEL_NAME) != spec.name
        ):
            raise SandboxNotFound(f"The container {sandbox_id[:12]} is not the sandbox of {spec.name}.")
        state = info["State"]
        cid = info["Id"]
        if state.get("Paused"):
            await _blocking(api.unpause, cid)
        elif not state.get("Running"):
            if state.get("Status") in ("removing", "dead"):
                raise SandboxNotFound(f"The sandbox container {cid[:12]} is {state.get('Status')}.")
            await self._start(
                cid, f"The sandbox container {cid[:12]} had stopped (exit code {state.get('ExitCode')}) and did not start again"
            )
        volume = next(
            (m.get("Name") for m in info.get("Mounts") or [] if m.get("Destination") == WORKSPACE and m.get("Name")),
            None,
        )
        self._closing.discard(cid)
        conn = await self._open_control(cid, spec.env)
        return DockerSandbox(
            self,
            cid,
            cname,
            spec,
            image=info["Config"].get("Image") or "",
            host_config=info["HostConfig"],
            volume=volume,
            pooled=labels.get(LABEL_POOL) == "1",
            conn=conn,
        )

    async def watch(self, on_failure: FailureCallback) -> None:
        """Report this server's sandboxes that die, get OOM-killed or get removed; keep the warm pool full.

        Follows the engine's event stream filtered by this server's labels. A `die` is held for half a
        second, so a container removed with force is reported once, as "sandbox removed"; a `die` while
        the engine is stopping is not reported. When the stream comes back after the engine went away,
        `_reconcile` starts again the sandboxes the engine stopped and replaces the pool.
        """
        async with anyio.create_task_group() as tg:
            if self.pool_size:
                tg.start_soon(self._keep_pool)
            await self._follow_events(on_failure, tg)

    async def _follow_events(self, on_failure: FailureCallback, tg: anyio.abc.TaskGroup) -> None:
        api = await self._api()
        limiter = anyio.CapacityLimiter(1)
        filters = {
            "type": "container",
            "label": [f"{LABEL_SANDBOX}=1", f"{LABEL_SERVER}={self.server_id}"],
            "event": ["die", "oom", "destroy"],
        }
        pending_die: dict[str, anyio.CancelScope] = {}
        since: int | None = None  # live events only; after a reconnect, replay from the last one seen

        async def report_die(cid: str, sandbox: str, code: str) -> None:
            with anyio.CancelScope() as scope:
                pending_die[cid] = scope
                await anyio.sleep(0.5)
                pending_die.pop(cid, None)
                if cid in self._closing:
                    return
                try:
                    if await self._revive(cid):  # the engine stopped it while going away: it runs again
                        return
                    reason = await self._stopped(cid) or f"sandbox exited with code {code}"
                except _EngineDown:
                    return  # the engine is stopping: `_reconcile` decides once it is back
                except SandboxError as e:
                    reason = str(e)
                await on_failure(sandbox, reason)
            pending_die.pop(cid, None)

        while True:
            try:
                if await self._engine_down():
                    raise _EngineDown("no answer")
                stream = await _blocking(api.events, since=since, filters=filters, decode=True)
            except Exception as e:
                log.debug("docker events unavailable (%s); retrying in %g s", e, ENGINE_POLL_S)
                await anyio.sleep(ENGINE_POLL_S)
                continue
            if self._reconciled != self._outages:
                self._reconciled = self._outages
                tg.start_soon(self._reconcile, on_failure)
            try:
                while True:
                    event = await anyio.to_thread.run_sync(next, stream, None, abandon_on_cancel=True, limiter=limiter)
                    if event is None:
                        break
                    since = max(since or 0, int(event.get("time") or 0)) or None
                    await self._on_event(event, on_failure, tg, pending_die, report_die)
            except Exception as e:
                broken = isinstance(e, (requests.exceptions.RequestException, OSError)) or _is_connection_error(e)
                log.warning("the docker event stream failed (%s: %s); reconnecting", type(e).__name__, e, exc_info=not broken)
            finally:
                stream.close()
            if await self._engine_down():  # it ended the stream and takes no new connection: it is going away
                self._confirm_outage()
            await anyio.sleep(ENGINE_POLL_S)

    async def _on_event(
        self,
        event: dict[str, Any],
        on_failure: FailureCallback,
        tg: anyio.abc.TaskGroup,
        pending_die: dict[str, anyio.CancelScope],
        report_die: Callable[..., Any],
    ) -> None:
        cid = event.get("id") or event.get("Actor", {}).get("ID", "")
        attrs = event.get("Actor", {}).get("Attributes", {})
        action = event.get("Action") or event.get("status") or ""
        cname = attrs.get("name", "")
        if cname.startswith(POOL_PREFIX):
            if action in ("die", "destroy"):
                for entry in [e for e in self._pool if e.container_id == cid]:
                    self._pool.remove(entry)
                    self._pool_wanted.set()
                    tg.start_soon(self._discard, entry)
            return
        sandbox = cname[len(SESSION_PREFIX) :] if cname.startswith(SESSION_PREFIX) else attrs.get(LABEL_NAME)
        if cid in self._closing:
            if action == "destroy":
                self._closing.discard(cid)
            return
        if not sandbox:
            return
        if action == "oom":
            await on_failure(sandbox, "oom killed")
        elif action == "die":
            if cid not in pending_die:
                tg.start_soon(report_die, cid, sandbox, attrs.get("exitCode", "?"))
        elif action == "destroy":
            scope = pending_die.pop(cid, None)
            if scope is not None:
                scope.cancel()
            await on_failure(sandbox, "sandbox removed")

    # -- warm pool ------------------------------------------------------------------------------

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
                cid, host_config, conn = await self._make_container(
                    self._pool_policy, name, volume, self._labels(None), {}, None
                )
            except SandboxError as e:
                failures += 1
                log.warning("could not fill the sandbox pool: %s", e)
                wanted = self._pool_wanted = anyio.Event()
                with anyio.move_on_after(min(60, 2**failures)):
                    await wanted.wait()  # set early once the engine is back from an outage
                continue
            failures = 0
            self._pool.append(_PoolEntry(cid, name, volume, host_config, conn))

    async def _remove_stale_pool(self) -> None:
        """Remove unclaimed pool containers a previous run of this server left behind."""
        api = await self._api()
        mine = {e.container_id for e in self._pool}
        stale = await _blocking(
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

    async def _discard(self, entry: _PoolEntry) -> None:
        self._closing.add(entry.container_id)
        await entry.conn.aclose()
        try:
            await self._remove(entry.container_id, entry.volume)
        except _EngineDown:
            log.info("pool container %s is removed once the engine is back", entry.container_name)
        except SandboxError as e:
            log.warning("could not remove pool container %s: %s", entry.container_name, e)

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
