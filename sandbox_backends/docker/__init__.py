"""The `docker` driver: one hardened container per sandbox, commands framed over one attached shell.

Container (see `DockerDriver` for the knobs): no network, every capability dropped but the three the
control shell needs (SETUID, SETGID, KILL), no-new-privileges, memory (swap equal), CPU and process
limits from `Limits`, read-only root, a named volume per sandbox at `/workspace`, tmpfs `/tmp`
(`Limits.tmp_mb`) and `/run`, `init` as PID 1 with a keepalive child (`mcp-keepalive`), and labels
`mcp-sessions.sandbox=1`, `mcp-sessions.server=<id>`, `mcp-sessions.name=<name>` plus
`SandboxSpec.labels`. Containers are named `mcp-ses-<name>`. Init, the keepalive and control shells run
as root (the container's user, so that a root `docker exec` gets the three capabilities); commands run
as the driver's `user` (1000:1000) with no capabilities at all: the control shell starts each one so.

Commands do not pay a `docker exec` each (50-80 ms here). Each sandbox object keeps one long-lived
`docker exec` of the control shell (`sandbox_backends.control`, which describes its protocol), with stdin
attached, and frames its requests over the exec's attach socket.

The control shell's state (`STATE_DIR`, /run/mcp-shell) lives on a tmpfs of its own (as large as /tmp),
root's alone, so a command that fills /tmp leaves the shell working, and no command can reach it: it
survives the server, not a restart of the container.
A command that prints faster than the server reads (about 150 MB/s here) for more than `Limits.tmp_mb`
can still fill it, and then gets ENOSPC. The image needs bash and python3 (3.8 or later).
`SandboxSpec.env` is passed with every command (it is not baked into the container, so pooled containers
get it too); commands start with HOME=/workspace.

Warm pool (opt-in, `pool_size`): containers made ahead for the default policy (image, `pool_limits`,
no network) with the host files of `pool_mounts` bound read-only (the server passes its installed CLIs'
binaries, `DriverContext.host_files`; a spec whose mounts are among them fits the pool), labelled
`mcp-sessions.pool=1`, named `mcp-pool-<random>`, each with its control shell already open. `create` claims one by renaming it to `mcp-ses-<name>` (labels cannot change after
create, so the name binds it; `SandboxSpec.labels` are not applied to a pooled container). The pool
is filled while `watch()` runs; `aclose()` removes unclaimed pool containers, never session ones.

`close()` removes the container and keeps the workspace volume (`mcp-ws-<name>`, or
`mcp-ws-mcp-pool-<random>` for a pooled one; labelled like the container); `close(delete=True)`
removes the volume as well. A later sandbox with the same name reuses a kept volume.

Workspace size (`Limits.disk_mb`, the server's default if not given): where the server may mount and
the engine is on this machine, the volume binds a filesystem of the workspace's own (a sparse ext4
image under the server's state folder, mounted through a loop device while a container uses it), so
a write past the limit fails with ENOSPC; otherwise the volume is plain and the session layer measures
it (`MeasuresDisk`). `describe()["disk"]` says which; `workspace.py` says how.

Runtime: `runc` by default (`DockerSettings.docker_runtime`), or gVisor's `runsc` for a spec whose options
ask `isolation="gvisor"` (`docker_gvisor_runtime`): the container's kernel is then gVisor's, in user space.
The driver keeps the process limit inside under gVisor (see `container.host_pids`), and the control shell
adapts to what gVisor lacks (program.py: `as_user`, `runs_unreadable`).

All docker SDK calls run in worker threads; the control shell's socket is read with anyio directly.
Only plain `unix://` and `tcp://` engine addresses are supported (not TLS or ssh).

The modules: `container` (names, labels, the policy a container is fixed to), `driver` (DockerDriver:
host config, create, attach), `engine` (the SDK client, outages and recovery, the event watch), `pool`
(the warm pool), `sandbox` (DockerSandbox: commands and files), `transport` (the exec's attach socket
under the control client), `workspace` (volumes and their size limits) and `disks` (the workspace
filesystems on this host). This module is only the driver's declaration, cheap to import: the server
reads it at every start, and imports the docker SDK only once a docker session is made.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from ..base import Driver, Isolation, Limits, isolation_refused
from ..registry import DriverContext, DriverPlugin
from .container import DEFAULT_IMAGE, GVISOR_RUNTIME


class DockerSettings(BaseModel):
    """The docker driver's server settings."""

    image: str = Field(DEFAULT_IMAGE, description="Default image of docker sessions.")
    docker_pool: int = Field(0, ge=0, le=200, description="Docker containers kept warm for fast creates (0 = off).")
    max_memory_mb: int = Field(8192, ge=64, description="Most memory a docker session may ask for, MiB.")
    max_cpus: float = Field(4.0, gt=0, description="Most CPUs a docker session may ask for.")
    max_pids: int = Field(4096, ge=16, description="Most processes a docker session may ask for.")
    max_tmp_mb: int = Field(4096, ge=1, description="Largest /tmp a docker session may ask for, MiB.")
    max_disk_mb: int = Field(65536, ge=16, le=1 << 24, description="Largest /workspace a docker session may ask for, MiB.")
    default_disk_mb: int = Field(
        4096, ge=16, le=1 << 24, description="Size of a docker session's /workspace when it asks for none, MiB."
    )
    docker_disk: Literal["auto", "hard", "measured"] = Field(
        "auto",
        description="How /workspace sizes are kept: auto (a filesystem of its own per workspace where the server may "
        "mount one, else measured), hard (refuse sessions otherwise), measured (a turn that passes the size fails).",
    )

    docker_runtime: str = Field(
        "runc",
        max_length=100,
        description="Engine runtime of docker sessions that choose no isolation: runc, or gVisor's (runsc).",
    )
    docker_gvisor_runtime: str = Field(
        GVISOR_RUNTIME,
        max_length=100,
        description="Engine runtime of isolation='gvisor' (scripts/install-runsc.sh registers runsc).",
    )

    @model_validator(mode="after")
    def _default_within_maximum(self) -> Self:
        if self.default_disk_mb > self.max_disk_mb:
            raise ValueError(f"default_disk_mb ({self.default_disk_mb}) is over max_disk_mb ({self.max_disk_mb}).")
        return self


class DockerOptions(BaseModel):
    """What `create_session` may ask of the docker driver."""

    isolation: Isolation | None = Field(None, description="")

    @field_validator("isolation")
    @classmethod
    def _own(cls, value: str | None) -> str | None:
        if refused := isolation_refused("docker", value, ("runc", "gvisor")):
            raise ValueError(refused)
        return value


def make(settings: Any, context: DriverContext) -> Driver:
    from .driver import DockerDriver

    s: DockerSettings = settings
    return DockerDriver(
        image=s.image,
        server_id=context.server_id,
        pool_size=s.docker_pool if context.serving else 0,
        pool_mounts=context.host_files,
        max_limits=Limits(
            memory_mb=s.max_memory_mb, cpus=s.max_cpus, pids=s.max_pids, tmp_mb=s.max_tmp_mb, disk_mb=s.max_disk_mb
        ),
        default_disk_mb=s.default_disk_mb,
        disk_root=context.home / "docker" / "workspaces",
        disk_mode=s.docker_disk,
        runtime=s.docker_runtime,
        gvisor_runtime=s.docker_gvisor_runtime,
    )


plugin = DriverPlugin(
    name="docker",
    make=make,
    summary="a hardened container per session on a Docker engine (no network, non-root, limits)",
    settings=DockerSettings,
    options=DockerOptions,
)
