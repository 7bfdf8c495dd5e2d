"""The kubernetes driver against an emulated API server over real HTTP, with local pods and their exec websocket
(tests/kubernetes_cluster.py), the test playing the agent-sandbox controller where a case needs it.

What every driver does is in driver_conformance.py; here is what is the kubernetes driver's own: the
bodies it sends are valid for the agent-sandbox CRDs, conditions become phases and failures a person can
act on, sandboxes that end behind the server's back are reported, suspend and resume, warm-pool claims,
and the exec subprotocol's fallback.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import jsonschema
import pytest
import yaml
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends import registry
from sandbox_backends.base import (
    ClosesPaused,
    Driver,
    Limits,
    OpensStreams,
    Pauses,
    RemovesLeftovers,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from sandbox_backends.kubernetes.resources import PodPolicy, claim_body, labels, object_name, sandbox_body
from sandbox_backends.kubernetes.sandbox import KubernetesSandbox
from sandbox_backends.kubernetes.websocket import ExecWebSocket
from sandbox_backends.registry import DriverContext
from tests.conftest import call
from tests.kubernetes_cluster import NAMESPACE, WORKSPACE, Cluster, condition, emulated, kubernetes_settings

pytestmark = pytest.mark.anyio

CRDS = Path(__file__).parent / "crds" / "agent-sandbox"
HANG_S = 60.0
"""Bound on waits for what takes well under a second: it only turns a hang into a failure."""


def crd_schema(file: str, version: str = "v1beta1") -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / file).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return dict(served["schema"]["openAPIV3Schema"])


SCHEMAS = {
    "sandboxes": crd_schema("agents.x-k8s.io_sandboxes.yaml"),
    "sandboxclaims": crd_schema("extensions.agents.x-k8s.io_sandboxclaims.yaml"),
}


def check_body(plural: str, body: dict[str, Any]) -> None:
    """Validate a body against the CRD's structural schema, as the API server would before storing it."""
    jsonschema.validate(body, SCHEMAS[plural], cls=jsonschema.Draft7Validator)


@dataclass
class Kube:
    cluster: Cluster
    make: Callable[..., Driver]
    tmp: Path


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    made: list[Driver] = []
    async with emulated(tmp_path) as cluster:

        def make(**settings: Any) -> Driver:
            plugin = registry.drivers()["kubernetes"]
            assert plugin.settings is not None
            given = plugin.settings.model_validate(kubernetes_settings(cluster, **settings))
            driver = plugin.make(given, DriverContext(home=tmp_path / "home", server_id="kube-test"))
            made.append(driver)
            return driver

        yield Kube(cluster, make, tmp_path)
        with anyio.CancelScope(shield=True):
            for driver in made:
                await driver.aclose()
        # Whatever a test did, the driver made only valid objects, and its patches (merged) left them valid.
        for plural, how, body in cluster.api.sent:
            if how == "create":
                check_body(plural, body)
        for plural in SCHEMAS:
            for obj in cluster.objects(plural).values():
                check_body(plural, {k: v for k, v in obj.items() if k != "status"})  # status is the test's own


async def until(check: Callable[[], Any]) -> Any:
    """Until `check()` gives something truthy (a positive signal), bounded by HANG_S."""
    with anyio.fail_after(HANG_S):
        while not (found := check()):
            await anyio.sleep(0.02)
    return found


@asynccontextmanager
async def watching(driver: Driver, cluster: Cluster, *plurals: str) -> AsyncIterator[dict[str, str]]:
    """The driver's watch running, once its watches of `plurals` are live; yields what it reported, by session."""
    reports: dict[str, str] = {}

    async def on_failure(session: str, reason: str) -> None:
        reports[session] = reason

    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.watch, on_failure)
        own = {"sandboxes": 2, "sandboxclaims": 2, "pods": 1}  # the test's controller watches Sandboxes and claims too
        await until(lambda: all(cluster.watchers(p) == own[p] for p in plurals))
        yield reports
        tg.cancel_scope.cancel()


def session_name() -> str:
    return "ses_" + secrets.token_hex(16)


# -- bodies ----------------------------------------------------------------------------------------


