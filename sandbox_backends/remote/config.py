"""The configured remote platforms: what a `Remote` is, and how the remotes file or variable is read.

Remotes are named in a JSON object (or a TOML file with a `[remotes.NAME]` table per remote):
`{"name": {"url", "dialect", "token_env", "options", "connect_timeout_s", "read_timeout_s", "reconnect_s"}}`.
A remote's `options` are checked against its dialect's options model when the remotes are loaded, so a
mistake shows at start, naming the remote, and not at the first session.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import SandboxError
from .dialect import dialect, dialects

FIELDS = {"url", "dialect", "token_env", "options", "connect_timeout_s", "read_timeout_s", "reconnect_s"}
DEFAULT_DIALECT = "mcp-sessions"


@dataclass(frozen=True)
class Remote:
    """One configured remote platform."""

    name: str
    url: str
    dialect: str = DEFAULT_DIALECT
    token_env: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """The dialect's own settings, e.g. {"agent": "llm", "driver": "docker"} for the remote's create call."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    reconnect_s: float = 120.0
    """How long to keep retrying an unreachable remote (a restart) before giving up."""

    @property
    def label(self) -> str:
        return f"remote '{self.name}' ({self.dialect} at {self.url})"

    def describe(self) -> dict[str, Any]:
        """What a session on this remote shows as its `sandbox` (with the remote session's id added)."""
        return {"remote": self.name, "dialect": self.dialect, "url": self.url}

    def token(self) -> str | None:
        if not self.token_env:
            return None
        value = os.environ.get(self.token_env)
        if not value:
            raise SandboxError(f"{self.label}: the token variable {self.token_env} is not set in the server's environment.")
        return value


def parse_remotes(data: Any) -> dict[str, Remote]:
    """Remotes from a JSON object: `{"name": {"url", "dialect", "token_env", "options", ...}}`.
    Raises ValueError with a sentence naming the bad entry."""
    if not isinstance(data, dict):
        raise ValueError("the remotes configuration must be an object: name -> {url, dialect, token_env}")
    remotes = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ValueError(f"remote '{name}' needs at least a \"url\" (a string)")
        unknown = set(entry) - FIELDS
        if unknown:
            raise ValueError(f"remote '{name}' has unknown fields: {', '.join(sorted(unknown))}")
        name_of_dialect = entry.get("dialect", DEFAULT_DIALECT)
        known = dialects()
        if name_of_dialect not in known:
            raise ValueError(f"remote '{name}': unknown dialect '{name_of_dialect}'; known: {', '.join(known)}")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"remote '{name}': \"options\" must be an object")
        try:
            dialect(name_of_dialect).check_options(options)
        except ValueError as e:
            raise ValueError(f"remote '{name}' ({name_of_dialect}): {e}") from None
        remotes[name] = Remote(name=name, **{**entry, "url": entry["url"].rstrip("/"), "dialect": name_of_dialect})
    return remotes


def load_remotes(text: str | None = None, path: str | os.PathLike[str] | None = None) -> dict[str, Remote]:
    """Remotes from a JSON file (`.toml` files are read as TOML) and/or a JSON string; the string wins per name."""
    found: dict[str, Remote] = {}
    if path is not None:
        raw = Path(path).read_bytes()
        if str(path).endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode())
            data = data.get("remotes", data)
        else:
            data = json.loads(raw)
        found.update(parse_remotes(data))
    if text:
        found.update(parse_remotes(json.loads(text)))
    return found
