"""What every sandbox container of this driver shares: its names, labels, mounts, keepalive and environment.

Separate so that the driver, the sandboxes, the pool and the engine watch name and recognise containers
the same way without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import Limits

DEFAULT_IMAGE = "mcp-sessions-sandbox:bookworm"
WORKSPACE = "/workspace"
STATE_DIR = "/run/mcp-shell"
"""A tmpfs of its own, so a command that fills /tmp does not take the shell's state and output files with it."""
KEEPALIVE_NAME = "mcp-keepalive"

LABEL_SANDBOX = "mcp-sessions.sandbox"
LABEL_SERVER = "mcp-sessions.server"
LABEL_NAME = "mcp-sessions.name"
LABEL_POOL = "mcp-sessions.pool"
SESSION_PREFIX = "mcp-ses-"
POOL_PREFIX = "mcp-pool-"
VOLUME_PREFIX = "mcp-ws-"

KEEPALIVE_CMD = ["bash", "-c", f"exec -a {KEEPALIVE_NAME} sleep infinity"]
CONTAINER_USER = "0:0"
"""The container's own user: init, the keepalive and control shells run as root, commands as the driver's
`user` (the control shell switches to it). Docker 20.10 gives a root `docker exec` the container's added
capabilities only when the container's user is root (with no-new-privileges, a root exec into a
container of user 1000 has none)."""
CONTROL_CAPS = ["SETUID", "SETGID", "KILL"]
"""All the container keeps of root's capabilities, for its control shells: to start commands as the sandbox
user and read and write its files with that user's rights (SETUID, SETGID), and to stop them (KILL).
Commands run with none: they start as the sandbox user with no-new-privileges."""
BASE_ENV = {"HOME": WORKSPACE, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
"""Environment of every container; `SandboxSpec.env` is added per command (so pooled containers get it too)."""
MOUNTS_DIR = "/opt/mcp-sessions/mounts"
"""Where `SandboxSpec.mounts` appear in a container (host files of the engine's machine, bound read-only)."""


GVISOR_RUNTIME = "runsc"
"""The name gVisor is registered under in the engine's daemon.json (scripts/install-runsc.sh registers it so),
unless the server is told another (`docker_gvisor_runtime`, e.g. a runsc on its KVM platform)."""


def host_pids(gvisor: bool, pids: int) -> int:
    """The engine's process limit for a container whose commands may run `pids` processes. Under runc the
    cgroup counts the sandbox's own processes. Under gVisor it counts gVisor's host tasks, about 17 per
    process of a fork bomb here, and gVisor dies at the limit (taking the sandbox with it): there the
    sandbox's processes are limited inside (RLIMIT_NPROC, which gVisor counts per sandbox), and the
    cgroup only guards the host."""
    return 32 * pids + 1024 if gvisor else pids


def runtime_missing(runtime: str, gvisor: bool) -> str:
    """What to do when the engine does not know `runtime`, for the caller and the operator."""
    if gvisor:
        return (
            f"gVisor is not available: this Docker engine has no runtime {runtime!r}. Run scripts/install-runsc.sh on the "
            "engine's machine (it installs runsc and registers it in /etc/docker/daemon.json), or use isolation='runc'."
        )
    return f"This Docker engine has no runtime {runtime!r}: register it in its daemon.json, or start the server with another."


@dataclass(frozen=True)
class Policy:
    """What a container is fixed to at create time; a pool serves one policy."""

    image: str
    limits: Limits
    network: bool
    runtime: str = "runc"
    mounts: tuple[tuple[str, str], ...] = ()
    """Host files bound read-only, as (name, host path): at `MOUNTS_DIR/<name>` (the pool's: the driver's `pool_mounts`)."""