def test_the_bodies_the_driver_makes_are_valid_for_the_crds() -> None:
    policy = PodPolicy(namespace="ns", image="img:1", runtime_class="gvisor", storage_class="fast", service_account="runner")
    name = session_name()
    body = sandbox_body(object_name(name), policy, Limits(memory_mb=512, cpus=0.5, tmp_mb=64), 2048, labels("srv", name))
    check_body("sandboxes", body)
    pod = body["spec"]["podTemplate"]["spec"]
    assert pod["runtimeClassName"] == "gvisor" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"cpu": "0.5", "memory": "512Mi"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "KILL"]}
    assert body["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2048Mi"
    assert body["metadata"]["labels"]["mcp-sessions.name"] == name and object_name(name).startswith("mcp-ses-ses-")
    check_body("sandboxclaims", claim_body(object_name(name), "ns", "pool", labels("srv", name)))

    # The check itself refuses what the API server would: it is not a check that passes anything.
    for broken in ({"operatingMode": "Paused"}, {"podTemplate": None}, {"shutdownPolicy": "Keep"}):
        with pytest.raises(jsonschema.ValidationError):
            check_body("sandboxes", {**body, "spec": {**body["spec"], **broken}})
    with pytest.raises(jsonschema.ValidationError):
        check_body("sandboxclaims", {"spec": {"warmPoolRef": {}}})


# -- bring-up: phases, readiness and failures ------------------------------------------------------


async def test_a_sandbox_is_ready_when_its_ready_condition_is_and_its_phases_are_told(kube: Kube) -> None:
    kube.cluster.auto = False  # the test plays the controller
    driver = kube.make()
    name = session_name()
    phases: list[tuple[str, str]] = []

    async def on_phase(phase: str, detail: str) -> None:
        phases.append((phase, detail))

    made: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def create() -> None:
            made.append(await driver.create(SandboxSpec(name=name), on_phase))

        tg.start_soon(create)
        sandbox = await until(lambda: kube.cluster.objects("sandboxes").get(object_name(name)))
        await kube.cluster.set_status(object_name(name), condition("Ready", "False", "DependenciesNotReady", "pod pending"))
        await until(lambda: any("DependenciesNotReady" in d for _p, d in phases))
        assert not made  # not Ready yet: create still waits
        await kube.cluster.start_pod(sandbox)
        await kube.cluster.set_status(
            object_name(name),
            condition("PodScheduled", "True", "Scheduled", ""),
            condition("Ready", "True", "DependenciesReady", "Pod is Ready"),
            nodeName="node-7",
        )
    (sb,) = made
    assert [p for p, _d in phases] == ["creating_sandbox", "creating_sandbox", "starting"], phases
    assert phases[-1][1] == f"pod {object_name(name)} ready on node-7"
    assert (await sb.exec("echo up; id -u")).output == "up\n1000\n"


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        (
            "ReconcilerError",
            "pods is forbidden: exceeded quota",
            "the agent-sandbox controller could not make the sandbox: pods is forbidden",
        ),
        ("SandboxExpired", "shutdown time reached", "the sandbox reached its shutdown time"),
    ],
)
async def test_a_failing_condition_fails_the_create_with_the_reason_and_removes_the_sandbox(
    kube: Kube, reason: str, message: str, expected: str
) -> None:
    kube.cluster.auto = False
    driver = kube.make()
    name = session_name()
    async with anyio.create_task_group() as tg:

        async def fail() -> None:
            await until(lambda: kube.cluster.objects("sandboxes").get(object_name(name)))
            await kube.cluster.set_status(object_name(name), condition("Ready", "False", reason, message))

        tg.start_soon(fail)
        with pytest.raises(SandboxError, match=expected) as failed:
            with anyio.fail_after(HANG_S):
                await driver.create(SandboxSpec(name=name))
    assert "create a new session" in str(failed.value)
    assert object_name(name) not in kube.cluster.objects("sandboxes")  # nothing left behind


async def test_an_image_that_cannot_be_pulled_fails_the_create_saying_what_to_check(kube: Kube) -> None:
    kube.cluster.auto = False
    driver = kube.make(kubernetes_image="registry.invalid/nope:1")
    name = session_name()
    async with anyio.create_task_group() as tg:

        async def kubelet() -> None:
            await until(lambda: kube.cluster.objects("sandboxes").get(object_name(name)))
            waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.invalid/nope:1"'}
            container = {"name": "sandbox", "image": "registry.invalid/nope:1", "imageID": "", "ready": False, "restartCount": 0}
            status = {"phase": "Pending", "containerStatuses": [{**container, "state": {"waiting": waiting}}]}
            await kube.cluster.put_pod(object_name(name), {}, status)

        tg.start_soon(kubelet)
        with pytest.raises(SandboxError) as failed:
            with anyio.fail_after(HANG_S):
                await driver.create(SandboxSpec(name=name))
    words = str(failed.value)
    assert words.startswith("the image cannot be pulled (ImagePullBackOff: Back-off pulling image"), words
    assert "kubernetes_image" in words
    assert object_name(name) not in kube.cluster.objects("sandboxes")


