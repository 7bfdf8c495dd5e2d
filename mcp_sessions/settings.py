"""Server configuration: flags, then `MCP_SESSIONS_*` variables, then defaults.

`Settings` holds what the session layer itself needs. Each driver and agent plugin declares its own
settings model; its values live in a *section* that only that plugin reads (`settings.section(Model)`).
Every field, core or section, is set the same way: `--<name>` (see `flag_name`), `MCP_SESSIONS_<NAME>`,
or a keyword of `Settings(...)`, so field names are unique across all plugins (the catalog checks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo

ENV_PREFIX = "MCP_SESSIONS_"
M = TypeVar("M", bound=BaseModel)


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mcp-sessions"


def flag_name(field: str) -> str:
    """The command-line flag of a settings field: `max_memory_mb` -> `--max-memory`, `idle_timeout_s` ->
    `--idle-timeout`, `rate_limit_per_s` -> `--rate-limit` (the unit is in the help, not the flag)."""
    for suffix in ("_per_s", "_mb", "_s"):
        if field.endswith(suffix):
            field = field.removesuffix(suffix)
            break
    return "--" + field.replace("_", "-")


def env_names(name: str, info: FieldInfo) -> list[str]:
    """The variables a field is read from, first found wins: `MCP_SESSIONS_<NAME>`, then the variable other
    tools already use for it, if the field names one (`json_schema_extra={"env": "OPENAI_API_KEY"}`)."""
    names = [ENV_PREFIX + name.upper()]
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("env"), str):
        names.append(str(extra["env"]))
    return names


def is_secret(info: FieldInfo) -> bool:
    """Secrets are set through the environment only: a flag would show them in `ps`."""
    return "SecretStr" in repr(info.annotation)


class Settings(BaseModel):
    """The session layer's settings, plus a section per plugin that has settings (`section()`)."""

    model_config = ConfigDict(extra="forbid")

    home: Path = Field(default_factory=default_home, description="Where state lives: the database and local workspaces.")
    database_url: str | None = Field(
        None,
        description="postgresql://... to keep the state in PostgreSQL, shared by several servers, instead of SQLite in "
        "--home (needs the [postgres] extra; put the password in PGPASSWORD or ~/.pgpass, not here).",
    )
    driver: str = Field("local", description="Default sandbox driver for new sessions.")
    agent: str = Field("shell", description="Default agent for new sessions.")
    command_timeout_s: float = Field(600.0, gt=0, le=10**7, description="Default limit on one command's run time, in seconds.")
    max_command_timeout_s: float = Field(86400.0, gt=0, le=10**7, description="Largest command timeout a caller may ask for.")
    max_output_bytes: int = Field(
        32768, ge=1024, le=1 << 30, description="Output kept per turn (head and tail); the rest is cut."
    )
    max_message_bytes: int = Field(1_000_000, ge=1024, le=1 << 30, description="Largest message a caller may send, in bytes.")
    max_file_bytes: int = Field(5_000_000, ge=1024, le=1 << 31, description="Largest file read or written through the server.")
    idle_timeout_s: float = Field(900.0, ge=0, le=10**9, description="Close a session idle this long, in seconds (0 = never).")
    idle_action: Literal["pause", "close"] = Field(
        "close", description="What an idle timeout does: pause the session (its next use resumes it) or close it."
    )
    paused_timeout_s: float = Field(
        604800.0, ge=0, le=10**9, description="Close a session paused this long, in seconds (0 = never; default 7 days)."
    )
    max_checkpoint_mb: int = Field(
        4096, ge=0, le=1 << 24, description="Most MiB the checkpoints of one session may hold together (0: no checkpoints)."
    )
    create_timeout_s: float = Field(300.0, gt=0, le=10**6, description="A session still creating after this many seconds fails.")
    log_level: str = Field("WARNING", description="Level of the server's own log on stderr: DEBUG, INFO, WARNING or ERROR.")
    price_file: Path | None = Field(
        None, description="JSON price table (USD per million tokens) that overrides or extends the shipped one."
    )
    host: str = Field("127.0.0.1", description="Address `serve --http` listens on; other than loopback only with tokens.")
    port: int = Field(8765, ge=0, le=65535, description="Port `serve --http` listens on.")
    tokens_file: Path | None = Field(
        None, description="Bearer tokens for HTTP, one `owner:token` a line (or MCP_SESSIONS_TOKENS)."
    )
    tokens: SecretStr | None = Field(None, description="Bearer tokens for HTTP, `owner:token` pairs separated by commas.")
    egress_allow: str | None = Field(
        None, description="host:port pairs, separated by commas, that sessions may ask to reach through the egress proxy."
    )
    admins: str | None = Field(
        None,
        description="Owners (comma-separated) whose tokens read every owner's sessions over REST and the dashboard; "
        "they change only their own.",
    )
    max_request_bytes: int = Field(
        32_000_000,
        ge=1024,
        le=1 << 31,
        description="Largest HTTP request body; larger ones get 413 (the default fits a message with 4 images of 5 MB).",
    )
    max_sessions_per_owner: int = Field(
        20, ge=0, le=10**6, description="Live sessions one token's owner may have at once (0 = no limit)."
    )
    rate_limit_per_s: float = Field(
        100.0,
        ge=0,
        le=10**6,
        description="HTTP requests per second per token's owner, bursts of twice that; none without tokens (0 = off).",
    )

    _sections: dict[type[BaseModel], BaseModel] = PrivateAttr(default_factory=dict)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"{url.partition(':')[0]!r} is not a database this server keeps its state in: give a postgresql:// URL, "
                "or none to keep the state in SQLite in the state folder"
            )
        return url or None

    @field_validator("egress_allow")
    @classmethod
    def _pairs(cls, setting: str | None) -> str | None:
        if setting:  # a typo stops the server at start, not the first session that asks for egress
            from .egress import server_allows  # egress imports the store, which imports this module

            server_allows(setting)
        return setting or None

    def __init__(self, **values: Any) -> None:
        from .plugins import catalog  # the catalog imports plugins, which may import this module

        core = {k: v for k, v in values.items() if k in type(self).model_fields}
        super().__init__(**core)
        rest = {k: v for k, v in values.items() if k not in core}
        sections: dict[type[BaseModel], BaseModel] = {}
        for _, model in catalog().settings_sections():
            mine = {k: rest.pop(k) for k in list(rest) if k in model.model_fields}
            sections[model] = model.model_validate(mine)
        if rest:
            raise ValidationError.from_exception_data(
                "Settings", [{"type": "extra_forbidden", "loc": (name,), "input": value} for name, value in rest.items()]
            )
        self._sections = sections

    def section(self, model: type[M]) -> M:
        """The values of one plugin's settings model (its defaults if the plugin was not installed when these
        settings were made)."""
        found = self._sections.get(model)
        return found if isinstance(found, model) else model()

    def values(self) -> dict[str, Any]:
        """Every field, core and sections, by name: what `Settings(**values)` takes."""
        flat = {name: getattr(self, name) for name in type(self).model_fields}
        for section in self._sections.values():
            flat.update({name: getattr(section, name) for name in type(section).model_fields})
        return flat

    def replace(self, **values: Any) -> Settings:
        """A copy with some fields (core or any section's) changed, validated like the original."""
        return Settings(**{**self.values(), **values})

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Flags (given as `overrides`, None meaning unset) win over `MCP_SESSIONS_*` variables."""
        from .plugins import catalog

        values: dict[str, Any] = {}
        models: list[type[BaseModel]] = [cls, *(model for _, model in catalog().settings_sections())]
        for model in models:
            for name, info in model.model_fields.items():
                for variable in env_names(name, info):
                    if os.environ.get(variable):
                        values[name] = os.environ[variable]
                        break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def db_path(self) -> Path:
        return self.home / "sessions.db"
