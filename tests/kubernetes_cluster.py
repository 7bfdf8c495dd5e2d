"""A Kubernetes cluster without a cluster, for the kubernetes driver's tests: an API emulator over real HTTP,
local pods, their exec websocket, and a controller the test can run or play by hand.

- **API**: kmock's `KubernetesEmulator` (PyPI kmock 0.8), served on 127.0.0.1, with what it gets wrong
  against a real API server put right where the driver depends on it: created objects get a uid, a
  resourceVersion (a new one on every change), a creationTimestamp, their namespace and a 201; label
  and `metadata.name` field selectors filter lists and watches; a watch from a resourceVersion sends
  only later changes; an update of the main resource leaves `status` alone and one of `/status` only
  changes `status` (the status subresource); an undeclared resource is a 404, not made up on the fly;
  errors are Status objects served as exactly `application/json` (lightkube reads them only so). Requests
  without the kubeconfig's token are refused (401).
- **Pods**: a `LocalPod` is a PID, mount and network namespace on this machine (`unshare`, as root) with
  its own /proc, only a loopback interface, a tmpfs /run holding the control shell's root-only folder, a
  tmpfs /tmp, and the pod's workspace folder bound at the driver's workspace path. Commands run as uid
  1000 like in a real pod, and the control shell's kill sweep sees only the pod's processes.
- **Exec**: `pods/<name>/exec` upgrades to a websocket speaking `v5.channel.k8s.io` (or only v4, to
  test the fallback), runs the command in the pod's namespaces (`nsenter`) and carries channels 0-3.
- **Controller**: `Controller` plays agent-sandbox: a Sandbox gets a pod and `Ready=True`, `Suspended`
  stops it, `Running` starts it again, a deleted Sandbox loses its pod. A test may stop it and set
  conditions itself (`set_status`).

What this stand-in cannot show (the opt-in scripts/k8s-e2e.sh runs on a real cluster for that): the
controller's real timing and warm-pool adoption, CRD defaulting and validation by the API server (the
tests validate bodies against the CRD schemas instead), the pod template's own first process, capability
dropping and read-only roots, kubelet exec through real proxies, NetworkPolicy enforcement, RBAC.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import httpx
import kmock
import pytest
import yaml
from kmock._internal import enums

from tests.ci import unavailable

TOKEN = "test-token-" + uuid.uuid4().hex[:8]
NAMESPACE = "sessions"
WORKSPACE = "/run/workspace"
"""Where pods mount their workspace: a path inside each pod's own /run tmpfs, since this machine has no /workspace."""
SANDBOXES = "agents.x-k8s.io/v1beta1/sandboxes"
CLAIMS = "extensions.agents.x-k8s.io/v1beta1/sandboxclaims"
POD_NAME = "agents.x-k8s.io/pod-name"
REAPER = "import os,time\nwhile True:\n try:os.wait()\n except ChildProcessError:time.sleep(1)\n"
POD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def pod_name(sandbox: dict[str, Any]) -> str:
    meta = sandbox.get("metadata") or {}
    return str((meta.get("annotations") or {}).get(POD_NAME) or meta.get("name"))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def selected(obj: dict[str, Any], params: Any) -> bool:
    """Whether `obj` matches the request's labelSelector (equality terms) and fieldSelector (metadata.name)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    for term in filter(None, str(params.get("labelSelector") or "").split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key) != value:
            return False
    for term in filter(None, str(params.get("fieldSelector") or "").split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if key == "metadata.name" and meta.get("name") != value:
            return False
        if key == "metadata.namespace" and meta.get("namespace") != value:
            return False
    return True


class Api(kmock.KubernetesEmulator):
    """kmock's emulator, put right where a real API server differs in what the driver relies on."""

    versions = itertools.count(1)
    pods: dict[str, LocalPod]
    exec_protocols: tuple[str, ...]
    procs: set[asyncio.subprocess.Process]
    """Every exec'd process, waited for when the cluster goes (so none outlives its event loop)."""
    sent: list[tuple[str, str, dict[str, Any]]]
    """(plural, "create" or "update", body) of every Sandbox and SandboxClaim write, as the client sent it."""

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.headers.get("Authorization") != f"Bearer {TOKEN}":
            return aiohttp.web.json_response(
                {"kind": "Status", "status": "Failure", "code": 401, "message": "Unauthorized"}, status=401
            )
        if raw.path.endswith("/exec"):
            return await self._exec(raw)
        return await super().__call__(raw)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # kmock answers "application/json; charset=utf-8"; clients (lightkube) read a Status only from exactly
        # "application/json", as a real API server sends it.
        answer = await super()._render_error(exc)
        assert isinstance(answer, aiohttp.web.Response) and answer.body is not None
        payload = json.loads(bytes(answer.body))  # type: ignore[arg-type]
        return status_response(answer.status, str(payload.get("message")), payload.get("reason"))

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and not any(r == request.resource for r in kmock.KubernetesScaffold._get_resources(self)):
            return status_response(404, "the server could not find the requested resource")  # kmock would invent it
        if request.action in (enums.action.CREATE, enums.action.UPDATE) and isinstance(request.data, dict):
            plural = request.resource.plural if request.resource else None
            mine = request.headers.get("X-Controller") != "test"
            if mine and plural in ("sandboxes", "sandboxclaims") and request.subresource is None:
                self.sent.append(
                    (plural, "create" if request.action == enums.action.CREATE else "update", json.loads(request.text))
                )
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self.versions))
            if request.action == enums.action.CREATE:
                meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now())
                meta.setdefault("generation", 1)
                if plural in ("sandboxes", "sandboxclaims"):
                    request.data.pop("status", None)
            elif request.subresource == "status":
                for key in list(request.data):
                    if key not in ("status", "metadata"):
                        del request.data[key]
            elif plural in ("sandboxes", "sandboxclaims"):
                request.data.pop("status", None)
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200:
            response.set_status(201)
        return response

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        result["items"] = [o for o in result["items"] if selected(o, request.params)]
        result["metadata"]["resourceVersion"] = str(next(self.versions))
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        since = int(request.params.get("resourceVersion") or 0)
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                obj = event.get("object") or {}
                if not selected(obj, request.params):
                    continue
                version = int((obj.get("metadata") or {}).get("resourceVersion") or 0)
                if event.get("type") != "DELETED" and version <= since:
                    continue  # a real watch from a version sends only what changed after it
            yield event

    async def _exec(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        pod = self.pods.get(raw.path.split("/")[-2])
        if pod is None or not pod.running:
            return status_response(404, f'pods "{raw.path.split("/")[-2]}" not found')
        ws = aiohttp.web.WebSocketResponse(protocols=self.exec_protocols)
        await ws.prepare(raw)
        command = raw.query.getall("command")
        proc = await pod.exec(command)
        self.procs.add(proc)
        assert proc.stdin and proc.stdout and proc.stderr

        async def pump(stream: asyncio.StreamReader, channel: int) -> None:
            while chunk := await stream.read(1 << 16):
                await ws.send_bytes(bytes([channel]) + chunk)

        async def feed() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    proc.stdin.write(msg.data[1:])
                    await proc.stdin.drain()
                elif msg.type == aiohttp.WSMsgType.BINARY and msg.data[:2] == b"\xff\x00":
                    proc.stdin.close()
            proc.stdin.close()  # the connection ended: the process sees the end of its stdin, as under a kubelet

        feeder = asyncio.create_task(feed())
        try:
            await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
            rc = await proc.wait()
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
            if rc:
                status = {
                    "metadata": {},
                    "status": "Failure",
                    "reason": "NonZeroExitCode",
                    "message": f"command terminated with non-zero exit code: {rc}",
                    "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]},
                }
            if not ws.closed:
                await ws.send_bytes(b"\x03" + json.dumps(status).encode())
                await ws.close()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            feeder.cancel()
        return ws


@dataclass
class LocalPod:
    """A pod on this machine: a PID and mount namespace with the layout of the driver's pod template."""

    name: str
    root: Path
    workspace: str = WORKSPACE
    workdir: str = "/"
    """The container's workingDir from the pod template, where a kubelet starts exec'd commands."""
    init_pid: int | None = None
    proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        ws = self.root / "workspace"  # the workspace claim: kept across the pod's restarts
        ws.mkdir(parents=True, exist_ok=True)
        os.chown(ws, 1000, 1000)
        setup = (
            "ip link set lo up && "  # a network of its own with only loopback, like a pod under a deny-all policy
            "mount -t tmpfs -o mode=0755,size=256m tmpfs /run && mkdir -m 0711 /run/mcp-shell && "
            f"mkdir -p {self.workspace} && mount --bind {ws} {self.workspace} && "
            "mount -t tmpfs -o mode=1777,size=256m tmpfs /tmp && "
            f"exec /usr/bin/python3 -I -S -c {shlex.quote(REAPER)}"
        )
        self.proc = await asyncio.create_subprocess_exec(
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--kill-child",
            "sh",
            "-c",
            setup,
        )
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for _ in range(500):  # the namespace's first process, and its mounts in place
            pids = children.read_text().split() if children.exists() else []
            if pids and Path(f"/proc/{pids[0]}/cmdline").read_bytes().startswith(b"/usr/bin/python3"):
                self.init_pid = int(pids[0])
                return
            await asyncio.sleep(0.01)
        raise RuntimeError(f"the local pod {self.name} did not start")

    async def exec(self, command: list[str]) -> asyncio.subprocess.Process:
        assert self.init_pid is not None
        return await asyncio.create_subprocess_exec(
            "nsenter", "--target", str(self.init_pid), "--pid", "--mount", "--net", f"--wdns={self.workdir}", "--", *command,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**POD_ENV, "HOME": self.workspace}, cwd="/",
        )  # fmt: skip

    async def stop(self) -> None:
        """Everything in the pod dies with its first process, as when a kubelet stops it."""
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            await self.proc.wait()
        self.init_pid = None