async def test_a_cluster_without_the_crds_is_told_to_install_agent_sandbox(kube: Kube) -> None:
    del kube.cluster.api.resources["agents.x-k8s.io/v1beta1/sandboxes"]
    with pytest.raises(SandboxError, match="install kubernetes-sigs/agent-sandbox"):
        await kube.make().create(SandboxSpec(name=session_name()))


async def test_limits_over_the_maximum_networks_and_mounts_are_refused_before_anything_is_made(kube: Kube) -> None:
    driver = kube.make(kubernetes_max_memory_mb=1024)
    with pytest.raises(SandboxError, match=r"limits\.memory_mb=2048 is over this server's maximum of 1024"):
        await driver.create(SandboxSpec(name=session_name(), limits=Limits(memory_mb=2048)))
    with pytest.raises(SandboxError, match="network access"):
        await driver.create(SandboxSpec(name=session_name(), network=True))
    with pytest.raises(SandboxError, match=r"cannot see this server's files \(claude\), .* docker or local driver"):
        await driver.create(SandboxSpec(name=session_name(), mounts={"claude": "/opt/claude"}))
    assert kube.cluster.objects("sandboxes") == {}


# -- after bring-up: watch, suspend, claims --------------------------------------------------------


async def test_watch_reports_expiry_eviction_and_removal_but_not_the_servers_own_close(kube: Kube) -> None:
    driver = kube.make()
    expiring, evicted, removed, closed = [await driver.create(SandboxSpec(name=session_name())) for _ in range(4)]
    assert isinstance(evicted, KubernetesSandbox)
    async with watching(driver, kube.cluster, "sandboxes", "pods") as reports:
        await kube.cluster.set_status(expiring.id, condition("Ready", "False", "SandboxExpired", ""))
        await kube.cluster.put_pod(
            evicted.pod, labels("kube-test", evicted.name), {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}
        )
        await closed.close()
        async with kube.cluster.client() as client:  # someone deletes a Sandbox behind the server's back
            url = f"{kube.cluster.url}/apis/agents.x-k8s.io/v1beta1/namespaces/{NAMESPACE}/sandboxes/{removed.id}"
            (await client.delete(url)).raise_for_status()
        await until(lambda: len(reports) >= 3)
    assert reports[expiring.name].startswith("the sandbox reached its shutdown time and was stopped.")
    assert reports[evicted.name].startswith("the sandbox's pod was stopped by the cluster (Evicted: low on memory)")
    assert reports[removed.name] == "sandbox removed"
    assert closed.name not in reports


async def test_pause_suspends_the_sandbox_and_the_next_command_resumes_it_with_the_workspace(kube: Kube) -> None:
    driver = kube.make()
    sb = await driver.create(SandboxSpec(name=session_name()))
    assert isinstance(sb, KubernetesSandbox)
    await sb.write_file("kept.txt", b"kept\n")
    await sb.exec("export GONE=1")
    await sb.pause()  # its state is not given back by a command that resumes it
    stored = kube.cluster.objects("sandboxes")[sb.id]
    assert stored["spec"]["operatingMode"] == "Suspended"
    assert sb.pod not in kube.cluster.objects("pods")  # the controller stopped the pod
    assert not kube.cluster.api.pods[sb.pod].running
    r = await sb.exec("cat kept.txt; echo GONE=$GONE")  # resumes on use
    assert r.output == "kept\nGONE=\n"
    assert kube.cluster.objects("sandboxes")[sb.id]["spec"]["operatingMode"] == "Running"

    await sb.exec("cd /tmp; export KEPT=1")
    saved = await sb.pause()  # a restarted server attaching to a suspended sandbox resumes it too
    later = await kube.make().attach(sb.id, SandboxSpec(name=sb.name))
    assert await later.read_file("kept.txt", 10) == b"kept\n"
    assert isinstance(later, Pauses)
    await later.resume(saved)  # as the session layer does: the shell comes back as the pause left it
    assert (await later.exec("pwd; echo KEPT=$KEPT")).output == "/tmp\nKEPT=1\n"


