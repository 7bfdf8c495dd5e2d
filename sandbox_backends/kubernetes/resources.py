"""What the kubernetes driver sends and reads: Sandbox and SandboxClaim bodies, and the words for their conditions.

Pure functions over plain dicts, apart from the driver, so that every body can be checked against the
agent-sandbox CRD schemas without a cluster (tests/test_kubernetes_resources.py) and every condition
the controller may set maps to one phase or one reason a person can act on.

A session's Sandbox (`agents.x-k8s.io/v1beta1`) runs one container, `sandbox`, as root with only the
capabilities the control shell needs (SETUID, SETGID, KILL), no privilege escalation, a read-only root,
memory-backed `/tmp` and `/run` (whose `mcp-shell` folder, root's alone, keeps the control shell's
state), and the workspace on a volume claim made from the Sandbox's `volumeClaimTemplates`. Its first
process prepares `/run` and then only reaps orphans, the way docker's `init` does. Pod and Sandbox carry
the labels a restarted server finds them by: `mcp-sessions.sandbox=1`, `mcp-sessions.server=<id>`,
`mcp-sessions.name=<session>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..base import Limits

GROUP = "agents.x-k8s.io"
EXTENSIONS_GROUP = "extensions.agents.x-k8s.io"
VERSION = "v1beta1"
CONTAINER = "sandbox"
WORKSPACE_CLAIM = "workspace"
"""The name of the workspace's volume claim template, and of the pod volume the controller makes from it."""
STATE_DIR = "/run/mcp-shell"
USER = "1000:1000"
SANDBOX_PREFIX = "mcp-ses-"
POD_NAME_ANNOTATION = "agents.x-k8s.io/pod-name"
"""Where a Sandbox adopted from a warm pool names its pod (a Sandbox made directly has a pod of its own name)."""

LABEL_SANDBOX = "mcp-sessions.sandbox"
LABEL_SERVER = "mcp-sessions.server"
LABEL_NAME = "mcp-sessions.name"
DENY_ALL_POLICY = "mcp-sessions-deny-all"

KEEPALIVE = (
    "import os,time\n"
    "os.chmod('/run',0o755)\n"
    "os.makedirs('/run/mcp-shell',0o711,exist_ok=True)\n"
    "os.chmod('/run/mcp-shell',0o711)\n"
    "while True:\n"
    " try:os.wait()\n"
    " except ChildProcessError:time.sleep(5)\n"
)
"""The pod's first process: /run is an emptyDir the kubelet makes world-writable, so it is made root's and the
control shell's folder made in it (the control shell refuses a state folder others can write), then orphans
that commands leave are reaped, as docker's init does."""
BASE_ENV = {"LANG": "C.UTF-8", "TMPDIR": "/tmp"}


@dataclass(frozen=True)
class PodPolicy:
    """What the server puts in every sandbox's pod (its settings), beside what each session asks for."""

    namespace: str
    image: str
    workspace: str = "/workspace"
    runtime_class: str | None = None
    storage_class: str | None = None
    service_account: str | None = None


def object_name(session: str) -> str:
    """A session's Sandbox (and claim) name: Kubernetes names take lowercase letters, digits, '-' and '.' only."""
    return SANDBOX_PREFIX + session.lower().replace("_", "-")


def labels(server_id: str, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels of a session's objects; ours win over the caller's of the same name."""
    return {**(extra or {}), LABEL_SANDBOX: "1", LABEL_SERVER: server_id, LABEL_NAME: name}


def sandbox_body(name: str, policy: PodPolicy, limits: Limits, disk_mb: int, object_labels: dict[str, str]) -> dict[str, Any]:
    """A Sandbox for one session: its pod template and the workspace's volume claim."""
    memory = f"{limits.memory_mb}Mi"
    run_mb = limits.tmp_mb + 16  # the control shell's output files and state, like docker's /run/mcp-shell
    resources = {"cpu": str(limits.cpus), "memory": memory}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": CONTAINER,
                "image": policy.image,
                "command": ["python3", "-I", "-S", "-c", KEEPALIVE],
                "workingDir": policy.workspace,
                "env": [{"name": k, "value": v} for k, v in {**BASE_ENV, "HOME": policy.workspace}.items()],
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "securityContext": {
                    "runAsUser": 0,
                    "runAsGroup": 0,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "KILL"]},
                },
                "volumeMounts": [
                    {"name": WORKSPACE_CLAIM, "mountPath": policy.workspace},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "run", "mountPath": "/run"},
                ],
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": f"{limits.tmp_mb}Mi"}},
            {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": f"{run_mb}Mi"}},
        ],
    }
    if policy.runtime_class:
        pod_spec["runtimeClassName"] = policy.runtime_class
    if policy.service_account:
        pod_spec["serviceAccountName"] = policy.service_account
    claim: dict[str, Any] = {
        "metadata": {"name": WORKSPACE_CLAIM, "labels": dict(object_labels)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{disk_mb}Mi"}}},
    }
    if policy.storage_class:
        claim["spec"]["storageClassName"] = policy.storage_class
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": name, "namespace": policy.namespace, "labels": dict(object_labels)},
        "spec": {
            "podTemplate": {"metadata": {"labels": dict(object_labels)}, "spec": pod_spec},
            "volumeClaimTemplates": [claim],
            "operatingMode": "Running",
            "shutdownPolicy": "Retain",
        },
    }


