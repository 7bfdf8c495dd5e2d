"""The `docker` driver: one hardened container per sandbox, commands framed over one attached shell.

Container (see `DockerDriver` for the knobs): no network, every capability dropped, no-new-privileges,
memory (swap equal), CPU and process limits from `Limits`, user 1000:1000, read-only root, a named
volume per sandbox at `/workspace`, tmpfs `/tmp` (`Limits.tmp_mb`) and `/run`, `init` as PID 1 with a
keepalive child (`mcp-keepalive`), and labels `mcp-sessions.sandbox=1`, `mcp-sessions.server=<id>`,
`mcp-sessions.name=<name>` plus `SandboxSpec.labels`. Containers are named `mcp-ses-<name>`.

Commands do not pay a `docker exec` each (50-80 ms here). Each sandbox object keeps one long-lived
`docker exec` of the control shell (`sandbox_backends.control`, which describes its protocol), with stdin
attached, and frames its requests over the exec's attach socket.

The runner's state (`STATE_DIR`, /run/mcp-shell) lives on a tmpfs of its own (as large as /tmp), so a
command that fills /tmp leaves the shell working: it survives the server, not a restart of the container.
A command that prints faster than the server reads (about 150 MB/s here) for more than `Limits.tmp_mb`
can still fill it, and then gets ENOSPC. The image needs bash and python3 (3.8 or later).
`SandboxSpec.env` is passed with every command (it is not baked into the container, so pooled containers
get it too); commands start with HOME=/workspace.

Warm pool (opt-in, `pool_size`): containers made ahead for the default policy (image, `pool_limits`,
no network), labelled `mcp-sessions.pool=1`, named `mcp-pool-<random>`, each with its control shell
already open. `create` claims one by renaming it to `mcp-ses-<name>` (labels cannot change after
create, so the name binds it; `SandboxSpec.labels` are not applied to a pooled container). The pool
is filled while `watch()` runs; `aclose()` removes unclaimed pool containers, never session ones.

`close()` removes the container and keeps the workspace volume (`mcp-ws-<name>`, or
`mcp-ws-mcp-pool-<random>` for a pooled one; labelled like the container); `close(delete=True)`
removes the volume as well. A later sandbox with the same name reuses a kept volume.

All docker SDK calls run in worker threads; the control shell's socket is read with anyio directly.
Only plain `unix://` and `tcp://` engine addresses are supported (not TLS or ssh).

The modules: `container` (names, labels, the policy a container is fixed to), `driver` (DockerDriver:
host config, create, attach), `engine` (the SDK client, outages and recovery, the event watch), `pool`
(the warm pool), `sandbox` (DockerSandbox: commands and files) and `transport` (the exec's attach socket
under the control client).
"""

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
)
from .driver import DockerDriver
from .sandbox import DockerSandbox

__all__ = [
    "BASE_ENV",
    "DEFAULT_IMAGE",
    "KEEPALIVE_CMD",
    "LABEL_NAME",
    "LABEL_POOL",
    "LABEL_SANDBOX",
    "LABEL_SERVER",
    "POOL_PREFIX",
    "SESSION_PREFIX",
    "STATE_DIR",
    "VOLUME_PREFIX",
    "WORKSPACE",
    "DockerDriver",
    "DockerSandbox",
]
