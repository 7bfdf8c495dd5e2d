"""KubernetesDriver: sessions as agent-sandbox `Sandbox`es, their control shells over the pods' exec websockets.

The front of the driver: making a Sandbox (or claiming one from a warm pool) and waiting for `Ready`,
finding it again by its labels, watching for what ends one behind the server's back, and opening control
shells. What the bodies hold and what the conditions mean is in resources.py; the websocket in
websocket.py; the commands and files in sandbox.py (`ControlSandbox`'s).
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import anyio
import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import SingleConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType

from ..base import FailureCallback, Limits, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec
from ..control.client import Broken, ControlClient, Lost, control_command, python_too_old, say_hello
from . import resources as r
from .sandbox import KubernetesSandbox
from .websocket import ExecWebSocket, connect, exec_url

log = logging.getLogger(__name__)

Sandbox = create_namespaced_resource(r.GROUP, r.VERSION, "Sandbox", "sandboxes")
SandboxClaim = create_namespaced_resource(r.EXTENSIONS_GROUP, r.VERSION, "SandboxClaim", "sandboxclaims")

CONNECT_TIMEOUT_S = 30.0
"""How long a new control shell may take to answer its hello."""
POLL_S = 2.0
"""While waiting for Ready, the pod is looked at this often too: image pulls and evictions show on it, not on the Sandbox."""
WATCH_RETRY_S = 5.0


def as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _missing(e: ApiError) -> bool:
    return getattr(e.status, "code", None) == 404


class KubernetesDriver:
    """Makes `KubernetesSandbox`es. Keyword-only arguments; nothing touches the cluster until first use.

    - `policy`: the namespace and what every pod gets (image, runtime class, storage class).
    - `server_id`: the `mcp-sessions.server` label; `watch` looks only at this server's sandboxes.
    - `kubeconfig` / `context`: where the cluster is (default: in-cluster, else $KUBECONFIG or ~/.kube/config).
    - `warm_pool`: a SandboxWarmPool to claim sandboxes from, for sessions that ask for no image or limits.
    - `network_policy`: keep a deny-all NetworkPolicy over every sandbox pod of this program.
    - `max_limits`, `default_disk_mb`: the most a session may ask for, and its workspace claim's default size.
    - `ready_timeout_s`: how long a Sandbox may take to become Ready before its session fails.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        policy: r.PodPolicy,
        server_id: str = "default",
        kubeconfig: str | None = None,
        context: str | None = None,
        warm_pool: str | None = None,
        network_policy: bool = True,
        max_limits: Limits | None = None,
        default_disk_mb: int = 4096,
        ready_timeout_s: float = 300.0,
        container: str | None = r.CONTAINER,
    ) -> None:
        self.policy = policy
        self.server_id = server_id
        self.kubeconfig = kubeconfig
        self.context = context
        self.warm_pool = warm_pool
        self.network_policy = network_policy
        self.max_limits = max_limits
        self.default_disk_mb = default_disk_mb
        self.ready_timeout_s = ready_timeout_s
        self.container = container
        self.user = r.USER
        self._client: AsyncClient | None = None
        self._config: SingleConfig | None = None
        self._exec_params: dict[str, Any] | None = None
        self._policy_made = False
        self._closing: set[str] = set()
        self._sandboxes: weakref.WeakSet[KubernetesSandbox] = weakref.WeakSet()

    # -- the API server -------------------------------------------------------------------------

    def _single_config(self) -> SingleConfig:
        if self._config is None:
            config = KubeConfig.from_file(self.kubeconfig) if self.kubeconfig else KubeConfig.from_env()
            single = config.get(self.context)
            if single is None:
                raise SandboxError(f"The kubeconfig has no context {self.context!r}: set kubernetes_context to one it has.")
            self._config = single
        return self._config

    def _api(self) -> AsyncClient:
        if self._client is None:
            try:
                self._client = AsyncClient(self._single_config(), namespace=self.policy.namespace)
            except SandboxError:
                raise
            except Exception as e:
                raise SandboxError(f"Cannot reach the Kubernetes cluster's configuration: {e}") from None
        return self._client

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """One API call; a refusal becomes a SandboxError naming what was asked (a 404 `SandboxNotFound`)."""
        try:
            return await fn()
        except ApiError as e:
            if _missing(e):
                raise SandboxNotFound(f"{what}: not found ({e.status.message}).") from None
            raise SandboxError(f"{what}: the API server refused ({e.status.code}): {e.status.message}") from None
        except httpx2.HTTPError as e:
            raise SandboxError(f"{what}: the API server cannot be reached ({e}).") from None

    async def _get(self, res: Any, name: str) -> dict[str, Any]:
        return as_dict(await self._call(f"{res.__name__} {name}", lambda: self._api().get(res, name)))

    async def _delete(self, res: Any, name: str) -> None:
        try:
            await self._call(f"deleting {res.__name__} {name}", lambda: self._api().delete(res, name))
        except SandboxNotFound:
            pass

    async def _ensure_network_policy(self) -> None:
        if not self.network_policy or self._policy_made:
            return
        try:
            await self._api().create(cast(NetworkPolicy, NetworkPolicy.from_dict(r.deny_all_body(self.policy.namespace))))
        except ApiError as e:
            if getattr(e.status, "code", None) != 409:  # made by another server, or earlier: it is the same
                raise SandboxError(
                    f"Cannot make the deny-all NetworkPolicy {r.DENY_ALL_POLICY} ({e.status.code}: {e.status.message}); "
                    "give the server's account `create` on networkpolicies, or set kubernetes_network_policy=false."
                ) from None
        self._policy_made = True

    # -- making and finding sandboxes -------------------------------------------------------------

    def _limits(self, spec: SandboxSpec) -> tuple[Limits, int]:
        limits = spec.limits
        for field in ("memory_mb", "cpus", "tmp_mb"):
            asked = getattr(limits, field)
            if asked <= 0:
                raise SandboxError(f"limits.{field} must be positive.")
            most = getattr(self.max_limits, field) if self.max_limits else None
            if most is not None and asked > most:
                raise SandboxError(f"limits.{field}={asked} is over this server's maximum of {most}.")
        disk = limits.disk_mb or self.default_disk_mb
        if self.max_limits and self.max_limits.disk_mb and disk > self.max_limits.disk_mb:
            raise SandboxError(f"limits.disk_mb={disk} is over this server's maximum of {self.max_limits.disk_mb}.")
        if spec.network:
            raise SandboxError("This server does not give kubernetes sandboxes network access (a deny-all NetworkPolicy).")
        if spec.mounts:  # the server's files are not on the node that runs the pod
            raise SandboxError(
                f"A kubernetes sandbox cannot see this server's files ({', '.join(sorted(spec.mounts))}), which this "
                "agent needs: run it on the docker or local driver."
            )
        return limits, disk

    def check(self, spec: SandboxSpec) -> None:
        """Refuse limits over the server's maximum, a network or mounts, before anything is made."""
        try:
            self._limits(spec)
        except SandboxError as e:
            raise ValueError(str(e)) from None

    def _from_pool(self, spec: SandboxSpec) -> bool:
        return bool(self.warm_pool) and spec.image is None and spec.limits == Limits()

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> KubernetesSandbox:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,49}", spec.name) or spec.name.endswith((".", "-", "_")):
            raise SandboxError(f"Invalid sandbox name {spec.name!r}: use letters, digits, '_', '.' and '-' (50 at most).")
        limits, disk_mb = self._limits(spec)
        name = r.object_name(spec.name)
        labels = r.labels(self.server_id, spec.name, spec.labels)
        if on_phase:
            await on_phase("creating_sandbox", f"Sandbox {name} in namespace {self.policy.namespace}")
        await self._ensure_network_policy()
        claimed = self._from_pool(spec)
        if claimed:
            assert self.warm_pool is not None
            body = r.claim_body(name, self.policy.namespace, self.warm_pool, labels)
            await self._call(
                f"claiming from the warm pool {self.warm_pool}", lambda: self._api().create(SandboxClaim.from_dict(body))
            )
        else:
            body = r.sandbox_body(name, self.policy, limits, disk_mb, labels)
            await self._make(body)  # refused (one of that name exists, say): nothing of ours to remove
        try:
            if claimed:
                claim = await self._wait_ready(SandboxClaim, name, on_phase)
                adopted = str(((claim.get("status") or {}).get("sandbox") or {}).get("name"))
                obj = await self._wait_ready(Sandbox, adopted, on_phase)
            else:
                obj = await self._wait_ready(Sandbox, name, on_phase)
            sandbox = self._sandbox(obj, spec, claimed=claimed, image=None if claimed else body_image(body), disk_mb=disk_mb)
            sandbox._conn = await self._open_control(sandbox.pod, spec.env)
            return sandbox
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self._remove(name, name if claimed else None)
                except Exception:
                    log.exception("removing the sandbox %s that failed to come up", name)
            raise

    async def _make(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        try:
            await self._api().create(Sandbox.from_dict(body))
        except ApiError as e:
            if getattr(e.status, "code", None) == 409:
                raise SandboxError(f"A Sandbox named {name} already exists in namespace {self.policy.namespace}.") from None
            if _missing(e):
                raise SandboxError(
                    "The cluster has no Sandbox resource (agents.x-k8s.io/v1beta1): install kubernetes-sigs/agent-sandbox "
                    "(its CRDs and controller), then create the session again."
                ) from None
            raise SandboxError(f"The API server refused the Sandbox ({e.status.code}): {e.status.message}") from None
        except httpx2.HTTPError as e:
            raise SandboxError(f"The API server cannot be reached: {e}") from None

    async def _wait_ready(self, res: Any, name: str, on_phase: PhaseCallback | None) -> dict[str, Any]:
        """Until the object's Ready condition is True, announcing the phases its conditions show; its failure
        (or its pod's) ends the wait with the reason."""
        shown: tuple[str, str] | None = None
        last = "the controller has not answered yet (is the agent-sandbox controller running?)"
        try:
            with anyio.fail_after(self.ready_timeout_s):
                while True:
                    obj = await self._get(res, name)
                    if why := r.failure(obj):
                        raise SandboxError(why)
                    now = r.phase(obj)
                    if r.is_ready(obj):
                        if on_phase is not None and now is not None and res is Sandbox:
                            await on_phase(*now)
                        return obj
                    if now is not None:
                        last = now[1]
                        if now != shown and on_phase is not None:
                            await on_phase(*now)
                        shown = now
                    if res is Sandbox:
                        await self._check_pod(r.pod_name(obj))
                    await self._next_change(res, name, (obj.get("metadata") or {}).get("resourceVersion"))
        except TimeoutError:
            raise SandboxError(
                f"The {res.__name__} {name} was not Ready within {self.ready_timeout_s:g} s ({last}). Check the cluster's "
                "capacity and the controller, or raise kubernetes_ready_timeout."
            ) from None

    async def _check_pod(self, pod: str) -> None:
        try:
            obj = await self._get(Pod, pod)
        except SandboxNotFound:
            return  # not made yet
        if why := r.pod_failure(obj):
            raise SandboxError(why)

    async def _next_change(self, res: Any, name: str, version: str | None) -> None:
        """Until the object changes from `version` (a watch), or POLL_S passes."""
        with anyio.move_on_after(POLL_S):
            try:
                async for _op, obj in self._api().watch(res, fields={"metadata.name": name}, resource_version=version):
                    if (as_dict(obj).get("metadata") or {}).get("resourceVersion") != version:
                        return
            except (ApiError, httpx2.HTTPError) as e:
                log.debug("watching %s %s: %s", res.__name__, name, e)

    def _sandbox(
        self, obj: dict[str, Any], spec: SandboxSpec, *, claimed: bool, image: str | None, disk_mb: int
    ) -> KubernetesSandbox:
        sandbox = KubernetesSandbox(
            self,
            obj["metadata"]["name"],
            r.pod_name(obj),
            spec,
            claimed=claimed,
            image=image or self.policy.image,
            disk_mb=disk_mb,
        )
        self._sandboxes.add(sandbox)
        return sandbox

    async def _own(self, sandbox_id: str, spec: SandboxSpec) -> tuple[dict[str, Any], bool]:
        """The Sandbox `sandbox_id` if it is `spec`'s (else SandboxNotFound), and whether a warm pool's claim got it."""
        try:
            obj = await self._get(Sandbox, sandbox_id)
        except SandboxNotFound:
            raise SandboxNotFound(f"The Sandbox {sandbox_id} no longer exists.") from None
        pod_labels = ((obj.get("spec") or {}).get("podTemplate") or {}).get("metadata", {}).get("labels") or {}
        meta_labels = (obj.get("metadata") or {}).get("labels") or {}
        claimed = sandbox_id != r.object_name(spec.name)
        if claimed:  # adopted from a warm pool: the claim of the session's name says which Sandbox it got
            try:
                claim = await self._get(SandboxClaim, r.object_name(spec.name))
            except SandboxNotFound:
                raise SandboxNotFound(f"The Sandbox {sandbox_id} is not the sandbox of {spec.name}.") from None
            if ((claim.get("status") or {}).get("sandbox") or {}).get("name") != sandbox_id:
                raise SandboxNotFound(f"The Sandbox {sandbox_id} is not the sandbox of {spec.name}.")
        elif spec.name not in (pod_labels.get(r.LABEL_NAME), meta_labels.get(r.LABEL_NAME)):
            raise SandboxNotFound(f"The Sandbox {sandbox_id} is not the sandbox of {spec.name}.")
        return obj, claimed

    async def close_paused(self, sandbox_id: str, spec: SandboxSpec, *, delete: bool) -> None:
        """Delete a suspended Sandbox (or give a warm pool's back) as it is, its pod never started again; `delete`:
        its workspace claim too."""
        _, claimed = await self._own(sandbox_id, spec)
        await self._remove(sandbox_id, r.object_name(spec.name) if claimed else None, delete=delete)

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> KubernetesSandbox:
        obj, claimed = await self._own(sandbox_id, spec)
        if why := r.failure(obj):
            raise SandboxNotFound(f"The Sandbox {sandbox_id} cannot be used: {why}")
        self._closing.discard(sandbox_id)
        if r.suspended(obj):
            obj = await self._resume(sandbox_id)
        elif not r.is_ready(obj):
            obj = await self._wait_ready(Sandbox, sandbox_id, None)
        containers = ((obj.get("spec") or {}).get("podTemplate") or {}).get("spec", {}).get("containers") or [{}]
        disk = next(
            (
                c["spec"]["resources"]["requests"]["storage"]
                for c in (obj.get("spec") or {}).get("volumeClaimTemplates") or []
                if c.get("metadata", {}).get("name") == r.WORKSPACE_CLAIM
            ),
            f"{self.default_disk_mb}Mi",
        )
        sandbox = self._sandbox(obj, spec, claimed=claimed, image=containers[0].get("image"), disk_mb=mebibytes(disk))
        sandbox._conn = await self._open_control(sandbox.pod, spec.env)
        return sandbox

    # -- suspend and resume ---------------------------------------------------------------------

    async def _set_mode(self, name: str, mode: str) -> None:
        await self._call(
            f"setting the Sandbox {name} {mode}",
            lambda: self._api().patch(Sandbox, name, {"spec": {"operatingMode": mode}}, patch_type=PatchType.MERGE),
        )

    async def _suspend(self, name: str) -> None:
        await self._set_mode(name, "Suspended")
        try:
            with anyio.fail_after(self.ready_timeout_s):
                while True:
                    obj = await self._get(Sandbox, name)
                    # Ready's reason, not the Suspended condition: a stale one lingers after a resume.
                    if (r.condition(obj, "Ready") or {}).get("reason") == "SandboxSuspended":
                        return
                    await self._next_change(Sandbox, name, (obj.get("metadata") or {}).get("resourceVersion"))
        except TimeoutError:
            raise SandboxError(
                f"The Sandbox {name} was not suspended within {self.ready_timeout_s:g} s (is the agent-sandbox controller "
                "running, and does it support operatingMode?)."
            ) from None

    async def _resume(self, name: str) -> dict[str, Any]:
        await self._set_mode(name, "Running")
        return await self._wait_ready(Sandbox, name, None)

    # -- control shells ---------------------------------------------------------------------------

    async def _exec_socket(self, pod: str, command: list[str]) -> ExecWebSocket:
        if self._exec_params is None:  # the server's address, TLS context and credentials, as lightkube's requests use
            self._exec_params = ConnectionParams().httpx_params(self._single_config())
        params = self._exec_params
        url = exec_url(str(params["base_url"]), self.policy.namespace, pod, command, self.container)
        headers: dict[str, str] = {}
        auth = params.get("auth")
        if auth is not None:  # bearer tokens, token files and exec plugins, as lightkube's own requests get them
            request = httpx2.Request("GET", url)
            flow = auth.async_auth_flow(request)
            request = await flow.__anext__()
            await flow.aclose()
            if "authorization" in request.headers:
                headers["Authorization"] = request.headers["authorization"]
        secure = url.startswith("https")
        return await anyio.to_thread.run_sync(connect, url, headers, params["verify"] if secure else None)

    async def _open_control(self, pod: str, env: dict[str, str] | None, *, shells: bool = True) -> ControlClient:
        """Start the control shell in the pod (one exec, kept open) and say hello; `shells=False`: a connection
        for byte streams, which starts no command shells ahead."""
        transport = await self._exec_socket(pod, control_command(r.STATE_DIR, self.policy.workspace))
        conn = ControlClient(transport, name=pod)
        try:
            msg = await say_hello(conn, env, self.user, CONNECT_TIMEOUT_S, shells=shells)
        except (Lost, TimeoutError) as e:
            await conn.aclose()
            detail = (transport.stderr.strip().splitlines() or [""])[-1]
            if isinstance(e, Broken):
                raise SandboxError(f"The sandbox's control shell did not start properly: {e}.") from None
            raise SandboxError(
                "The sandbox's control shell did not start"
                + (f": {detail}" if detail else "")
                + " (the image needs bash and python3)."
            ) from None
        if msg.get("error"):
            await conn.aclose()
            raise SandboxError(f"The sandbox's control shell refused to start: {msg.get('message') or msg['error']}.")
        if old := python_too_old(msg):
            await conn.aclose()
            raise SandboxError(f"The sandbox image's python3 is {old}; the kubernetes driver needs 3.8 or newer in the image.")
        return conn

    async def _reopen(self, sandbox: KubernetesSandbox, *, shells: bool = True) -> ControlClient:
        """A new control shell for a sandbox whose connection is gone; a suspended Sandbox is resumed first."""
        obj = await self._get(Sandbox, sandbox.id)
        if r.suspended(obj):
            obj = await self._resume(sandbox.id)
            sandbox._resumed()
        sandbox.pod = r.pod_name(obj)
        return await self._open_control(sandbox.pod, sandbox._spec.env, shells=shells)

    # -- watching and closing ---------------------------------------------------------------------

    async def watch(self, on_failure: FailureCallback) -> None:
        """Report this server's sandboxes that end behind its back: the controller's failures and expiries,
        removed Sandboxes, and pods the cluster evicted or cannot start."""
        reported: set[tuple[str, str]] = set()

        async def report(name: str | None, why: str | None) -> None:
            if name and why and (name, why) not in reported:
                reported.add((name, why))
                await on_failure(name, why)

        async def objects(res: Any) -> None:  # Sandboxes, and claims (whose adopted Sandbox need not carry our labels)
            async for op, obj in self._watch(res):
                name = (obj.get("metadata") or {}).get("labels", {}).get(r.LABEL_NAME)
                if op == "DELETED" and obj["metadata"]["name"] not in self._closing:
                    await report(name, "sandbox removed")
                elif op != "DELETED":
                    await report(name, r.failure(obj))

        async def pods() -> None:
            async for op, obj in self._watch(Pod):
                if op != "DELETED":
                    await report((obj.get("metadata") or {}).get("labels", {}).get(r.LABEL_NAME), r.pod_failure(obj))

        async with anyio.create_task_group() as tg:
            tg.start_soon(objects, Sandbox)
            if self.warm_pool:
                tg.start_soon(objects, SandboxClaim)
            tg.start_soon(pods)

    async def _watch(self, res: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            try:
                async for op, obj in self._api().watch(res, labels={r.LABEL_SERVER: self.server_id}):
                    yield op, as_dict(obj)
            except (ApiError, httpx2.HTTPError, SandboxError) as e:
                log.warning("watching %s: %s; again in %g s", res.__name__, e, WATCH_RETRY_S)
            await anyio.sleep(WATCH_RETRY_S)

    async def _remove(self, sandbox: str, claim: str | None, *, delete: bool = False) -> None:
        """Delete a session's Sandbox, or its claim (which gives the Sandbox back to the controller); `delete` also
        the Sandbox's workspace claim. The watch does not report either as removed."""
        self._closing.update((sandbox, claim) if claim else (sandbox,))
        if claim:
            await self._delete(SandboxClaim, claim)
        else:
            await self._delete(Sandbox, sandbox)
        if delete:
            await self._delete(PersistentVolumeClaim, f"{r.WORKSPACE_CLAIM}-{sandbox}")

    async def remove_leftovers(self, sandbox_id: str, described: Mapping[str, object]) -> None:
        """The workspace claim a closed sandbox kept (named in its description), if it is one this driver's
        Sandboxes make (`workspace-mcp-ses-...`); whatever else `described` says is not touched."""
        disk = described.get("disk")
        claim = disk.get("claim") if isinstance(disk, dict) else None
        if isinstance(claim, str) and claim == f"{r.WORKSPACE_CLAIM}-{sandbox_id}" and sandbox_id.startswith(r.SANDBOX_PREFIX):
            await self._delete(PersistentVolumeClaim, claim)

    async def aclose(self) -> None:
        """Close control shells and the API connection; sandboxes keep running for a restarted server."""
        with anyio.CancelScope(shield=True):
            for sandbox in list(self._sandboxes):
                await sandbox._disconnect()
            if self._client is not None:
                client, self._client = self._client, None
                await client.close()


def body_image(body: dict[str, Any]) -> str:
    return str(body["spec"]["podTemplate"]["spec"]["containers"][0]["image"])


def mebibytes(quantity: str) -> int:
    """A storage quantity as MiB (the driver writes Mi; others are read for claims made elsewhere)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(quantity))
    if not m:
        return 0
    scale = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1 << 20, None: 1 / (1 << 20)}[m.group(2)]
    return int(int(m.group(1)) * scale)