async def test_a_suspended_sandbox_is_closed_without_its_pod_starting_again(kube: Kube) -> None:
    driver = kube.make()
    spec = SandboxSpec(name=session_name())
    sb = await driver.create(spec)
    assert isinstance(sb, KubernetesSandbox) and isinstance(driver, ClosesPaused)
    await sb.pause()
    pod = kube.cluster.api.pods[sb.pod]
    stopped = pod.proc
    await driver.close_paused(sb.id, spec, delete=False)
    await until(lambda: sb.id not in kube.cluster.objects("sandboxes"))
    assert pod.proc is stopped and not pod.running  # started again, the pod would have a new process
    with pytest.raises(SandboxNotFound):
        await driver.close_paused(sb.id, spec, delete=False)


async def test_a_closed_sandboxs_workspace_claim_is_removed_when_its_session_is_deleted(kube: Kube) -> None:
    driver = kube.make()
    sb = await driver.create(SandboxSpec(name=session_name()))
    described = sb.describe()
    claim = f"workspace-{sb.id}"  # as the controller names a claim made from the template "workspace"
    body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": NAMESPACE}}
    async with kube.cluster.client() as client:
        (
            await client.post(f"{kube.cluster.url}/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", json=body)
        ).raise_for_status()
    await sb.close()  # closed: the Sandbox goes, the claim stays
    assert sb.id not in kube.cluster.objects("sandboxes") and claim in kube.cluster.objects("persistentvolumeclaims")
    assert isinstance(driver, RemovesLeftovers)
    await driver.remove_leftovers(sb.id, {"disk": {"claim": "someone-elses"}})  # only what the driver made
    assert claim in kube.cluster.objects("persistentvolumeclaims")
    await driver.remove_leftovers(sb.id, described)
    assert claim not in kube.cluster.objects("persistentvolumeclaims")


async def test_attach_refuses_a_sandbox_labelled_for_another_session(kube: Kube) -> None:
    driver = kube.make()
    sb = await driver.create(SandboxSpec(name=session_name()))
    with pytest.raises(SandboxNotFound, match="is not the sandbox of"):
        await kube.make().attach(sb.id, SandboxSpec(name=session_name()))


async def test_a_session_without_its_own_image_or_limits_is_claimed_from_the_warm_pool(kube: Kube) -> None:
    driver = kube.make(kubernetes_warm_pool="python-pool")
    name = session_name()
    sb = await driver.create(SandboxSpec(name=name))
    assert isinstance(sb, KubernetesSandbox)
    claim = kube.cluster.objects("sandboxclaims")[object_name(name)]
    assert claim["spec"]["warmPoolRef"] == {"name": "python-pool"}
    assert sb.id.startswith("pool-") and sb.pod == f"{sb.id}-pod"  # the adopted pod, named in its annotation
    assert sb.describe()["warm_pool"] == "python-pool"
    assert (await sb.exec("echo claimed")).output == "claimed\n"
    again = await kube.make(kubernetes_warm_pool="python-pool").attach(sb.id, SandboxSpec(name=name))
    assert (await again.exec("echo again")).output == "again\n"
    own = await driver.create(SandboxSpec(name=session_name(), limits=Limits(memory_mb=256)))
    assert not own.id.startswith("pool-")  # limits of its own: a Sandbox of its own

    async with watching(driver, kube.cluster, "sandboxclaims", "sandboxes") as reports:
        await sb.close()  # the server gives its claim back: not a failure
        await until(lambda: object_name(name) not in kube.cluster.objects("sandboxclaims"))
        await until(lambda: sb.id not in kube.cluster.objects("sandboxes"))  # the claim gave its Sandbox up
        async with kube.cluster.client() as client:  # and someone deletes the other behind the server's back
            url = f"{kube.cluster.url}/apis/agents.x-k8s.io/v1beta1/namespaces/{NAMESPACE}/sandboxes/{own.id}"
            (await client.delete(url)).raise_for_status()
        await until(lambda: reports)
    assert reports == {own.name: "sandbox removed"}


