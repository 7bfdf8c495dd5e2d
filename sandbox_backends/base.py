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

Some drivers can do more than this contract; each extra is an optional protocol below, which the
session layer checks with `isinstance` and never by a driver's name: `MessageSandbox` (the platform
runs its own agent and answers messages), `ChecksSpec` (refuses a spec before anything is made),
`MirrorSource` (shows sessions that run elsewhere, read-only), `MeasuresDisk` (a workspace limit that no
filesystem enforces, measured instead), `OpensStreams` (TCP connections to and from the sandbox's loopback),
`ListsFiles` (lists a workspace folder), `OpensTerminal` (a person's interactive shell), `Pauses` (stops
and comes back with its workspace and shell state), `Forks` (copies a sandbox),
`Checkpoints` (keeps copies of a workspace to go back to). How a driver is found and configured:
`registry.py`. What every driver must pass: `tests/driver_conformance.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import anyio
import anyio.abc


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


class PortClosed(SandboxError):
    """Nothing listens on the port inside the sandbox that a connection was asked for."""


class NotRegularFile(SandboxError):
    """A workspace path to read or write is a FIFO, a socket or a device: only regular files are used."""


class FileTooBig(SandboxError):
    """A workspace file is larger than the read may take."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox. Drivers that cannot enforce a limit say so in `describe()`.

    `disk_mb` is the workspace's size; None means the driver's default (which may be no limit).
    """

    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 512
    tmp_mb: int = 256
    disk_mb: int | None = None


Isolation = Literal["runc", "gvisor", "plain", "bwrap"]
"""The `isolation` create option, one type for every driver that takes it (a create option has one type
across plugins): the docker driver takes "runc" (containers on the host's kernel) and "gvisor" (the runsc
runtime, a kernel in user space), the local driver "plain" (no isolation) and "bwrap" (bubblewrap).
Each driver's options model refuses the others' values with `isolation_refused`."""


def isolation_refused(driver: str, given: str | None, takes: tuple[str, ...]) -> str | None:
    """Why `driver` cannot take `isolation=given`, in a sentence naming what it takes; None if it can."""
    if given is None or given in takes:
        return None
    return f"the {driver} driver takes isolation {' or '.join(repr(t) for t in takes)}, not {given!r}"


@dataclass(frozen=True)
class SandboxSpec:
    """What to make. `name` is unique per server (the session id); drivers use it to find the sandbox again.

    `title`, `tags` and `model` are what the caller asked of the session, for drivers whose platform keeps
    them (a remote platform); `options` are the driver's own create options, as its options model
    (`DriverPlugin.options`) validated them, e.g. `{"remote": "prod"}`.
    """

    name: str
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    network: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    title: str | None = None
    tags: tuple[str, ...] = ()
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)
    """Host files the sandbox's commands see read-only, by name -> host path (a CLI's binary), each at
    `$MCP_SESSIONS_MOUNTS/<name>` (the variable is set in every command's environment when there are any)."""


MOUNTS_ENV = "MCP_SESSIONS_MOUNTS"


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
    failure: str | None = None
    """Why the command failed beyond its exit code, when the driver knows: e.g. "out of memory: ..." when the
    kernel killed one of its processes at the sandbox's memory limit. The sandbox itself stays usable."""


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

        The `exec` that started it returns normally with `interrupted=True`. With no command running, stop
        what earlier commands left running (background jobs, which may hold the sandbox's limits).
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

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
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


# -- optional protocols: what some drivers can do beyond the contract ------------------------------

AgentEvent = dict[str, Any]
"""What `MessageSandbox.send` yields, in the session layer's vocabulary:
- `{"kind": "text", "text"}`: assistant text as it is written;
- `{"kind": "tool.started" | "tool.completed", "data": {...}}`: a tool call on the platform;
- `{"kind": "output", "text"}`: output of a running tool;
- `{"kind": "end", "status": completed|failed|interrupted, "reason", "content": [blocks], "output",
  "exit_code", "usage": {...}, "model", "messages": [{"role", "content"}]}`: the turn is over (always last)."""


@runtime_checkable
class MessageSandbox(Protocol):
    """A sandbox whose platform runs its own agent (brain and hands remote): it answers messages."""

    def send(self, text: str) -> AsyncIterator[AgentEvent]:
        """Start a turn with `text` and yield what happens; the last event is `{"kind": "end", ...}`."""
        ...


@dataclass(frozen=True)
class DiskUse:
    """How much a workspace holds against its limit, as a `MeasuresDisk` sandbox measured it just now."""

    used_mb: int
    limit_mb: int
    unreadable: str | None = None
    """A path in the workspace that could not be measured (a folder its owner made unreadable): the use is
    unknown, and counts as over the limit, since that is how a command would hide what it wrote."""

    def over(self) -> str | None:
        """Why the workspace is over its limit, in words for the caller, or None while it is within it."""
        if self.unreadable is not None:
            return (
                f"the workspace cannot be measured against its {self.limit_mb} MiB limit: '{self.unreadable}' is not "
                "readable; make it readable (chmod -R u+rwX) or delete it, then send the next message"
            )
        if self.used_mb > self.limit_mb:
            return (
                f"the workspace is over its {self.limit_mb} MiB limit ({self.used_mb} MiB used): "
                "delete files, then send the next message"
            )
        return None


@runtime_checkable
class MeasuresDisk(Protocol):
    """A sandbox whose workspace limit no filesystem enforces: the session layer measures it while a turn
    runs and when it ends, and fails the turn that passes the limit; the next turn can delete files."""

    async def disk_use(self) -> DiskUse | None:
        """The workspace's use now, or None if there is nothing to measure (no limit, or a filesystem of the
        workspace's own enforces it). May take a while on a large workspace; raises `SandboxError` if the
        sandbox cannot be reached."""
        ...


EntryKind = Literal["file", "folder", "symlink", "other"]


@dataclass(frozen=True)
class FolderEntry:
    """One entry of a workspace folder, as `lstat` sees it: a symlink is listed as one, never followed."""

    name: str
    kind: EntryKind
    size: int
    """Bytes, for a file (a symlink: the length of its target's path; a folder: what its filesystem says)."""
    mtime: float
    """Seconds since the epoch."""


@dataclass(frozen=True)
class FolderListing:
    """A workspace folder's entries, sorted by name, at most the count asked for; `more` is how many were left
    out (at least that many when `more_exact` is False: a huge folder is not counted to its end)."""

    path: str
    """The folder relative to the workspace ("" for the workspace itself)."""
    entries: list[FolderEntry]
    more: int = 0
    more_exact: bool = True


MAX_LISTED = 500
"""The most entries a listing carries; past it the listing says how many more there are."""
LIST_SCAN_LIMIT = 100_000
"""The most names of one folder read to sort them; a folder larger than this is listed in part, its rest counted
as "at least"."""


def shown_name(name: str) -> str:
    """`name` as valid UTF-8 text: bytes that were not (lone surrogates) become U+FFFD."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return name.encode("utf-8", "replace").decode("utf-8")


def listing_of(path: str, named: list[Any], counted: int, counted_all: bool) -> FolderListing:
    """A `FolderListing` of `[name, kind, size, mtime]` entries out of `counted` names, shared by the drivers so each
    shows a name alike: one that is not UTF-8 (a lone surrogate from os.scandir) gets U+FFFD for its odd bytes."""
    entries = [FolderEntry(shown_name(name), kind, size, mtime) for name, kind, size, mtime in named]
    return FolderListing(path, entries, more=max(0, counted - len(entries)), more_exact=counted_all)


@runtime_checkable
class ListsFiles(Protocol):
    """A sandbox that can list a workspace folder without running a command in its shell (which may be busy)."""

    async def list_files(self, path: str, max_entries: int = MAX_LISTED) -> FolderListing:
        """The entries of the folder `path` (relative, or absolute under the workspace; "" or "." is the workspace),
        resolved inside the sandbox with the sandbox user's rights, its symlinks never followed out of the
        workspace. Raises `PathNotAllowed` for a path that leads out, `FileNotFoundError` if it does not exist,
        `NotADirectoryError` if it is a file (or a FIFO, socket, device: never opened), `SandboxError` otherwise."""
        ...


class Terminal(Protocol):
    """An interactive bash on a PTY in the sandbox, as the sandbox user, for a person at a keyboard."""

    exit_code: int | None
    """How its bash ended, once it has (None before, or if that is unknown)."""
    state_saved: bool
    """Whether its bash saved its state (cwd, exported variables, functions, aliases) for the next command."""

    async def read(self) -> bytes:
        """The next output, as it comes; b"" once the terminal has ended."""
        ...

    async def write(self, data: bytes) -> None:
        """Keys typed (bytes as a terminal sends them)."""
        ...

    async def resize(self, rows: int, cols: int) -> None: ...


@runtime_checkable
class OpensTerminal(Protocol):
    """A sandbox a person can take the keyboard of while no command runs."""

    def open_terminal(self, rows: int, cols: int) -> AbstractAsyncContextManager[Terminal]:
        """A terminal in the shell's cwd with its environment (the state the last command left), whose state is
        saved back when its bash exits; leaving the context hangs it up and waits for that. Raises
        `SandboxBusy` while a command runs; commands are refused while it is open."""
        ...


@runtime_checkable
class RemovesLeftovers(Protocol):
    """A driver whose closed sandboxes leave something behind (docker: the workspace volume), which a later
    delete must still reach although the sandbox itself can no longer be attached."""

    async def remove_leftovers(self, sandbox_id: str, described: Mapping[str, object]) -> None:
        """Remove what the sandbox `sandbox_id` left, found from what it said of itself (`Sandbox.describe()`).
        Only what this driver made may be removed, whatever `described` says."""
        ...


@runtime_checkable
class ClosesPaused(Protocol):
    """A driver whose paused sandboxes can be closed where they lie: attaching one (the way to close a sandbox
    otherwise) would run it again first, only to remove it."""

    async def close_paused(self, sandbox_id: str, spec: SandboxSpec, *, delete: bool) -> None:
        """Remove the paused sandbox `sandbox_id` of `spec` without running it (`delete`: its workspace too, else
        the workspace stays as a close leaves it). Raises SandboxNotFound if it is gone or is not `spec`'s."""
        ...


StreamHandler = Callable[[anyio.abc.ByteStream], Awaitable[None]]
"""What serves one connection a process in a sandbox makes to a port served into it."""


@runtime_checkable
class OpensStreams(Protocol):
    """Byte streams between the server and 127.0.0.1 inside the sandbox, which needs no network interface
    for them (the docker driver relays them through its control shell: `sandbox_backends.control.streams`)."""

    async def connect_inside(self, port: int) -> anyio.abc.ByteStream:
        """A TCP connection to 127.0.0.1:`port` inside the sandbox. Raises `PortClosed` if nothing listens
        there, `SandboxError` for any other failure."""
        ...

    async def serve_inside(
        self, port: int, handler: StreamHandler, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1:`port` inside the sandbox (0: any free port) and run `handler` in the server,
        with a stream, for every connection a process there makes; run with `await tg.start(...)`, which
        returns "127.0.0.1:PORT" as seen inside (for HTTP_PROXY, say). Serves until the sandbox closes or
        the task is cancelled, which ends the listener and the connections it accepted."""
        ...


@runtime_checkable
class Pauses(Protocol):
    """A sandbox that can stop everything it runs and free what it holds but its workspace, then come back:
    `Driver.attach` (by this process or, after a restart, another), then `resume` with what `pause` gave."""

    async def pause(self) -> bytes:
        """Stop every process and free the sandbox's compute, keeping the workspace; return what `resume` needs
        to give the shell back its state (cwd, exported variables, functions, aliases), opaque to the caller,
        who keeps it. Only for a sandbox with no command running. This object is not used again."""
        ...

    async def resume(self, saved: bytes) -> None:
        """Give a sandbox attached again after `pause` the state `pause` returned."""
        ...


@runtime_checkable
class Forks(Protocol):
    """A driver that can copy a sandbox: a new one with the same workspace and shell state."""

    async def fork(
        self, source: Sandbox, spec: SandboxSpec, on_phase: PhaseCallback | None = None, at: tuple[str, bytes] | None = None
    ) -> Sandbox:
        """Make a sandbox for `spec` whose workspace is a copy of `source`'s and whose first command starts where
        `source`'s last finished command left the shell (cwd, exported variables, functions, aliases). `source`
        is not stopped: a command running in it goes on, and what it writes during the copy may or may not be
        in the copy. With `at` (a checkpoint's key and shell state, for a driver that also `Checkpoints`), the
        copy is of that checkpoint instead. Raises `SandboxError` saying why (the copy does not fit, say)."""
        ...


@runtime_checkable
class Checkpoints(Protocol):
    """A driver that keeps named copies of a sandbox's workspace and shell state, to go back to later.

    A checkpoint is the driver's, found by the sandbox's name and a key (letters, digits, '-'): it outlives
    the sandbox object and the server, and goes when dropped or when the sandbox is deleted."""

    async def checkpoint(self, sandbox: Sandbox, key: str) -> tuple[int, bytes]:
        """Copy the workspace (while it may be in use) and return (MiB it holds, the shell state then)."""
        ...

    async def restore(self, sandbox: Sandbox, key: str, state: bytes) -> None:
        """Make the workspace what checkpoint `key` holds (anything since is gone) and `state` the shell's."""
        ...

    async def drop_checkpoint(self, name: str, key: str) -> None:
        """Remove checkpoint `key` of the sandbox named `name`; one already gone is fine."""
        ...


@runtime_checkable
class ChecksSpec(Protocol):
    """A driver that can tell, before anything is made, that it cannot serve a spec."""

    def check(self, spec: SandboxSpec) -> None:
        """Raise `ValueError` with a sentence for the caller (what is wrong, what to do) if `spec` cannot work."""
        ...


@dataclass
class ForeignMessage:
    """One message of a mirrored session: role `user|assistant|tool|system`, content blocks as dicts
    (`{"type": "text", "text"}`, `tool_use`, `tool_result`), when it was written."""

    role: Literal["user", "assistant", "tool", "system"]
    content: list[dict[str, Any]]
    created_at: datetime | None = None


@dataclass
class ForeignSession:
    """A session that runs elsewhere and can only be read, as a mirror source reports it.

    `messages` is None when the source only listed the session (no conversation read), else the whole
    conversation so far, oldest first, the same list each time (so new ones are those past the count seen).
    """

    key: str
    """Stable and unique per source, e.g. the platform's session id."""
    status: Literal["busy", "dead", "failed"]
    reason: str | None = None
    """Why it ended (`dead`: "completed on X"; `failed`: the platform's error). For `failed`, None when the source
    does not say why (a list that leaves errors out): the mirror keeps the reason it knows, or reads the session
    (`get_mirrored`) once to learn it."""
    title: str | None = None
    model: str | None = None
    workspace: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    """Any of input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, total_tokens, cost_usd,
    cost_by_model; what is missing keeps its last known value."""
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[ForeignMessage] | None = None


@dataclass(frozen=True)
class MirroredSource:
    """One place a `MirrorSource` driver mirrors sessions from (a configured read-only platform)."""

    name: str
    """Unique within the driver; becomes a tag of every session mirrored from it."""
    tags: tuple[str, ...]
    describe: dict[str, Any]
    """Shown as each mirrored session's `sandbox` (with `remote_session_id` and `read_only` added)."""
    read_only_reason: str
    """Why these sessions cannot be driven here, and what to use instead; shown to callers who try. `{session}` and
    `{key}` in it stand for the session's id here and its key at the source."""
    poll_s: float = 30.0
    owner: str | None = None


@runtime_checkable
class MirrorSource(Protocol):
    """A driver that shows sessions run by someone else (a read-only platform's own workflows)."""

    def mirrored_sources(self) -> list[MirroredSource]:
        """The sources to follow; may be empty."""
        ...

    def list_mirrored(self, source: str) -> AsyncIterator[list[ForeignSession]]:
        """The source's sessions, newest first, one page at a time (without their messages)."""
        ...

    async def get_mirrored(self, source: str, key: str) -> ForeignSession:
        """One session with its whole conversation, asked once (someone is waiting: no long retries). Raises
        `SandboxNotFound` if the source no longer has it, `SandboxError` if it cannot be read now."""
        ...
