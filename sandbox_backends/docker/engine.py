"""The Docker engine as DockerDriver sees it: the SDK client, outages and what follows them, the event watch.

Separate from the rest of the driver because it is about an engine that may go away under running
sandboxes: noticing that (a new connection is refused, the event stream ends), starting again the
containers it stopped, reconnecting their control shells, reconciling once it is back, and reporting
the sandboxes that really died. `EngineMixin` is a part of `DockerDriver`, not an object of its own,
because the watch and the recovery act on the driver's sandboxes and pool as much as on the engine.
"""

from __future__ import annotations

import collections
import logging
import re
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import docker
import docker.errors
import requests.exceptions

from ..base import FailureCallback, SandboxError, SandboxNotFound
from .container import LABEL_NAME, LABEL_SANDBOX, LABEL_SERVER, POOL_PREFIX, SESSION_PREFIX

if TYPE_CHECKING:
    from ..control.client import ControlClient
    from .pool import PoolEntry
    from .sandbox import DockerSandbox

log = logging.getLogger(__name__)

ENGINE_HELP = (
    "Start it with scripts/start-docker.sh (as root: installs docker.io if needed and runs "
    "`dockerd --bridge=none --iptables=false`), or point DOCKER_HOST at a running engine."
)
ENGINE_WAIT_S = 30.0
"""How long a command (or file access) waits for an engine that stopped answering before it fails."""
ENGINE_POLL_S = 0.5
OUTAGE_SLACK_S = 5.0
"""A container that stopped up to this long before the engine was seen going away counts as stopped by it."""
_T = TypeVar("_T")


class EngineDown(SandboxError):
    """The Docker engine does not answer (stopped, restarting, or never started)."""


class ContainerStopped(SandboxError):
    """The sandbox's container is not running; the message says why, in the words the failure watch uses."""


def _engine_error(e: BaseException) -> SandboxError:
    return EngineDown(f"Cannot reach the Docker engine ({type(e).__name__}: {e}). {ENGINE_HELP}")


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


