"""Driver name -> driver class. Third-party packages add drivers through the entry-point group
`mcp_sessions.drivers` (name = "module:Class"), so a new kind of sandbox needs no change here."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

BUILTIN = {
    "local": "sandbox_backends.local:LocalDriver",
    "docker": "sandbox_backends.docker:DockerDriver",
    "remote": "sandbox_backends.remote:RemoteDriver",
}
ENTRY_POINT_GROUP = "mcp_sessions.drivers"


def available() -> dict[str, str]:
    """Every known driver name with the object path that implements it."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load(name: str) -> type:
    """The driver class registered as `name`. Raises KeyError naming the known drivers."""
    target = available().get(name)
    if target is None:
        raise KeyError(f"Unknown driver '{name}'. Known drivers: {', '.join(sorted(available()))}.")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
