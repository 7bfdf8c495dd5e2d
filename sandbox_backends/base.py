"""The cut-off between sessions and the places where work runs.

A driver makes sandboxes; a sandbox runs shell commands and holds files. The session layer talks to
these two protocols only, the way an HTTP client talks to a transport: it never learns what a
sandbox id means or how a command reaches its shell. This module imports nothing from
`mcp_sessions` or `mcp`.

Shell semantics every driver provides:
- one command at a time per sandbox, run by bash in its own process group;
- `cd`, exported variables, functions and aliases carry from one command to the next
  (shell options such as `set -e` deliberately do not);
- stdout and stderr are merged, in order, into one stream;
- cancelling `exec` stops the command and everything it started (SIGINT, then SIGTERM, then
  SIGKILL to the process group) before the cancellation propagates;
- the state a command leaves lives with the sandbox, so a sandbox re-attached by another server
  process (after a restart) keeps the shell's cwd and environment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable


class SandboxError(Exception):
    """A sandbox operation failed. The message is written for the person who has to act on it."""


class SandboxNotFound(SandboxError):
    """The sandbox no longer exists (removed, or never made)."""


class SandboxRestarted(SandboxError):
    """The sandbox restarted under a running command (its engine restarted, say): the command is gone, the
    sandbox works again with its workspace files. The message says what was reset."""


class SandboxBusy(SandboxError):
    """A command is already running in this sandbox."""


class PathNotAllowed(SandboxError):
    """A file path points outside the sandbox's workspace."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox. Drivers that cannot enforce a limit say so in `describe()`."""

    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 512
    tmp_mb: int = 256


@dataclass(frozen=True)
class SandboxSpec:
    """What to make. `name` is unique per server (the session id); drivers use it to find the sandbox again."""

    name: str
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    network: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ExecResult:
    """The outcome of one command. `output` keeps the head and the tail; `cut_bytes` says how much of the middle went."""

    exit_code: int | None
    output: str
    output_bytes: int
    cut_bytes: int
    duration_s: float
    timed_out: bool = False
    interrupted: bool = False


OutputCallback = Callable[[bytes], Awaitable[None]]
PhaseCallback = Callable[[str, str], Awaitable[None]]
"""Called as `(phase, detail)` while a sandbox is being made, e.g. `("starting", "container abc123")`."""
FailureCallback = Callable[[str, str], Awaitable[None]]
"""Called as `(sandbox_name, reason)` when a sandbox dies, e.g. `("ses_...", "oom killed")`."""


@runtime_checkable
class Sandbox(Protocol):
    """One isolated place to run commands and keep files. Use as an async context manager or call `close()`."""

    @property
    def id(self) -> str:
        """The driver's handle, stored by the caller and given back to `Driver.attach` after a restart."""
        ...

    @property
    def workspace(self) -> str:
        """The workspace path as commands inside the sandbox see it (their starting cwd)."""
        ...

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for users: limits in force, network, image or folder."""
        ...

    async def exec(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = 65536,
    ) -> ExecResult:
        """Run a bash script in the sandbox's shell and wait for it.

        Output is streamed to `on_output` as it appears. On `timeout_s` the command is stopped and the
        result has `timed_out=True`. Raises `SandboxBusy` if a command is already running.
        """
        ...

    async def interrupt(self) -> bool:
        """Stop the command running in this sandbox, whichever process started it. True if one was running.

        The `exec` that started it returns normally with `interrupted=True`.
        """
        ...

    async def take_over(self) -> ExecResult | None:
        """Stop a command whose caller is gone (its server died) and return what it produced, or None."""
        ...

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        """Read a workspace file (relative, or absolute under the workspace). Raises `PathNotAllowed`,
        `FileNotFoundError`, or `SandboxError` if it is larger than `max_bytes`."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Write a workspace file, making parent folders. Raises `PathNotAllowed` outside the workspace."""
        ...

    async def close(self, *, delete: bool = False) -> None:
        """Stop every process and free the sandbox. `delete` also removes the workspace. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ClosesOnExit:
    """`async with sandbox:` closes the sandbox on the way out. Sandboxes inherit this."""

    async def close(self, *, delete: bool = False) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@runtime_checkable
class Driver(Protocol):
    """Makes sandboxes of one kind. One instance per server process, closed at shutdown."""

    name: str

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> Sandbox:
        """Make and start a sandbox. Raises `SandboxError` with an actionable message on failure."""
        ...

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> Sandbox:
        """Reconnect to an existing sandbox (after a server restart). Raises `SandboxNotFound` if it is gone."""
        ...

    async def watch(self, on_failure: FailureCallback) -> None:
        """Run until cancelled, reporting sandboxes that die behind the server's back (killed, removed, OOM).

        Reasons are short and actionable: "oom killed", "sandbox exited with code 137", "sandbox removed".
        """
        ...

    async def aclose(self) -> None:
        """Release the driver's own resources. Sandboxes are left running so a restarted server finds them."""
        ...