def claim_body(name: str, namespace: str, warm_pool: str, object_labels: dict[str, str]) -> dict[str, Any]:
    """A SandboxClaim on a warm pool: the pool's template decides the pod; the claim adds our labels to it."""
    return {
        "apiVersion": f"{EXTENSIONS_GROUP}/{VERSION}",
        "kind": "SandboxClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(object_labels)},
        "spec": {
            "warmPoolRef": {"name": warm_pool},
            "additionalPodMetadata": {"labels": dict(object_labels)},
            "lifecycle": {"shutdownPolicy": "Retain"},
        },
    }


def deny_all_body(namespace: str) -> dict[str, Any]:
    """A NetworkPolicy that lets nothing in or out of any sandbox pod of this program (exec does not use the
    pod's network: it goes through the API server to the kubelet)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": DENY_ALL_POLICY, "namespace": namespace, "labels": {LABEL_SANDBOX: "1"}},
        "spec": {"podSelector": {"matchLabels": {LABEL_SANDBOX: "1"}}, "policyTypes": ["Ingress", "Egress"]},
    }


# -- reading what the controller and the kubelet say -----------------------------------------------


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return None


def is_ready(obj: dict[str, Any]) -> bool:
    """Ready is the one condition trusted: a stale `Suspended` can linger after a resume."""
    ready = condition(obj, "Ready")
    return bool(ready and ready.get("status") == "True")


def phase(obj: dict[str, Any]) -> tuple[str, str] | None:
    """The bring-up phase a Sandbox's conditions show, as (phase, detail), or None before the controller speaks."""
    name = (obj.get("metadata") or {}).get("name", "")
    scheduled = condition(obj, "PodScheduled")
    if is_ready(obj):
        return "starting", f"pod {pod_name(obj)} ready on {(obj.get('status') or {}).get('nodeName') or 'a node'}"
    if scheduled and scheduled.get("status") == "True":
        return "starting", f"pod of Sandbox {name} scheduled, starting"
    ready = condition(obj, "Ready")
    if ready is not None:
        return "creating_sandbox", f"Sandbox {name}: {ready.get('reason') or 'not ready'}"
    return None


FAILED_REASONS = {
    "ReconcilerError": "the agent-sandbox controller could not make the sandbox",
    "SandboxExpired": "the sandbox reached its shutdown time and was stopped",
}
"""Ready=False reasons that end a sandbox, and what they mean; `SandboxSuspended` and `DependenciesNotReady`
are states on the way, not failures."""


def failure(obj: dict[str, Any]) -> str | None:
    """Why the Sandbox (or SandboxClaim) cannot serve any more, in words a person can act on, or None."""
    ready = condition(obj, "Ready")
    if ready is None or ready.get("status") == "True":
        return None
    reason = str(ready.get("reason") or "")
    if reason not in FAILED_REASONS:
        return None
    message = str(ready.get("message") or "").strip()
    what = FAILED_REASONS[reason] + (f": {message}" if message else "")
    if reason == "SandboxExpired":
        return f"{what}. Its workspace claim is kept; create a new session to go on."
    return f"{what}. Check the controller's logs and the namespace's quotas and RBAC, then create a new session."


POD_WAITING = {
    "ErrImagePull": "the image cannot be pulled",
    "ImagePullBackOff": "the image cannot be pulled",
    "InvalidImageName": "the image name is invalid",
    "CreateContainerConfigError": "the container's settings are refused",
    "CreateContainerError": "the container cannot be made",
    "RunContainerError": "the container cannot start",
    "CrashLoopBackOff": "the container keeps exiting",
}


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why a sandbox's pod cannot come up or was lost (image pulls, evictions, a dead container), or None."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted" or status.get("phase") == "Failed":
        why = status.get("message") or status.get("reason") or "it failed"
        return f"the sandbox's pod was stopped by the cluster ({status.get('reason') or 'Failed'}: {why}); create a new session"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in POD_WAITING:
            detail = str(waiting.get("message") or reason).strip()
            return (
                f"{POD_WAITING[reason]} ({reason}: {detail}). Check the kubernetes_image setting, that the cluster can "
                "reach its registry (and its pull secret), then create a new session"
            )
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return (
                f"the sandbox's container exited ({terminated.get('reason') or 'Error'}, code {terminated.get('exitCode')}); "
                "the image needs python3 and bash; create a new session"
            )
    return None


def pod_name(obj: dict[str, Any]) -> str:
    """The pod of a Sandbox: named in an annotation when adopted from a warm pool, else the Sandbox's name."""
    meta = obj.get("metadata") or {}
    return str((meta.get("annotations") or {}).get(POD_NAME_ANNOTATION) or meta.get("name") or "")


def suspended(obj: dict[str, Any]) -> bool:
    return (obj.get("spec") or {}).get("operatingMode") == "Suspended"
