"""Server configuration: one model, filled from flags, then `MCP_SESSIONS_*` variables, then defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

ENV_PREFIX = "MCP_SESSIONS_"
STANDARD_ENV = {
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "anthropic_base_url": "ANTHROPIC_BASE_URL",
    "anthropic_api_key": "ANTHROPIC_API_KEY",
}
"""Variables other tools already use; read when the `MCP_SESSIONS_*` one is not set."""


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mcp-sessions"


class Settings(BaseModel):
    home: Path = Field(default_factory=default_home, description="Where state lives: the database and local workspaces.")
    driver: str = Field("local", description="Default sandbox driver for new sessions.")
    agent: str = Field("shell", description="Default agent for new sessions.")
    image: str = Field("mcp-sessions-sandbox:bookworm", description="Default image for the docker driver.")
    docker_pool: int = Field(0, ge=0, le=200, description="Docker containers kept warm for fast creates (0 = off).")
    max_memory_mb: int = Field(8192, ge=64, description="Most memory a docker session may ask for, MiB.")
    max_cpus: float = Field(4.0, gt=0, description="Most CPUs a docker session may ask for.")
    max_pids: int = Field(4096, ge=16, description="Most processes a docker session may ask for.")
    max_tmp_mb: int = Field(4096, ge=1, description="Largest /tmp a docker session may ask for, MiB.")
    command_timeout_s: float = Field(600.0, gt=0, description="Default limit on one command's run time, in seconds.")
    max_command_timeout_s: float = Field(86400.0, gt=0, description="Largest command timeout a caller may ask for.")
    max_output_bytes: int = Field(32768, ge=1024, description="Output kept per turn (head and tail); the rest is cut.")
    max_message_bytes: int = Field(1_000_000, ge=1024, description="Largest message a caller may send, in bytes.")
    max_file_bytes: int = Field(5_000_000, ge=1024, description="Largest file read or written through the server.")
    idle_timeout_s: float = Field(900.0, ge=0, description="Close a session idle this long, in seconds (0 = never).")
    create_timeout_s: float = Field(300.0, gt=0, description="A session still creating after this fails.")
    log_level: str = Field("WARNING", description="Level of the server's own log on stderr.")
    llm_provider: Literal["auto", "openai", "anthropic", "sampling"] = Field(
        "auto", description="Model provider of the llm agent; auto: anthropic with its key, else openai with a key or base URL, else sampling."
    )
    model: str | None = Field(None, description="Default model of the llm agent.")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible API base URL, e.g. http://localhost:11434/v1.")
    openai_api_key: SecretStr | None = Field(None, description="Key for the OpenAI-compatible API.")
    anthropic_base_url: str | None = Field(None, description="Anthropic API base URL.")
    anthropic_api_key: SecretStr | None = Field(None, description="Key for the Anthropic API.")
    price_file: Path | None = Field(None, description="JSON price table that overrides or extends the shipped one.")
    llm_max_steps: int = Field(50, ge=1, le=1000, description="Default most model calls per turn of the llm agent.")
    llm_max_tokens: int = Field(8192, ge=16, description="Most output tokens of one model call.")
    llm_retries: int = Field(2, ge=0, le=10, description="Retries of a model call on 429, 5xx or an unreachable API.")
    host: str = Field("127.0.0.1", description="Address `serve --http` listens on; other than loopback only with tokens.")
    port: int = Field(8765, ge=0, le=65535, description="Port `serve --http` listens on.")
    tokens_file: Path | None = Field(None, description="Bearer tokens for HTTP, one `owner:token` a line.")
    tokens: SecretStr | None = Field(None, description="Bearer tokens for HTTP, `owner:token` pairs separated by commas.")
    max_request_bytes: int = Field(10_000_000, ge=1024, description="Largest HTTP request body; larger ones get 413.")
    max_sessions_per_owner: int = Field(20, ge=0, description="Live sessions one token's owner may have at once (0 = no limit).")
    remotes_file: Path | None = Field(None, description="Remote platforms for driver='remote': JSON (or .toml) name -> {url, dialect, token_env}.")
    remotes: str | None = Field(None, description="Remote platforms as a JSON object, like the remotes file; wins per name.")
    rate_limit_per_s: float = Field(20.0, ge=0, description="HTTP requests per second per owner, bursts of twice that (0 = off).")

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Flags (given as `overrides`, None meaning unset) win over `MCP_SESSIONS_*` variables."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env not in (None, ""):
                values[name] = env
            elif name in STANDARD_ENV and os.environ.get(STANDARD_ENV[name]):
                values[name] = os.environ[STANDARD_ENV[name]]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def db_path(self) -> Path:
        return self.home / "sessions.db"

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"
