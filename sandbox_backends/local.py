"""The `local` driver: a folder per sandbox on this machine, commands run by the server's own user.

Zero set-up. Plainly (`isolation="plain"`, the default) there is no isolation: a command can read and
write whatever the server's user can. With `isolation="bwrap"` the runner runs inside bubblewrap: no
network (only `lo`), the host's filesystem read-only, a `/tmp` of its own, its own process, IPC, UTS and
user namespaces, and its sandbox folder the only writable place; `interrupt` or the runner's end takes
every process of it (they die with the namespace's first process). Use the docker driver for untrusted
work all the same: bwrap shares the host's kernel and, here, sets no memory, CPU or process limits.
Layout under the driver's root:

    <root>/<name>/workspace/   the commands' starting cwd, and what file resources read
    <root>/<name>/.shell/      the runner's state: saved shell state, per-run script, output, exit code
    <root>/<name>/tmp/         the sandbox's /tmp, with isolation="bwrap"
    <root>/<name>/mounts/      links to the host files of `SandboxSpec.mounts` ($MCP_SESSIONS_MOUNTS)

Commands run in a long-lived runner (`control/runner.py`), a child of the server in a session of its
own, fed run ids on a pipe. If the server dies, the runner finishes its command, writes the result and exits.

The workspace's size limit (`Limits.disk_mb`, else the server's default) is measured, not enforced: the
workspace is a plain folder on the server's disk, so the session layer asks `disk_use()` while a turn
runs and when it ends, and fails the turn that passed the limit. Memory, CPU and process limits do not apply.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.abc
from pydantic import BaseModel, Field, field_validator, model_validator

from . import local_fork
from .base import (
    MAX_LISTED,
    MOUNTS_ENV,
    ClosesOnExit,
    DiskUse,
    ExecResult,
    FailureCallback,
    FolderListing,
    Isolation,
    Limits,
    OutputCallback,
    PhaseCallback,
    SandboxBusy,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
    StreamHandler,
    isolation_refused,
)
from .bwrap import bwrap_argv
from .control.runner import (
    NEW_STATE_FILE,
    PID_FILE,
    RUNNER,
    RUNNER_FILE,
    interrupted_file,
    output_file,
    promote_state,
    rc_file,
    read_rc,
    script_file,
    state_identity,
    state_whole,
)
from .disk import check_disk_mb, measure
from .local_mounts import MOUNTS_DIR, link_mounts
from .local_processes import MARKER_ENV, alive, kill_marked, stop_process_group
from .local_shell import RunnerShell
from .local_streams import LoopbackStreams
from .local_terminal import LocalTerminal, open_pty_terminal
from .output import OutputBuffer
from .registry import DriverContext, DriverPlugin
from .regular_files import list_folder, read_regular, resolve_inside, write_regular

PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR")
"""Server variables a local command sees. Everything else, API keys included, stays out."""

READ_CHUNK = 1 << 20


class LocalSandbox(ClosesOnExit):
    """A workspace folder and a shell runner on this machine; `isolation` "bwrap" runs the runner in bubblewrap."""

    def __init__(
        self, name: str, base: Path, env: dict[str, str], limits: Limits, isolation: str = "plain", hidden: Path | None = None
    ) -> None:
        self._isolation = isolation
        self._hidden = hidden or base.parent
        self._name = name
        self._base = base
        self._ws = base / "workspace"
        self._state = base / ".shell"
        self._env = env
        self._limits = limits
        self._running = False
        self._shell: RunnerShell | None = None
        self._streams = LoopbackStreams(name, isolation)

    @property
    def id(self) -> str:
        return self._name

    @property
    def workspace(self) -> str:
        return str(self._ws)

    def describe(self) -> dict[str, object]:
        limit = self._limits.disk_mb
        return {
            "driver": "local",
            "id": self._name,
            "workspace": str(self._ws),
            "isolation": self._isolation,
            "network": "none (only lo)" if self._isolation == "bwrap" else "host (no isolation)",
            "limits": "memory, CPU and processes are not limited by the local driver",
            "disk": {"limit_mb": limit, "mode": "none"}
            if limit is None
            else {
                "limit_mb": limit,
                "mode": "measured",
                "how": "measured while a turn runs and when it ends: the turn that passes the limit fails",
                "why": "a local workspace is a folder on the server's own disk",
            },
        }

    async def disk_use(self) -> DiskUse | None:
        """The workspace folder's use against its limit (a walk of it)."""
        limit = self._limits.disk_mb
        if limit is None:
            return None
        return await measure(self._ws, limit)

    # -- commands -------------------------------------------------------------------------------

    def _current_run(self) -> tuple[int, str] | None:
        try:
            pid, run_id = (self._state / PID_FILE).read_text().split()
            return int(pid), run_id
        except (FileNotFoundError, ValueError):
            return None

    def _active(self, current: tuple[int, str] | None) -> bool:
        """Running: no exit code yet, its output not cleaned up, and its runner alive (runners outlive runs)."""
        if current is None:
            return False
        pid, run_id = current
        rc, out = self._state / rc_file(run_id), self._state / output_file(run_id)
        return read_rc(rc) is None and out.exists() and alive(pid)

    async def _take_shell(self) -> RunnerShell:
        """This object's runner while the saved state is the one it left, else a new one (it restores the file)."""
        shell = self._shell
        if shell is not None:
            if shell.proc.returncode is None and shell.state is not None and shell.state == state_identity(self._state):
                return shell
            self._shell = None
            await shell.aclose()
        wrap = bwrap_argv(self._base, self._hidden) if self._isolation == "bwrap" else []
        self._shell = await RunnerShell.start(
            [*wrap, "bash", "--noprofile", "--norc", str(self._state / RUNNER_FILE), str(self._state)], self._ws, self._env
        )
        return self._shell

    async def _hand(self, run_id: str) -> RunnerShell:
        """Give the run to a runner: this object's own, or a new one if that one has gone."""
        for attempt in (0, 1):
            shell = await self._take_shell()
            (self._state / PID_FILE).write_text(f"{shell.proc.pid} {run_id}\n")
            try:
                shell.send(run_id)
                return shell
            except OSError:
                shell.state = None  # it died idle: the next one restores the saved state
                if attempt:
                    raise SandboxError("Cannot start the command: the shell exited at once.") from None
        raise AssertionError("unreachable")

    async def exec(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = 65536,
    ) -> ExecResult:
        current = self._current_run()
        if self._running or self._active(current):
            raise SandboxBusy("A command is already running in this sandbox.")
        if not self._ws.is_dir():
            raise SandboxNotFound(f"The workspace {self._ws} no longer exists.")
        if current is not None:  # finished, not cleaned up (its server died): its state goes in force first
            self._cleanup(current[1])
        run_id = "r" + secrets.token_hex(6)
        (self._state / script_file(run_id)).write_text(script)
        (self._state / output_file(run_id)).touch()
        self._running = True
        started = time.monotonic()
        try:
            try:
                shell = await self._hand(run_id)
            except BaseException:
                self._cleanup(run_id)
                raise
            result = await self._follow(shell, run_id, started, timeout_s, on_output, max_output_bytes)
        finally:
            self._running = False
        return result

    async def _follow(
        self,
        shell: RunnerShell,
        run_id: str,
        started: float,
        timeout_s: float | None,
        on_output: OutputCallback | None,
        max_output_bytes: int,
    ) -> ExecResult:
        buf = OutputBuffer(max_output_bytes)
        timed_out = False
        pid = shell.proc.pid
        with open(self._state / output_file(run_id), "rb") as out:

            async def pump() -> None:
                while chunk := out.read(READ_CHUNK):
                    buf.feed(chunk)
                    if on_output is not None:
                        await on_output(chunk)

            try:
                with anyio.move_on_after(timeout_s) as deadline:
                    await shell.wait_done(run_id, tick=pump)
                if deadline.cancelled_caught:
                    timed_out = True
                    await self._stop(pid)
                    await shell.wait_done(run_id)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._stop(pid)
                    await shell.wait_done(run_id)
                    self._cleanup(run_id)
                raise
            await pump()
        exit_code = read_rc(self._state / rc_file(run_id))
        if exit_code is None and shell.done != run_id:
            # The runner went with the command (an interrupt stops it too): its end of the pipe closes
            # before its process is reaped, and bwrap's after its child, so its status may be moments away.
            await shell.wait_exit()
        code = shell.proc.returncode
        if exit_code is None and code is not None:
            exit_code = 128 - code if code < 0 else code
        # Back at its loop with the state saved: the next command may run in it while that state is in force.
        back = shell.done == run_id and state_whole(self._state)
        shell.state = state_identity(self._state, NEW_STATE_FILE) if back else None
        interrupted = (self._state / interrupted_file(run_id)).exists()
        self._cleanup(run_id)
        return buf.result(
            exit_code,
            round(time.monotonic() - started, 3),
            timed_out=timed_out,
            interrupted=interrupted and not timed_out,
        )

    def _cleanup(self, run_id: str) -> None:
        """Put the run's state in force and remove its files; the output before the exit code (see `_active`).
        Once a later run is current, its start has promoted this run's state, and the state being written is
        the later run's: it is left alone."""
        current = self._current_run()
        if current is None or current[1] == run_id:
            promote_state(self._state)
            (self._state / PID_FILE).unlink(missing_ok=True)
        for name in (output_file(run_id), rc_file(run_id), script_file(run_id), interrupted_file(run_id)):
            (self._state / name).unlink(missing_ok=True)

    async def interrupt(self) -> bool:
        current = self._current_run()
        if current is None or not self._active(current):
            # What earlier commands left running goes, and the idle runner with it (its jobs are its children,
            # in its process group): the next command starts another, which restores the saved state.
            shell, self._shell = self._shell, None
            kill_marked(self._name)
            if shell is not None:
                await shell.aclose()
            return False
        (self._state / interrupted_file(current[1])).touch()
        await self._stop(current[0])
        return True

    async def _stop(self, pgid: int) -> None:
        """Stop a command's process group, then whatever else runs in this sandbox (`setsid` escapees too)."""
        await stop_process_group(pgid)
        kill_marked(self._name)

    async def take_over(self) -> ExecResult | None:
        current = self._current_run()
        if current is None:
            return None
        pid, run_id = current
        was_running = self._active(current)
        if was_running:
            await self._stop(pid)
        buf = OutputBuffer(65536)
        try:
            with open(self._state / output_file(run_id), "rb") as out:
                while chunk := out.read(READ_CHUNK):
                    buf.feed(chunk)
        except FileNotFoundError:
            pass
        exit_code = read_rc(self._state / rc_file(run_id))
        self._cleanup(run_id)
        return buf.result(exit_code, 0.0, interrupted=was_running or exit_code is None)

    # -- files ----------------------------------------------------------------------------------

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        return await read_regular(resolve_inside(self._ws, path), path, max_bytes)

    async def list_files(self, path: str, max_entries: int = MAX_LISTED) -> FolderListing:
        return await list_folder(resolve_inside(self._ws, path or "."), self._ws, path, max_entries)

    @asynccontextmanager
    async def open_terminal(self, rows: int, cols: int) -> AsyncIterator[LocalTerminal]:
        current = self._current_run()
        if self._running or self._active(current):
            raise SandboxBusy("A command is running in this sandbox. Wait for it to end, or interrupt it.")
        if current is not None:  # finished, not cleaned up: its state goes in force first
            self._cleanup(current[1])
        wrap = bwrap_argv(self._base, self._hidden) if self._isolation == "bwrap" else []
        self._running = True  # commands wait for the person to leave
        try:
            async with open_pty_terminal(wrap, self._ws, self._env, self._state, rows, cols) as terminal:
                yield terminal
        finally:
            self._running = False

    async def write_file(self, path: str, data: bytes) -> None:
        await write_regular(resolve_inside(self._ws, path), path, data)

    # -- byte streams (OpensStreams): the host's loopback, see local_streams -----------------------

    async def connect_inside(self, port: int) -> anyio.abc.ByteStream:
        return await self._streams.connect(port)

    async def serve_inside(
        self, port: int, handler: StreamHandler, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._streams.serve(port, handler, task_status=task_status)

    # -- life -----------------------------------------------------------------------------------

    async def disconnect(self) -> None:
        """Let go of the runner: idle, it exits; running a command, it finishes it and records the result."""
        shell, self._shell = self._shell, None
        if shell is not None:
            await shell.aclose()

    async def pause(self) -> bytes:
        """Stop its processes and its runner; the workspace and the saved shell state stay in the folder."""
        await self.close()
        return b""

    async def resume(self, saved: bytes) -> None:
        """Nothing to give back: the next command's runner restores the state the folder kept."""

    async def close(self, *, delete: bool = False) -> None:
        self._streams.close()
        await self.interrupt()
        await self.disconnect()
        kill_marked(self._name)
        if delete and self._base.exists():
            await anyio.to_thread.run_sync(shutil.rmtree, self._base, True)


class LocalDriver(local_fork.LocalCopies):
    """Makes `LocalSandbox`es under `root`. `default_disk_mb` is the workspace limit of specs that ask for none
    (None: no limit), `max_disk_mb` the most one may ask for; `hidden` is what a bwrap sandbox must not see
    (default `root`; the server passes its whole state folder)."""

    name = "local"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        default_disk_mb: int | None = None,
        max_disk_mb: int | None = None,
        hidden: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.hidden = Path(hidden) if hidden is not None else self.root
        self.default_disk_mb = default_disk_mb
        self.max_disk_mb = max_disk_mb
        self._sandboxes: weakref.WeakSet[LocalSandbox] = weakref.WeakSet()

    def _limits(self, spec: SandboxSpec) -> Limits:
        disk = spec.limits.disk_mb if spec.limits.disk_mb is not None else self.default_disk_mb
        return replace(spec.limits, disk_mb=disk)

    def check(self, spec: SandboxSpec) -> None:
        """Refuse a workspace size outside this server's range, or bwrap where it is not installed, before
        anything is made."""
        check_disk_mb(self._limits(spec).disk_mb, self.max_disk_mb)
        if spec.options.get("isolation") == "bwrap":
            try:
                bwrap_argv(self.root / spec.name, self.hidden)
            except SandboxError as e:
                raise ValueError(str(e)) from None

    def _env(self, spec: SandboxSpec) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(spec.env)
        env[MARKER_ENV] = spec.name
        if spec.mounts:
            env[MOUNTS_ENV] = str(self.root / spec.name / MOUNTS_DIR)
        return env

    def _sandbox(self, spec: SandboxSpec) -> LocalSandbox:
        isolation = spec.options.get("isolation") or "plain"
        sandbox = LocalSandbox(spec.name, self.root / spec.name, self._env(spec), self._limits(spec), isolation, self.hidden)
        self._sandboxes.add(sandbox)
        return sandbox

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> LocalSandbox:
        if not spec.name or "/" in spec.name or spec.name.startswith("."):
            raise SandboxError(f"Invalid sandbox name {spec.name!r}.")
        try:
            self.check(spec)
        except ValueError as e:
            raise SandboxError(str(e)) from None
        if on_phase:
            await on_phase("creating_sandbox", f"folder {self.root / spec.name}")
        sandbox = self._sandbox(spec)
        try:
            sandbox._ws.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise SandboxError(f"A sandbox folder named {spec.name!r} already exists under {self.root}.") from None
        except OSError as e:
            raise SandboxError(f"Cannot make the workspace under {self.root}: {e.strerror}.") from e
        sandbox._state.mkdir()
        (sandbox._base / "tmp").mkdir(mode=0o700)
        (sandbox._state / RUNNER_FILE).write_text(RUNNER)
        link_mounts(sandbox._base / MOUNTS_DIR, spec.mounts)
        return sandbox

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> LocalSandbox:
        sandbox = self._sandbox(spec)
        if sandbox_id != spec.name or not sandbox._ws.is_dir():
            raise SandboxNotFound(f"The workspace folder {sandbox._ws} no longer exists.")
        sandbox._state.mkdir(exist_ok=True)
        (sandbox._base / "tmp").mkdir(mode=0o700, exist_ok=True)
        (sandbox._state / RUNNER_FILE).write_text(RUNNER)
        link_mounts(sandbox._base / MOUNTS_DIR, spec.mounts)
        return sandbox

    async def watch(self, on_failure: FailureCallback) -> None:
        """A folder cannot die on its own; a deleted workspace is noticed by the next command."""
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        for sandbox in list(self._sandboxes):
            await sandbox.disconnect()


class LocalSettings(BaseModel):
    """The local driver's server settings."""

    local_max_disk_mb: int = Field(65536, ge=16, le=1 << 24, description="Largest workspace a local session may ask for, MiB.")
    local_default_disk_mb: int = Field(
        4096, ge=16, le=1 << 24, description="Workspace size of a local session that asks for none, MiB (measured)."
    )

    @model_validator(mode="after")
    def _default_within_maximum(self) -> LocalSettings:
        if self.local_default_disk_mb > self.local_max_disk_mb:
            raise ValueError(
                f"local_default_disk_mb ({self.local_default_disk_mb}) is over local_max_disk_mb ({self.local_max_disk_mb})."
            )
        return self


class LocalOptions(BaseModel):
    """What `create_session` may ask of the local driver."""

    isolation: Isolation | None = Field(None, description="")

    @field_validator("isolation")
    @classmethod
    def _own(cls, value: str | None) -> str | None:
        if refused := isolation_refused("local", value, ("plain", "bwrap")):
            raise ValueError(refused)
        return value


def _make(settings: object, context: DriverContext) -> LocalDriver:
    s = settings if isinstance(settings, LocalSettings) else LocalSettings()
    return LocalDriver(
        context.home / "workspaces",
        default_disk_mb=s.local_default_disk_mb,
        max_disk_mb=s.local_max_disk_mb,
        hidden=context.home,
    )


plugin = DriverPlugin(
    name="local",
    make=_make,
    summary="a folder and a bash shell per session on this machine (no isolation)",
    settings=LocalSettings,
    options=LocalOptions,
)
