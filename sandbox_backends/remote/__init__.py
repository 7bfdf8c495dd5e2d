"""The `remote` driver: a session on another platform, reached over its HTTP API.

Remotes are configured by name (config.py); each platform's wire format is a dialect, one module each, found
by name (dialect.py): `mcp-sessions` (this project's own REST + SSE API), `ciab` (Claude-In-A-Box),
`litellm-agent-platform`, `everruns`, and the read-only `syntropic137`, whose sessions are mirrored, not driven.
http.py holds what the dialects share: retries through restarts, errors as sentences, SSE that resumes.

This module declares the driver to the registry: its settings, its create options and how it is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..base import SandboxError
from ..registry import DriverContext, DriverPlugin
from .config import Remote, load_remotes, parse_remotes
from .dialect import DialectPlugin, dialect, dialects
from .driver import RemoteDriver, RemoteSandbox
from .http import HttpDialect, ReadOnlyDialect, RemoteRefused

__all__ = [
    "DialectPlugin",
    "HttpDialect",
    "ReadOnlyDialect",
    "Remote",
    "RemoteDriver",
    "RemoteOptions",
    "RemoteRefused",
    "RemoteSandbox",
    "RemoteSettings",
    "dialect",
    "dialects",
    "load_remotes",
    "parse_remotes",
    "plugin",
]


class RemoteSettings(BaseModel):
    remotes_file: Path | None = Field(
        None, description="Remote platforms for driver='remote': JSON (or .toml) name -> {url, dialect, token_env}."
    )
    remotes: str | None = Field(None, description="Remote platforms as a JSON object, like the remotes file; wins per name.")


class RemoteOptions(BaseModel):
    remote: str | None = Field(
        None, max_length=100, description="the name of a configured remote platform whose own agent answers"
    )


def _make(settings: Any, context: DriverContext) -> RemoteDriver:
    s: RemoteSettings = settings
    try:
        return RemoteDriver(load_remotes(s.remotes, s.remotes_file))
    except (ValueError, OSError) as e:
        raise SandboxError(f"The remotes configuration is invalid: {e}") from None


plugin = DriverPlugin(
    name="remote",
    make=_make,
    summary="a session on another platform over its HTTP API (with remote=NAME), whose own agent answers",
    settings=RemoteSettings,
    options=RemoteOptions,
    agent="remote",
    mirrors=True,
)
