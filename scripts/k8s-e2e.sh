#!/usr/bin/env bash
# The kubernetes driver end to end on a real cluster: opt-in, never run by CI (no cluster can run here).
#
# What it shows that the emulator in tests/kubernetes_cluster.py cannot: the agent-sandbox controller's
# real conditions and timing, CRD defaulting and validation by the API server, the pod template's own
# first process, capabilities and the read-only root, kubelet exec (v5.channel.k8s.io) through the API
# server, the deny-all NetworkPolicy, and suspend/resume of a real pod.
#
# Needs: kind (or k3s), kubectl, docker, and this repository with `pip install -e '.[dev]'` in .venv.
# Run on a machine that can pull images:
#
#   bash scripts/k8s-e2e.sh                      # makes a kind cluster "mcp-sessions-e2e", deletes it after
#   KEEP=1 bash scripts/k8s-e2e.sh               # keeps the cluster to look around
#   KUBECONFIG=~/.kube/k3s.yaml NO_KIND=1 bash scripts/k8s-e2e.sh   # an existing cluster (k3s: import the image
#                                                # with `k3s ctr images import`, see IMAGE below)
#
# The steps, each a plain command below:
#   1. kind create cluster --name mcp-sessions-e2e --wait 120s
#   2. kubectl apply --server-side -f .../releases/download/$AGENT_SANDBOX_VERSION/manifest.yaml (and extensions.yaml):
#      the agent-sandbox CRDs and controller; wait for the CRD and every deployment
#   3. bash scripts/build-sandbox-image.sh && kind load docker-image mcp-sessions-sandbox:bookworm --name mcp-sessions-e2e
#   4. kubectl create namespace mcp-e2e
#   5. the driver conformance suite against the cluster: MCP_SESSIONS_K8S_E2E=1 makes tests/driver_conformance.py
#      take the cluster from the MCP_SESSIONS_KUBERNETES_* variables instead of starting the emulator
#   6. one sandbox by hand: its phases, its time to Ready, the sandbox user without capabilities and a read-only
#      root, suspend and resume keeping the workspace, close
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-mcp-sessions-e2e}"
NAMESPACE="${NAMESPACE:-mcp-e2e}"
IMAGE="${IMAGE:-mcp-sessions-sandbox:bookworm}"
AGENT_SANDBOX_VERSION="${AGENT_SANDBOX_VERSION:-v0.5.0}"
RELEASE="https://github.com/kubernetes-sigs/agent-sandbox/releases/download/${AGENT_SANDBOX_VERSION}"

step() { echo "== $*"; }
cleanup() {
    if [[ -z "${NO_KIND:-}" && -z "${KEEP:-}" ]]; then
        step "deleting the kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER"
    fi
}

if [[ -z "${NO_KIND:-}" ]]; then
    step "kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 120s
    trap cleanup EXIT
    export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}"
    kubectl config use-context "kind-$CLUSTER"
fi

step "agent-sandbox $AGENT_SANDBOX_VERSION (CRDs and controller)"
kubectl apply --server-side -f "$RELEASE/manifest.yaml"
kubectl apply --server-side -f "$RELEASE/extensions.yaml"
kubectl wait --for=condition=Established crd/sandboxes.agents.x-k8s.io crd/sandboxclaims.extensions.agents.x-k8s.io --timeout=60s
kubectl wait --for=condition=Available deployment --all --all-namespaces --timeout=180s

step "the sandbox image"
bash scripts/build-sandbox-image.sh
if [[ -z "${NO_KIND:-}" ]]; then
    kind load docker-image "$IMAGE" --name "$CLUSTER"
fi

step "namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -

step "the driver conformance suite and the kubernetes tests against the cluster"
MCP_SESSIONS_K8S_E2E=1 \
MCP_SESSIONS_KUBERNETES_NAMESPACE="$NAMESPACE" \
MCP_SESSIONS_KUBERNETES_IMAGE="$IMAGE" \
MCP_SESSIONS_KUBERNETES_KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}" \
    .venv/bin/pytest -q -p no:cacheprovider tests/driver_conformance.py -k kubernetes

step "one sandbox by hand: phases, time to Ready, no capabilities, read-only root, suspend and resume, close"
NAMESPACE="$NAMESPACE" IMAGE="$IMAGE" .venv/bin/python - <<'EOF'
import os
from pathlib import Path

import anyio

from sandbox_backends import registry
from sandbox_backends.base import SandboxSpec
from sandbox_backends.registry import DriverContext


async def main() -> None:
    plugin = registry.drivers()["kubernetes"]
    settings = plugin.settings.model_validate(
        {
            "kubernetes_namespace": os.environ.get("NAMESPACE", "mcp-e2e"),
            "kubernetes_image": os.environ.get("IMAGE", "mcp-sessions-sandbox:bookworm"),
        }
    )
    driver = plugin.make(settings, DriverContext(home=Path("/tmp/mcp-k8s-e2e"), server_id="e2e"))

    async def on_phase(phase: str, detail: str) -> None:
        print("  phase:", phase, detail)

    started = anyio.current_time()
    sb = await driver.create(SandboxSpec(name="e2e-" + os.urandom(3).hex()), on_phase)
    print(f"  ready in {anyio.current_time() - started:.1f} s: {sb.describe()['pod']}")
    r = await sb.exec("id -u; grep CapEff /proc/self/status; touch /etc/x 2>&1 | tail -1")
    print(r.output)
    assert r.output.splitlines()[0] == "1000" and "CapEff:\t0000000000000000" in r.output, r.output
    assert "Read-only file system" in r.output, r.output
    await sb.write_file("kept.txt", b"kept\n")
    await sb.pause()
    assert (await sb.exec("cat kept.txt")).output == "kept\n"
    await sb.close(delete=True)
    await driver.aclose()
    print("  ok")


anyio.run(main)
EOF
step "done"