async def test_byte_streams_reach_the_pods_own_loopback_both_ways(kube: Kube) -> None:
    """The streams of docker's control shell work over the exec websocket too: a server in the pod answers
    through `connect_inside`, and a process in the pod reaches a handler in the server through
    `serve_inside`; the pod has a network namespace of its own, so neither is the host's loopback."""
    sb = await kube.make().create(SandboxSpec(name=session_name()))
    assert isinstance(sb, OpensStreams)
    await sb.exec("echo hello from the pod > page.txt; nohup python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 &")
    ready = await sb.exec(
        "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8765))' 2>/dev/null "
        "&& echo up && break; sleep 0.1; done"
    )
    assert ready.output == "up\n", ready.output
    with pytest.raises(OSError):  # not on this machine's loopback: only inside the pod
        socket.create_connection(("127.0.0.1", 8765), timeout=2).close()
    with anyio.fail_after(HANG_S):
        async with await sb.connect_inside(8765) as stream:
            await stream.send(b"GET /page.txt HTTP/1.0\r\n\r\n")
            answer = b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    answer += await stream.receive()
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"hello from the pod\n")

    async def handler(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await stream.send(b"served by the server: " + await stream.receive())

    async with anyio.create_task_group() as tg:
        address = await tg.start(sb.serve_inside, 0, handler)
        host, port = str(address).split(":")
        r = await sb.exec(
            f'python3 -c \'import socket; s=socket.create_connection(("{host}", {port})); s.sendall(b"ping"); print(s.recv(100).decode())\''
        )
        tg.cancel_scope.cancel()
    assert r.output == "served by the server: ping\n", r.output


@pytest.mark.parametrize(
    ("protocols", "tls"), [(("v4.channel.k8s.io",), False), (("v5.channel.k8s.io", "v4.channel.k8s.io"), True)], ids=["v4", "tls"]
)
async def test_commands_and_files_over_v4_and_over_tls(tmp_path: Path, protocols: tuple[str, ...], tls: bool) -> None:
    """v4 when the API server offers no v5; an API server over HTTPS whose authority the kubeconfig names (the
    websocket then goes through non-blocking TLS, a few megabytes of file through its partial writes)."""
    async with emulated(tmp_path, exec_protocols=protocols, tls=tls) as cluster:
        plugin = registry.drivers()["kubernetes"]
        assert plugin.settings is not None
        driver = plugin.make(plugin.settings.model_validate(kubernetes_settings(cluster)), DriverContext(tmp_path, "proto"))
        try:
            sb = await driver.create(SandboxSpec(name=session_name()))
            assert isinstance(sb, KubernetesSandbox) and sb._conn is not None
            transport = sb._conn.transport
            assert isinstance(transport, ExecWebSocket) and transport.subprotocol == protocols[0]
            assert cluster.url.startswith("https://" if tls else "http://")
            assert (await sb.exec("echo over the exec websocket; exit 4")).output == "over the exec websocket\n"
            data = secrets.token_bytes(3 << 20)
            await sb.write_file("big.bin", data)
            assert (await sb.exec("wc -c < big.bin")).output == f"{len(data)}\n"
            assert await sb.read_file("big.bin", len(data)) == data
            await sb.close(delete=True)
        finally:
            await driver.aclose()


# -- sessions on the driver, through a real MCP client ---------------------------------------------


async def test_a_kubernetes_session_through_the_server_runs_commands_and_fails_with_the_controllers_reason(kube: Kube) -> None:
    settings = Settings(home=kube.tmp / "home", driver="kubernetes", command_timeout_s=60, **kubernetes_settings(kube.cluster))
    async with Client(create_server(settings), mode="legacy") as client:
        session = await call(client, "create_session", files={"notes/todo.txt": "ship it\n"})
        assert session["status"] == "ready" and session["driver"] == "kubernetes", session
        assert session["sandbox"]["pod"] == object_name(session["id"]) and session["workspace"] == WORKSPACE
        sid = session["id"]
        await call(client, "send_message", session_id=sid, text="cd notes && export X=1")
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $X; id -u; cat todo.txt")
        assert reply["output"] == f"{WORKSPACE}/notes\n1\n1000\nship it\n"
        paused = await call(client, "pause_session", session_id=sid)
        assert paused["status"] == "paused"
        assert kube.cluster.objects("sandboxes")[object_name(sid)]["spec"]["operatingMode"] == "Suspended"
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $X")  # resumes it, as it was
        assert reply["output"] == f"{WORKSPACE}/notes\n1\n"
        assert kube.cluster.objects("sandboxes")[object_name(sid)]["spec"]["operatingMode"] == "Running"
        await call(client, "close_session", session_id=sid)
        assert object_name(sid) not in kube.cluster.objects("sandboxes")

        kube.cluster.auto = False  # the controller cannot make the next one
        async with anyio.create_task_group() as tg:

            async def refuse() -> None:
                (name,) = await until(lambda: list(kube.cluster.objects("sandboxes")))
                await kube.cluster.set_status(name, condition("Ready", "False", "ReconcilerError", "pods is forbidden"))

            tg.start_soon(refuse)
            failed = await call(client, "create_session")
        assert failed["status"] == "failed", failed
        assert failed["failure_reason"].startswith("the agent-sandbox controller could not make the sandbox: pods is forbidden")
