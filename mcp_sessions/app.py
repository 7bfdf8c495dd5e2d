"""Assembles a running SessionManager from settings: the store, the drivers and the agents."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sandbox_backends import registry
from sandbox_backends.base import Driver
from sandbox_backends.registry import DriverContext
from sandbox_backends.remote import Remote, load_remotes

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
    plugins = registry.drivers()
    context = DriverContext(home=settings.home, server_id=server_id(settings))

    def make(name: str) -> Driver:
        plugin = plugins[name]
        section = None
        if plugin.settings is not None:
            section = plugin.settings.model_validate(settings.model_dump(include=set(plugin.settings.model_fields)))
        return plugin.make(section, context)

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
    return {"shell": ShellAgent(), "llm": llm, "remote": RemoteAgent(llm.prices)}


@asynccontextmanager
async def open_manager(settings: Settings) -> AsyncIterator[SessionManager]:
    store = await Store.open(settings.db_path)
    try:
        manager = SessionManager(
            settings, store, make_driver_factory(settings), agents(settings), known_drivers=sorted(registry.drivers())
        )
        async with manager, Mirror.running(store, settings, configured_remotes(settings)) as mirror:
            manager.mirror = mirror
            yield manager
    finally:
        await store.aclose()