async def blocking(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a docker SDK call in a worker thread; a lost engine becomes an actionable SandboxError."""
    try:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
    except docker.errors.APIError:
        raise
    except Exception as e:
        if _is_connection_error(e):
            raise _engine_error(e) from e
        raise


class EngineMixin:
    """DockerDriver's dealings with the engine: its client, container start and removal, outages, the watch.

    Reopens control shells with the driver's `_open_control`, and keeps the pool going (`_keep_pool`,
    `_discard`) while the watch runs.
    """

    # Set by DockerDriver; shared with its other parts.
    server_id: str
    base_url: str | None
    pool_size: int
    _closing: set[str]
    """Containers being removed on purpose: their death is no failure to report."""
    _sandboxes: weakref.WeakSet[DockerSandbox]
    _pool: list[PoolEntry]
    _pool_wanted: anyio.Event

    if TYPE_CHECKING:  # what it calls on the driver's other parts

        async def _open_control(self, cid: str, env: dict[str, str] | None = None, *, shells: bool = True) -> ControlClient: ...
        async def _keep_pool(self) -> None: ...
        async def _discard(self, entry: PoolEntry) -> None: ...
        async def _disk_mounter(self, cid: str, info: dict[str, Any] | None = None) -> Callable[[], None]: ...
        async def _drop_disk(self, volume: str) -> None: ...

    def _init_engine(self) -> None:
        self._client: docker.DockerClient | None = None
        self._client_lock = anyio.Lock()
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

    async def _stopped(self, cid: str) -> str | None:
        """Why the container is not running (in the words the failure watch uses), or None if it runs."""
        api = await self._api()
        try:
            info = await blocking(api.inspect_container, cid)
        except docker.errors.NotFound:
            return "sandbox removed"
        except docker.errors.APIError:
            return None
        state, host = info.get("State") or {}, info.get("HostConfig") or {}
        if state.get("Running"):
            return None
        if state.get("OOMKilled"):
            return "oom killed"
        code = state.get("ExitCode", "?")
        memory_mb = (host.get("Memory") or 0) >> 20
        if code == 137 and memory_mb and host.get("Runtime") not in (None, "", "runc"):
            # Under gVisor the engine does not always flag an OOM kill (measured: 1 run in 6 exits 137 unflagged).
            return (
                f"sandbox exited with code 137 (killed: under {host['Runtime']}, that is how a sandbox that reaches "
                f"its memory limit of {memory_mb} MiB can end; create the session with a larger limits.memory_mb)"
            )
        return f"sandbox exited with code {code}"

    async def _start(self, cid: str, failed: str, info: dict[str, Any] | None = None) -> None:
        """Start a stopped container (`info`: as just inspected, if it was); `failed` says what went wrong if
        it does not start."""
        api = await self._api()
        mount = await self._disk_mounter(cid, info)

        def start() -> None:
            mount()
            api.start(cid)

        try:
            await blocking(start)
        except docker.errors.NotFound:
            raise SandboxNotFound(f"The sandbox container {cid[:12]} no longer exists.") from None
        except docker.errors.APIError as e:
            raise SandboxError(f"{failed}: {e.explanation or e}") from None

    async def _remove(self, cid: str | None, volume: str | None) -> None:
        """Remove a container (id or name) and a volume; while the engine is away, remember to do it once it is back."""
        try:
            await self._remove_now(cid, volume)
        except EngineDown:
            self._leftovers.add((cid, volume))
            raise

    async def _remove_now(self, cid: str | None, volume: str | None) -> None:
        api = await self._api()
        if cid:
            try:
                await blocking(api.remove_container, cid, force=True)
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
                await blocking(api.remove_volume, volume)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: still in use while the container goes away
                    raise SandboxError(f"Could not remove the workspace volume {volume}: {e.explanation or e}") from None
            await anyio.sleep(0.1)
        else:
            raise SandboxError(f"The workspace volume {volume} is still in use.")
        await self._drop_disk(volume)  # its filesystem, if it has one

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
        reason is left alone. Raises EngineDown while the engine does not answer, SandboxNotFound if
        the container is gone."""
        async with self._revive_locks[cid]:
            if await self._engine_down():
                raise EngineDown(f"The Docker engine is not answering. {ENGINE_HELP}")
            api = await self._api()
            try:
                state = (await blocking(api.inspect_container, cid)).get("State") or {}
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

    async def _reopen(self, cid: str, env: dict[str, str] | None, *, shells: bool = True) -> ControlClient:
        """Open a control shell in the container. Through an engine outage, wait for the engine (up to
        ENGINE_WAIT_S) and start the container again if the engine stopped it."""
        deadline = time.monotonic() + ENGINE_WAIT_S
        retry_now = True
        while True:
            try:
                return await self._open_control(cid, env, shells=shells)
            except SandboxNotFound:
                raise
            except SandboxError as e:
                error: SandboxError = e
            try:
                if isinstance(error, ContainerStopped) and await self._revive(cid):
                    if retry_now:  # at once after a restart; if it stopped again, at the pace of the wait below
                        retry_now = False
                        continue
                elif not isinstance(error, EngineDown) and not await self._engine_down():
                    raise error
            except EngineDown as e:
                error = e
            if time.monotonic() > deadline:
                raise EngineDown(f"The Docker engine did not come back within {ENGINE_WAIT_S:g} s: {error}")
            await anyio.sleep(ENGINE_POLL_S)

    async def _reconcile(self, on_failure: FailureCallback) -> None:
        """After an outage: start again the session containers the engine stopped, report the ones that
        died otherwise or are gone, drop dead pool containers (the pool refills) and remove leftovers."""
        async with self._reconcile_lock:
            known = [s for s in list(self._sandboxes) if not s._closed]
            try:
                api = await self._api()
                listed = await blocking(
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
        except EngineDown:
            return  # away again: the next reconnect looks again
        except SandboxNotFound:
            reason = "sandbox removed"
        except SandboxError as e:
            reason = str(e)
        if reason:
            await on_failure(name, reason)

    async def watch(self, on_failure: FailureCallback) -> None:
        """Report this server's sandboxes that die (of an out-of-memory kill too) or get removed; keep the warm pool full.

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
            # Not "oom": the kernel killing a process at the memory limit fails that command's turn (the control
            # shell counts the kills), not the session; a container that dies of it sends "die" (OOMKilled).
            "event": ["die", "destroy"],
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
                except EngineDown:
                    return  # the engine is stopping: `_reconcile` decides once it is back
                except SandboxError as e:
                    reason = str(e)
                await on_failure(sandbox, reason)
            pending_die.pop(cid, None)

        while True:
            try:
                if await self._engine_down():
                    raise EngineDown("no answer")
                stream = await blocking(api.events, since=since, filters=filters, decode=True)
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
        if action == "die":
            if cid not in pending_die:
                tg.start_soon(report_die, cid, sandbox, attrs.get("exitCode", "?"))
        elif action == "destroy":
            scope = pending_die.pop(cid, None)
            if scope is not None:
                scope.cancel()
            await on_failure(sandbox, "sandbox removed")
