"""The `kubernetes` driver: a session is a kubernetes-sigs/agent-sandbox `Sandbox` on a cluster the server can reach.

Installed with the `[kubernetes]` extra (lightkube); the cluster needs agent-sandbox's CRDs and controller
(`agents.x-k8s.io/v1beta1`). Each session's Sandbox is made from a pod template the server's settings fix
(image, resources from the session's limits, `runtimeClassName` such as gVisor's, a volume claim for the
workspace, the labels a restarted server finds it by; resources.py says what else), under one deny-all
NetworkPolicy for every sandbox pod; or, with `kubernetes_warm_pool`, it is claimed from a
`SandboxWarmPool` (a `SandboxClaim`) when the session asks for no image or limits of its own.

A session is ready when its Sandbox's `Ready` condition is True; the conditions before it are its
bring-up phases, and `ReconcilerError`, `SandboxExpired`, image pull errors and evictions fail it with
the reason. Commands and files go through the same control shell as docker's (`sandbox_backends.control`),
started by one long-lived exec per connection over the pod's exec websocket (`v5.channel.k8s.io`,
v4 taken too). A restarted server re-attaches by the Sandbox's name and checks its labels; interrupts are
the control shell's, and so are byte streams to the pod's loopback; `KubernetesSandbox.pause()` suspends the
Sandbox (`operatingMode: Suspended`) and the next command resumes it.

The server's account needs, in its namespace: create/get/list/watch/patch/delete on sandboxes (and
sandboxclaims with a warm pool), get/list/watch on pods, create on pods/exec, create on networkpolicies,
delete on persistentvolumeclaims. This module is only the declaration, cheap to import.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..base import Driver, Limits
from ..registry import DriverContext, DriverPlugin

DEFAULT_IMAGE = "mcp-sessions-sandbox:bookworm"


class KubernetesSettings(BaseModel):
    """The kubernetes driver's server settings."""

    kubernetes_namespace: str = Field("default", max_length=63, description="Namespace of the kubernetes driver's Sandboxes.")
    kubernetes_kubeconfig: str | None = Field(
        None, description="Kubeconfig file of the cluster (default: in-cluster, else $KUBECONFIG or ~/.kube/config)."
    )
    kubernetes_context: str | None = Field(None, description="Kubeconfig context to use (default: its current one).")
    kubernetes_image: str = Field(
        DEFAULT_IMAGE, description="Image of kubernetes sessions (bash and python3; push scripts/build-sandbox-image.sh's)."
    )
    kubernetes_runtime_class: str | None = Field(
        None, max_length=253, description="runtimeClassName of sandbox pods, e.g. gvisor or kata (default: the cluster's)."
    )
    kubernetes_storage_class: str | None = Field(None, description="Storage class of workspace claims (default: the cluster's).")
    kubernetes_warm_pool: str | None = Field(
        None, description="SandboxWarmPool to claim sandboxes from for sessions without their own image or limits."
    )
    kubernetes_network_policy: bool = Field(True, description="Keep a deny-all NetworkPolicy over every sandbox pod.")
    kubernetes_workspace: str = Field(
        "/workspace", pattern=r"^/[^\x00]*[^/]$", description="Where the workspace claim is mounted."
    )
    kubernetes_ready_timeout_s: float = Field(300.0, gt=0, description="How long a Sandbox may take to be Ready, seconds.")
    kubernetes_max_memory_mb: int = Field(8192, ge=64, description="Most memory a kubernetes session may ask for, MiB.")
    kubernetes_max_cpus: float = Field(4.0, gt=0, description="Most CPUs a kubernetes session may ask for.")
    kubernetes_max_disk_mb: int = Field(
        65536, ge=16, description="Largest workspace claim a kubernetes session may ask for, MiB."
    )
    kubernetes_disk_mb: int = Field(
        4096, ge=16, description="Size of a kubernetes session's workspace claim when it asks for none, MiB."
    )


def make(settings: Any, context: DriverContext) -> Driver:
    try:
        from .driver import KubernetesDriver
    except ImportError as e:
        from ..base import SandboxError

        raise SandboxError(f"The kubernetes driver needs its extra: pip install 'mcp-sessions[kubernetes]' ({e}).") from None
    from .resources import PodPolicy

    s: KubernetesSettings = settings
    return KubernetesDriver(
        policy=PodPolicy(
            namespace=s.kubernetes_namespace,
            image=s.kubernetes_image,
            workspace=s.kubernetes_workspace,
            runtime_class=s.kubernetes_runtime_class,
            storage_class=s.kubernetes_storage_class,
        ),
        server_id=context.server_id,
        kubeconfig=s.kubernetes_kubeconfig,
        context=s.kubernetes_context,
        warm_pool=s.kubernetes_warm_pool,
        network_policy=s.kubernetes_network_policy,
        max_limits=Limits(
            memory_mb=s.kubernetes_max_memory_mb,
            cpus=s.kubernetes_max_cpus,
            tmp_mb=s.kubernetes_max_memory_mb,  # /tmp is memory-backed: it counts against the pod's memory
            disk_mb=s.kubernetes_max_disk_mb,
        ),
        default_disk_mb=s.kubernetes_disk_mb,
        ready_timeout_s=s.kubernetes_ready_timeout_s,
    )


plugin = DriverPlugin(
    name="kubernetes",
    make=make,
    summary="an agent-sandbox Sandbox per session on Kubernetes (no network, non-root)",
    settings=KubernetesSettings,
)
