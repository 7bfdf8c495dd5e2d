"""Assembles a running SessionManager from settings: the store, the drivers and the agents."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sandbox_backends import registry
from sandbox_backends.base import Driver, Limits, SandboxError
from sandbox_backends.remote import CLIENTS, Remote, load_remotes

from .agents.base import Agent
from .agents.llm import LlmAgent
from .agents.remote import RemoteAgent
from .agents.shell import ShellAgent
from .manager import SessionManager
from .mirror import Mirror
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)


def server_id(settings: Settings) -> str:
    """Names this state folder on a Docker engine (a container label), so every server process that
    shares the folder finds its sandboxes again, and servers with other folders leave them alone."""
    return "home-" + hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:12]


def make_driver_factory(settings: Settings) -> Callable[[str], Driver]:
    """A function that builds the driver called `name`, configured from `settings`."""

    def make(name: str) -> Driver:
        cls = registry.load(name)
        if name == "local":
            return cls(settings.workspaces)
        if name == "docker":
            return cls(
                image=settings.image,
                server_id=server_id(settings),
                pool_size=settings.docker_pool,
                max_limits=Limits(
                    memory_mb=settings.max_memory_mb,
                    cpus=settings.max_cpus,
                    pids=settings.max_pids,
                    tmp_mb=settings.max_tmp_mb,
                ),
            )
        if name == "remote":
            try:
                return cls(load_remotes(settings.remotes, settings.remotes_file))
            except (ValueError, OSError) as e:
                raise SandboxError(f"The remotes configuration is invalid: {e}") from None
        return cls()

    return make


def configured_remotes(settings: Settings) -> dict[str, Remote]:
    """The configured remotes; none if the configuration is invalid (the remote driver says why when used)."""
    try:
        return load_remotes(settings.remotes, settings.remotes_file)
    except (ValueError, OSError) as e:
        log.warning("the remotes configuration is invalid: %s", e)
        return {}


def agents(settings: Settings) -> dict[str, Agent]:
    llm = LlmAgent(settings)
    read_only = {name: r.dialect for name, r in configured_remotes(settings).items() if CLIENTS[r.dialect].read_only}
    return {"shell": ShellAgent(), "llm": llm, "remote": RemoteAgent(read_only, llm.prices)}


@asynccontextmanager
async def open_manager(settings: Settings) -> AsyncIterator[SessionManager]:
    store = await Store.open(settings.db_path)
    try:
        manager = SessionManager(
            settings, store, make_driver_factory(settings), agents(settings), known_drivers=sorted(registry.available())
        )
        async with manager, Mirror.running(store, settings, configured_remotes(settings)) as mirror:
            manager.mirror = mirror
            yield manager
    finally:
        await store.aclose()