def status_response(code: int, message: str, reason: str | None = None) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code, "message": message}
    if reason:
        body["reason"] = reason
    return aiohttp.web.Response(body=json.dumps(body).encode(), status=code, headers={"Content-Type": "application/json"})


def condition(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now()}


@dataclass
class Cluster:
    """The emulator's URL, a kubeconfig for it, its pods, and a controller that can be paused."""

    api: Api
    url: str
    kubeconfig: Path
    pods_root: Path
    auto: bool = True
    """The controller makes Sandboxes Ready by itself; False: the test sets their status."""
    ca: Path | None = None
    """The certificate the API server is served with over TLS (None: plain HTTP)."""

    def client(self) -> httpx.AsyncClient:
        """The test's own client, playing the controller and the kubelet (its writes are not the driver's)."""
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Controller": "test"}
        return httpx.AsyncClient(headers=headers, verify=ssl.create_default_context(cafile=self.ca) if self.ca else True)

    def watchers(self, plural: str) -> int:
        """How many watches of a resource are live now (the controller's among them): a watch started is
        only sure to see a change once it is counted here."""
        return sum(len(bus._offsets) for res, bus in self.api._buses.items() if res.plural == plural)

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        """The live objects of a resource (by its plural) by name, as the emulator holds them now."""
        return {name: obj.raw for (res, _ns, name), obj in self.api.objects.items() if res.plural == plural and not obj.deleted}

    async def set_status(self, name: str, *conditions: dict[str, Any], resource: str = SANDBOXES, **extra: Any) -> None:
        """Set a Sandbox's (or claim's) status conditions, as the controller would, through the API."""
        group_version, plural = resource.rsplit("/", 1)
        url = f"{self.url}/apis/{group_version}/namespaces/{NAMESPACE}/{plural}/{name}/status"
        body = {"status": {"conditions": list(conditions), **extra}}
        async with self.client() as client:
            answer = await client.patch(url, json=body, headers={"Content-Type": "application/merge-patch+json"})
            answer.raise_for_status()

    async def put_pod(self, name: str, labels: dict[str, str], status: dict[str, Any] | None = None) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            "spec": {"containers": [{"name": "sandbox", "image": "local"}]},
            "status": status or {"phase": "Running"},
        }
        async with self.client() as client:
            url = f"{self.url}/api/v1/namespaces/{NAMESPACE}/pods"
            if name in self.objects("pods"):
                await client.patch(f"{url}/{name}", json=body, headers={"Content-Type": "application/merge-patch+json"})
            else:
                (await client.post(url, json=body)).raise_for_status()

    async def delete_pod(self, name: str) -> None:
        async with self.client() as client:
            await client.delete(f"{self.url}/api/v1/namespaces/{NAMESPACE}/pods/{name}")

    # -- the controller ---------------------------------------------------------------------------

    async def start_pod(self, sandbox: dict[str, Any]) -> None:
        name = pod_name(sandbox)
        template = ((sandbox.get("spec") or {}).get("podTemplate") or {}).get("spec") or {}
        workdir = ((template.get("containers") or [{}])[0]).get("workingDir") or "/"
        pod = self.api.pods.get(name) or LocalPod(name, self.pods_root / name, workdir=workdir)
        self.api.pods[name] = pod
        if not pod.running:
            await pod.start()
        labels = ((sandbox.get("spec") or {}).get("podTemplate") or {}).get("metadata", {}).get("labels") or {}
        await self.put_pod(name, labels)

    async def reconcile(self, op: str, sandbox: dict[str, Any]) -> None:
        name = sandbox["metadata"]["name"]
        pod = self.api.pods.get(pod_name(sandbox))
        if op == "DELETED":
            if pod is not None:
                await pod.stop()
                await self.delete_pod(pod.name)
            return
        mode = (sandbox.get("spec") or {}).get("operatingMode") or "Running"
        if mode == "Suspended" and pod is not None and pod.running:
            await pod.stop()
            await self.delete_pod(pod.name)
            await self.set_status(
                name,
                condition("Ready", "False", "SandboxSuspended", "the sandbox is suspended"),
                condition("Suspended", "True", "PodTerminated", "the pod was terminated"),
                podIPs=None,
                nodeName=None,
            )
        elif mode == "Running" and (pod is None or not pod.running) and self.auto:
            await self.start_pod(sandbox)
            await self.set_status(
                name,
                condition("PodScheduled", "True", "Scheduled", "scheduled on local"),
                condition("Ready", "True", "DependenciesReady", "Pod is Ready"),
                nodeName="local",
                podIPs=["127.0.0.1"],
            )

    async def run_controller(self) -> None:
        """Follow Sandboxes and SandboxClaims through the emulator's own event buses, as a controller's watches would."""

        async def follow(plural: str, reconcile: Callable[[str, dict[str, Any]], Awaitable[None]]) -> None:
            group = "agents.x-k8s.io" if plural == "sandboxes" else "extensions.agents.x-k8s.io"
            async for event in self.api._buses[kmock.resource(group, "v1beta1", plural)]:
                await reconcile(str(event.get("type")), event.get("object") or {})

        await asyncio.gather(follow("sandboxes", self.reconcile), follow("sandboxclaims", self.adopt))

    async def adopt(self, op: str, claim: dict[str, Any]) -> None:
        """A claim on a warm pool gets a Sandbox of the pool's (its pod named in an annotation), as agent-sandbox
        adopts one; a deleted claim gives it up."""
        adopted = ((claim.get("status") or {}).get("sandbox") or {}).get("name")
        async with self.client() as client:
            url = f"{self.url}/apis/agents.x-k8s.io/v1beta1/namespaces/{NAMESPACE}/sandboxes"
            if op == "DELETED" and adopted:
                await client.delete(f"{url}/{adopted}")
            if op != "ADDED" or not self.auto:
                return
            name = "pool-" + uuid.uuid4().hex[:6]
            extra = (claim.get("spec") or {}).get("additionalPodMetadata") or {}
            body = {
                "apiVersion": "agents.x-k8s.io/v1beta1",
                "kind": "Sandbox",
                "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {POD_NAME: f"{name}-pod"}},
                "spec": {
                    "podTemplate": {
                        "metadata": {"labels": extra.get("labels") or {}},
                        "spec": {"containers": [{"name": "sandbox", "image": "pool-image", "workingDir": WORKSPACE}]},
                    }
                },
            }
            (await client.post(url, json=body)).raise_for_status()
        await self.set_status(
            claim["metadata"]["name"],
            condition("Ready", "True", "SandboxReady", "claimed"),
            resource=CLAIMS,
            sandbox={"name": name},
        )


