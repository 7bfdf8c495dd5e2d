"""Assembles a running SessionManager from settings: the store, and the drivers and agents the catalog knows."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from sandbox_backends.base import Driver, SandboxError
from sandbox_backends.registry import DriverContext

from .agents.base import Agent, AgentContext, NeedsHostFiles
from .agents.pricing import PriceTable
from .manager import SessionManager
from .mirror import Mirror, MirrorDriver
from .plugins import Catalog, catalog
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)


def server_id(settings: Settings) -> str:
    """Names this state folder on a Docker engine (a container label), so every server process that
    shares the folder finds its sandboxes again, and servers with other folders leave them alone. Servers
    sharing a PostgreSQL database share its state, whatever their folders: the database names them."""
    if settings.database_url:
        from .store_postgres import redact

        return "db-" + hashlib.sha256(redact(settings.database_url).encode()).hexdigest()[:12]
    return "home-" + hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:12]


def make_driver_factory(
    settings: Settings, plugins: Catalog, serving: bool = True, host_files: Mapping[str, str] | None = None
) -> Callable[[str], Driver]:
    """A function that builds the driver called `name` from its plugin and its settings section."""
    context = DriverContext(home=settings.home, server_id=server_id(settings), serving=serving, host_files=host_files or {})

    def make(name: str) -> Driver:
        plugin = plugins.drivers[name]
        return plugin.make(settings.section(plugin.settings) if plugin.settings else None, context)

    return make


def make_agents(settings: Settings, plugins: Catalog) -> dict[str, Agent]:
    """Every installed agent, made from its plugin and its settings section."""
    context = AgentContext(home=settings.home, prices=PriceTable.load(settings.price_file))
    return {
        name: plugin.make(settings.section(plugin.settings) if plugin.settings else None, context)
        for name, plugin in plugins.agents.items()
    }


def agents_host_files(agents: Mapping[str, Agent]) -> dict[str, str]:
    """The host files the agents installed here give their sessions (a CLI's binary), for drivers that make
    sandboxes ahead. An agent whose files are missing gives none: its sessions are refused until it is installed."""
    files: dict[str, str] = {}
    for agent in agents.values():
        if isinstance(agent, NeedsHostFiles):
            try:
                found = agent.host_files({})
            except ValueError:
                continue
            for name, path in found.items():
                files.setdefault(name, path)  # a name two agents claim: only the first's sessions fit
    return files


def mirror_drivers(settings: Settings, plugins: Catalog) -> list[MirrorDriver]:
    """Drivers of the mirror's own (it closes them): one of each driver that shows sessions run elsewhere.
    None of a driver whose configuration is invalid (using that driver says why)."""
    make = make_driver_factory(settings, plugins)
    found: list[MirrorDriver] = []
    for name, plugin in plugins.drivers.items():
        if plugin.mirrors and plugin.agent is not None:
            try:
                found.append(MirrorDriver(make(name), plugin.agent))
            except SandboxError as e:
                log.warning("%s", e)
    return found


async def open_store(settings: Settings) -> Store:
    """The store of these settings: PostgreSQL at `database_url` if set, else SQLite in the state folder."""
    if settings.database_url:
        from .store_postgres import PostgresStore

        return await PostgresStore.connect(settings.database_url)
    return await Store.open(settings.db_path)


def check_store(settings: Settings) -> None:
    """Open, migrate and close the store, raising `StoreError` with advice if it cannot be used."""
    if settings.database_url:
        from .store_postgres import PostgresStore

        PostgresStore.check_url(settings.database_url)
    else:
        Store.check(settings.db_path)


@asynccontextmanager
async def open_manager(settings: Settings, serving: bool = True) -> AsyncIterator[SessionManager]:
    """The manager over the state folder's store. `serving=False` for one-shot commands: no warm pools."""
    plugins = catalog()
    store = await open_store(settings)
    try:
        agents = make_agents(settings, plugins)
        drivers = make_driver_factory(settings, plugins, serving, agents_host_files(agents))
        manager = SessionManager(settings, store, plugins, drivers, agents)
        async with manager, Mirror.running(store, settings, mirror_drivers(settings, plugins)) as mirror:
            manager.mirror = mirror
            yield manager
    finally:
        await store.aclose()
