"""Remote dialects by name. A dialect (one platform's wire format) declares itself with one `DialectPlugin`
object in its module; the remote driver and the remotes configuration find it here, never by importing it.

Built-in dialects are listed in `BUILTIN`; other packages add theirs through the entry-point group
`mcp_sessions.remote_dialects`, whose entry points name a `DialectPlugin`:

    [project.entry-points."mcp_sessions.remote_dialects"]
    opencode = "my_package.opencode:plugin"
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from ..registry import PluginError, discover
from .http import HttpDialect, ReadOnlyDialect

ENTRY_POINT_GROUP = "mcp_sessions.remote_dialects"
BUILTIN = {
    "mcp-sessions": "sandbox_backends.remote.mcp_sessions_api:plugin",
    "ciab": "sandbox_backends.remote.ciab:plugin",
    "litellm-agent-platform": "sandbox_backends.remote.litellm_agent_platform:plugin",
    "everruns": "sandbox_backends.remote.everruns:plugin",
    "syntropic137": "sandbox_backends.remote.syntropic137:plugin",
}


@dataclass(frozen=True)
class DialectPlugin:
    """How the remote driver talks to one kind of platform."""

    name: str
    """What a remote's `dialect` says, e.g. "everruns"."""
    client: type[HttpDialect]
    """Made once per remote of this dialect, with the `Remote`; it makes no request until used."""
    read_only: bool = False
    """The platform's sessions can only be read: the client is a `ReadOnlyDialect`, and its sessions are
    mirrored instead of made and driven here."""
    options: type[BaseModel] | None = None
    """What a remote's `options` may hold, checked when the remotes are loaded. A model that allows extra
    fields passes them on (e.g. as fields of the platform's create call); None accepts anything."""

    def __post_init__(self) -> None:
        if self.read_only != issubclass(self.client, ReadOnlyDialect):
            says = "is" if self.read_only else "is not"
            raise PluginError(
                f"The dialect '{self.name}' says it {says} read-only, but its client {self.client.__name__} disagrees."
            )

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ValueError, with one sentence per problem, if `options` do not fit the options model."""
        if self.options is None:
            return
        try:
            self.options.model_validate(options)
        except ValidationError as e:
            raise ValueError(". ".join(_sentences(self.options, options, e))) from None


def _sentences(model: type[BaseModel], options: dict[str, Any], error: ValidationError) -> list[str]:
    """A validation error as sentences that name each option and what it takes."""
    errors = error.errors()
    unknown = sorted(str(d["loc"][0]) for d in errors if d["type"] == "extra_forbidden")
    found = []
    if unknown:
        known = "; ".join(f"{k} ({f.description})" for k, f in model.model_fields.items())
        found.append(f"unknown options {', '.join(unknown)}; known: {known}")
    for key in dict.fromkeys(str(d["loc"][0]) for d in errors if d["type"] != "extra_forbidden"):
        field, value = model.model_fields[key], options.get(key)
        if _numeric(field.annotation):
            low = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
            high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
            span = f" from {low:g}{f' to {high:g}' if high is not None else ' up'}" if low is not None else ""
            found.append(f"options.{key} must be a number{span}, not {value!r}")
        else:
            found.append(f"options.{key} cannot be {value!r}" + (f" ({field.description})" if field.description else ""))
    return found


def _numeric(annotation: Any) -> bool:
    return annotation in (int, float) or any(a in (int, float) for a in get_args(annotation))


@cache
def dialects() -> dict[str, DialectPlugin]:
    """Every known dialect by name, built-ins first (read once: entry points do not change while running)."""
    return discover(ENTRY_POINT_GROUP, BUILTIN, DialectPlugin)


def dialect(name: str) -> DialectPlugin:
    """The dialect called `name`; KeyError if there is none (remotes are checked when loaded)."""
    return dialects()[name]