def write_kubeconfig(path: Path, url: str, ca: Path | None) -> None:
    cluster: dict[str, str] = {"server": url}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": cluster}],
        "users": [{"name": "tester", "user": {"token": TOKEN}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": NAMESPACE}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))


def self_signed(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 made here (openssl), and a server context serving it."""
    cert, key = folder / "apiserver.crt", folder / "apiserver.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


@asynccontextmanager
async def cluster(
    tmp: Path, *, exec_protocols: tuple[str, ...] = ("v5.channel.k8s.io", "v4.channel.k8s.io"), tls: bool = False
) -> AsyncIterator[Cluster]:
    """A running emulator with the agent-sandbox resources declared and the controller following it; with `tls`
    served over HTTPS with a certificate of its own, which the kubeconfig names as the cluster's authority."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca, server_ssl = self_signed(tmp) if tls else (None, None)

    class Served(aiohttp.test_utils.RawTestServer):  # kmock starts its server without arguments: TLS goes in here
        async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
            await super().start_server(loop, ssl=server_ssl, **kwargs)

    async with Api() as api, kmock.Server(api, server_cls=Served) as server:
        api.pods = {}
        api.procs = set()
        api.sent = []
        api.exec_protocols = exec_protocols
        api.resources.load_bundled()
        for key, kind in ((SANDBOXES, "Sandbox"), (CLAIMS, "SandboxClaim")):
            api.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, subresources={"status"})
        url = str(server.url).rstrip("/")
        write_kubeconfig(tmp / "kubeconfig", url, ca)
        made = Cluster(api, url, tmp / "kubeconfig", tmp / "pods", ca=ca)
        task = asyncio.create_task(made.run_controller())
        try:
            yield made
        finally:
            task.cancel()
            for pod in list(api.pods.values()):
                await pod.stop()
            for proc in api.procs:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()


def real_cluster_settings() -> dict[str, Any] | None:
    """The driver's settings for a real cluster when scripts/k8s-e2e.sh runs the suite (MCP_SESSIONS_K8S_E2E=1),
    from the MCP_SESSIONS_KUBERNETES_* variables as the server reads them; None: use the emulator."""
    if not os.environ.get("MCP_SESSIONS_K8S_E2E"):
        return None
    prefix = "MCP_SESSIONS_"
    return {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix + "KUBERNETES_")}


def emulated(tmp: Path, **options: Any) -> AbstractAsyncContextManager[Cluster]:
    """An emulated cluster with local pods; they need root (namespaces and mounts), which CI has."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        unavailable("the emulated cluster's pods need root with unshare and nsenter (util-linux)")
    return cluster(tmp / "cluster", **options)


@pytest.fixture
async def kubernetes_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated(tmp_path) as made:
        yield made


def kubernetes_settings(made: Cluster, **more: Any) -> dict[str, Any]:
    """The driver's server settings for an emulated cluster."""
    return {
        "kubernetes_kubeconfig": str(made.kubeconfig),
        "kubernetes_namespace": NAMESPACE,
        "kubernetes_workspace": WORKSPACE,
        "kubernetes_ready_timeout_s": 60,
        **more,
    }
