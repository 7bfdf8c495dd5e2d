"""Where the CLIs' native binaries are: installed once, at pinned versions, by `scripts/install-cli-agents.sh`
into the server's CLI cache folder; never downloaded when a session starts.

A sandbox sees a binary as a read-only host file (`SandboxSpec.mounts`): the docker driver binds it into
the container, the local driver links it from the sandbox folder. Keep PINNED in step with the script.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INSTALL_SCRIPT = "scripts/install-cli-agents.sh"


@dataclass(frozen=True)
class Pinned:
    package: str
    version: str
    binary: str
    """The native binary, relative to the install folder."""


PINNED = {
    "claude-code": Pinned("@anthropic-ai/claude-code", "2.1.197", "node_modules/@anthropic-ai/claude-code-linux-x64/claude"),
    "codex": Pinned(
        "@openai/codex", "0.171.0", "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
    ),
    "opencode": Pinned("opencode-ai", "1.18.33", "node_modules/opencode-linux-x64/bin/opencode"),
}


def default_dir() -> Path:
    """The script's default folder: `$XDG_CACHE_HOME/mcp-sessions/cli-agents` (else under ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcp-sessions" / "cli-agents"


def binary(folder: Path, name: str) -> Path:
    """The installed binary of the CLI `name`. Raises ValueError with a sentence naming the script if it is
    not installed (create_session fails with it)."""
    pin = PINNED[name]
    install = folder / f"{name}-{pin.version}"
    path = install / pin.binary
    if not (install / ".complete").is_file() or not os.access(path, os.X_OK):
        raise ValueError(
            f"The {name} agent needs {pin.package} {pin.version}, which is not installed in {folder}: run "
            f"`bash {INSTALL_SCRIPT} {name}` on the server (MCP_SESSIONS_CLI_AGENTS_DIR sets the folder), then create the session again."
        )
    return path
