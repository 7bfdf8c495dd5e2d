"""Drivers by name. A driver declares itself with one small object, a `DriverPlugin`; the server asks
this registry for it and never imports a driver by name.

Built-in drivers are listed in `BUILTIN`; other packages add theirs through the entry-point group
`mcp_sessions.drivers`, whose entry points name a `DriverPlugin` object:

    [project.entry-points."mcp_sessions.drivers"]
    firecracker = "my_package.firecracker:plugin"

The module holding the plugin object should be cheap to import (every server start reads every
plugin, to build its flags and the `create_session` schema); `make` may import the heavy parts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from .base import Driver

ENTRY_POINT_GROUP = "mcp_sessions.drivers"
P = TypeVar("P")
BUILTIN = {
    "local": "sandbox_backends.local:plugin",
    "docker": "sandbox_backends.docker:plugin",
    "remote": "sandbox_backends.remote:plugin",
    "kubernetes": "sandbox_backends.kubernetes:plugin",
}


@dataclass(frozen=True)
class DriverContext:
    """What the server tells every driver it makes."""

    home: Path
    """The server's state folder; a driver may keep files under `home / "<driver name>"`."""
    server_id: str
    """A stable name of this state folder, e.g. for labels that let a restarted server find its sandboxes."""
    serving: bool = True
    """False for a one-shot command (`mcp-sessions ls`): start nothing that outlives it (no warm pools)."""
    host_files: Mapping[str, str] = field(default_factory=dict)
    """The host files the server's agents may give a session (`SandboxSpec.mounts`: name -> host path), e.g.
    the installed CLIs' binaries: a driver that makes sandboxes ahead can give them these, so that a session
    asking for any of them can still have one made ahead."""


@dataclass(frozen=True)
class DriverPlugin:
    """How the server finds, configures and makes one kind of sandbox."""

    name: str
    make: Callable[[Any, DriverContext], Driver]
    """Builds the driver from its settings (an instance of `settings`, or None without one) and the context."""
    summary: str
    """One line for people and models choosing a driver, e.g. "a container per session on a Docker engine"."""
    settings: type[BaseModel] | None = None
    """The driver's server settings. Each field becomes a flag `--<name>` (`_s`, `_mb` and `_per_s` suffixes
    dropped) and a variable `MCP_SESSIONS_<NAME>`, so field names must be unique across every plugin."""
    agent: str | None = None
    """The agent every session of this driver runs, when its platform runs its own (the remote driver's
    sandboxes answer messages themselves); None: any agent that runs commands in a sandbox."""
    options: type[BaseModel] | None = None
    """What `create_session` may pass this driver (fields default to None = not given); they reach the
    driver as `SandboxSpec.options`. Each field's description says what it does in a few words."""
    mirrors: bool = False
    """The driver is also a `MirrorSource` (base.py): it shows sessions that run elsewhere. The server makes
    one more of it at start, for the mirror, so making it must do no I/O; those sessions' agent is `agent`."""

    def __post_init__(self) -> None:
        if self.mirrors and self.agent is None:
            raise PluginError(f"The driver '{self.name}' mirrors sessions run elsewhere but names no `agent` for them.")


class PluginError(Exception):
    """A plugin is missing or malformed. The message names it and what to fix."""


def _load(name: str, target: str, group: str, kind: type[P]) -> P:
    module, _, attr = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise PluginError(f"The {group} plugin '{name}' ({target}) cannot be loaded: {e}") from e
    if not isinstance(found, kind):
        raise PluginError(f"The {group} plugin '{name}' ({target}) is a {type(found).__name__}, not a {kind.__name__}.")
    if getattr(found, "name", None) != name:
        raise PluginError(f"The {group} plugin registered as '{name}' ({target}) calls itself '{getattr(found, 'name', None)}'.")
    return found


def discover(group: str, builtin: dict[str, str], kind: type[P]) -> dict[str, P]:
    """Every plugin of an entry-point group, built-ins first; a package cannot replace a built-in."""
    targets = dict(builtin)
    for ep in entry_points(group=group):
        targets.setdefault(ep.name, ep.value)
    return {name: _load(name, target, group, kind) for name, target in targets.items()}


def drivers() -> dict[str, DriverPlugin]:
    """Every known driver plugin by name."""
    return discover(ENTRY_POINT_GROUP, BUILTIN, DriverPlugin)
