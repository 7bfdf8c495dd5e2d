"""Assembles a running SessionManager from settings: the store, the drivers and the agents."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sandbox_backends import registry
from sandbox_backends.base import Driver

from .agents.base import Agent
from .agents.shell import ShellAgent
from .manager import SessionManager
from .settings import Settings
from .store import Store


def make_driver_factory(settings: Settings):
    """A function that builds the driver called `name`, configured from `settings`."""
    server_id = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:12]

    def make(name: str) -> Driver:
        cls = registry.load(name)
        if name == "local":
            return cls(settings.workspaces)
        if name == "docker":
            return cls(image=settings.image, server_id=server_id, pool_size=settings.docker_pool)
        return cls()

    return make


def agents() -> dict[str, Agent]:
    return {"shell": ShellAgent()}


@asynccontextmanager
async def open_manager(settings: Settings) -> AsyncIterator[SessionManager]:
    store = await Store.open(settings.db_path)
    try:
        manager = SessionManager(
            settings, store, make_driver_factory(settings), agents(), known_drivers=sorted(registry.available())
        )
        async with manager:
            yield manager
    finally:
        await store.aclose()
