"""The docker driver's declaration: its server settings and how the server makes it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .base import Driver, Limits
from .registry import DriverContext, DriverPlugin


class DockerSettings(BaseModel):
    image: str = Field("mcp-sessions-sandbox:bookworm", description="Default image of docker sessions.")
    docker_pool: int = Field(0, ge=0, le=200, description="Docker containers kept warm for fast creates (0 = off).")
    max_memory_mb: int = Field(8192, ge=64, description="Most memory a docker session may ask for, MiB.")
    max_cpus: float = Field(4.0, gt=0, description="Most CPUs a docker session may ask for.")
    max_pids: int = Field(4096, ge=16, description="Most processes a docker session may ask for.")
    max_tmp_mb: int = Field(4096, ge=1, description="Largest /tmp a docker session may ask for, MiB.")


def make(settings: Any, context: DriverContext) -> Driver:
    from .docker import DockerDriver

    s: DockerSettings = settings
    return DockerDriver(
        image=s.image,
        server_id=context.server_id,
        pool_size=s.docker_pool if context.serving else 0,
        max_limits=Limits(memory_mb=s.max_memory_mb, cpus=s.max_cpus, pids=s.max_pids, tmp_mb=s.max_tmp_mb),
    )


plugin = DriverPlugin(
    name="docker",
    make=make,
    summary="a hardened container per session on a Docker engine (no network, non-root, limits)",
    settings=DockerSettings,
)
