"""ControlSandbox: commands and files of one sandbox over its control shell, whatever carries the bytes.

Every driver whose sandboxes run the control shell (docker over a `docker exec`, kubernetes over a pod's
exec websocket) keeps the sandbox contract the same way: a command is a `run` followed to its `exit`
through lost connections, an interrupt is a `stop`, files are `read` and `write`. What differs is how a
new connection is opened (`_reopen`), whether the sandbox restarted under a command (`_restarted_since`)
and the limits named in a failure (`_limit_mb`): a driver's sandbox class provides those, its
description and its closing. Byte streams to and from the sandbox's loopback (`OpensStreams`) go through
a control connection of their own (`streams.py`), opened with `_reopen(shells=False)`.
"""

from __future__ import annotations

import posixpath
import secrets
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc

from ..base import (
    MAX_LISTED,
    ClosesOnExit,
    DiskUse,
    ExecResult,
    FolderListing,
    OutputCallback,
    PathNotAllowed,
    SandboxBusy,
    SandboxError,
    SandboxNotFound,
    SandboxRestarted,
    SandboxSpec,
    StreamHandler,
    listing_of,
)
from ..output import OutputBuffer
from ..regular_files import no_folder, not_a_folder, not_regular, too_big
from .client import Broken, ControlClient, Lost, NoAnswer, Run
from .streams import ControlStream, Streams
from .terminal import ControlTerminal, control_terminal

STOP_TIMEOUT_S = 10.0
"""Upper bound on waiting for a stopped command's last frames (the control shell stops it in about 1 s)."""
FILE_TIMEOUT_S = 10.0
MAX_STATE_BYTES = 16 << 20
"""The most shell state (cwd, variables, functions, aliases) carried out of a sandbox."""
FILE_RATE = 16 << 20
"""A file read or write gets FILE_TIMEOUT_S, plus a second per FILE_RATE bytes it may carry (5 MB: 0.3 s)."""
MEASURE_TIMEOUT_S = 40.0
"""Measuring the workspace: the control shell gives up after 30 s and says so; this only catches a hang."""
TAKE_OVER_OUTPUT = 65536


class Retries:
    """How many lost connections one operation lives through before it fails with the reason.

    A control shell that died is started again up to `tries` times. One that broke the protocol or
    stopped answering (`Broken`) gets one fresh start: a second in a row is not a hiccup but a broken
    image or a sandbox that cannot be trusted, and each costs seconds.
    """

    def __init__(self, tries: int) -> None:
        self.left = tries
        self.broken = 0

    def lost(self, e: Lost) -> None:
        """Count a lost connection; raise the SandboxError to report if the operation should give up."""
        self.left -= 1
        if isinstance(e, Broken):
            self.broken += 1
            if self.broken == 2:
                raise SandboxError(
                    f"The sandbox's control shell misbehaved twice in a row: {e}. The image may be broken or the "
                    "sandbox compromised; close this session and create a new one."
                ) from None
        if self.left <= 0:
            raise SandboxError(
                f"Lost the connection to the sandbox's control shell repeatedly ({e}); is the container running?"
            ) from None


WAY_OUT = "Interrupt the session to kill the processes earlier commands left running, close it,"
"""The way out of a used-up limit, for the reasons `_failure` gives (an interrupt with nothing running
kills what earlier commands left, which is what holds a limit most often)."""


class ControlSandbox(ClosesOnExit):
    """A sandbox reached through its control shell. Subclasses say how to reconnect, describe and close it."""

    def __init__(self, spec: SandboxSpec, workspace: str, conn: ControlClient | None) -> None:
        self._spec = spec
        self._workspace = workspace
        self._conn = conn
        self._conn_lock = anyio.Lock()
        self._running = False
        self._closed = False
        self._streams = Streams(lambda: self._reopen(shells=False), spec.name)

    @property
    def workspace(self) -> str:
        return self._workspace

    @property
    def name(self) -> str:
        return self._spec.name

    # -- what a driver's sandbox provides -----------------------------------------------------------

    async def _reopen(self, *, shells: bool = True) -> ControlClient:
        """A new connection to the sandbox's control shell (the old one is gone), its hello said; with
        `shells=False` one that starts no command shells ahead (for byte streams)."""
        raise NotImplementedError

    def _restarted_since(self, t0: float) -> str | None:
        """Why a command started at `t0` (time.time()) is gone with its files, if the sandbox restarted since."""
        return None

    def _limit_mb(self, name: str) -> int | None:
        """The sandbox's `memory_mb`, `tmp_mb` or `disk_mb` limit in force, for the words of a failure."""
        return None

    async def _disconnect(self) -> None:
        await self._streams.disconnect()
        if self._conn is not None:
            await self._conn.aclose()

    async def _measure(self, limit_mb: int) -> DiskUse:
        """The workspace's use as the control shell measures it, walked with the sandbox user's rights, so
        nothing in the sandbox can forge the figure."""
        if self._closed:
            raise SandboxNotFound(f"The sandbox {self._spec.name} is closed.")
        _kind, msg = await self._request(
            {"op": "measure"},
            timeout=MEASURE_TIMEOUT_S,
            no_answer=f"Measuring the workspace got no answer from the sandbox within {MEASURE_TIMEOUT_S:g} s",
        )
        kb = msg.get("kb")
        if msg.get("error") or not isinstance(kb, int):
            why = msg.get("message") or msg.get("error") or "no size in the answer"
            if msg.get("error") == "timeout":
                why = f"it took over {msg.get('seconds')} s"
            raise SandboxError(f"Cannot measure the workspace: {why}.")
        return DiskUse(used_mb=round(kb / 1024), limit_mb=limit_mb, unreadable=msg.get("unreadable"))

    # -- the connection ----------------------------------------------------------------------

    async def _connection(self) -> ControlClient:
        if self._closed:
            raise SandboxNotFound(f"The sandbox {self._spec.name} is closed.")
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        async with self._conn_lock:
            if self._conn is None or self._conn.lost:
                if self._conn is not None:
                    await self._conn.aclose()
                self._conn = None
                self._conn = await self._reopen()
            return self._conn

    async def _stop(self, *, mark: bool, background: bool = False) -> dict[str, Any]:
        retries = Retries(3)
        while True:
            conn = await self._connection()
            try:
                _kind, msg = await conn.request({"op": "stop", "mark": mark, "background": background}, timeout=STOP_TIMEOUT_S)
            except NoAnswer:
                raise SandboxError(f"The sandbox did not confirm within {STOP_TIMEOUT_S:g} s that the command stopped.") from None
            except Lost as e:
                retries.lost(e)
                continue
            if msg.get("error"):
                raise SandboxError(f"Could not stop the command: {msg.get('message') or msg['error']}")
            return msg

    async def _drive(self, run: Run, buf: OutputBuffer, on_output: OutputCallback | None, *, may_start: bool = True) -> None:
        """Start the run (or resume following it) and read until its exit, reconnecting if the shell dies.

        With `may_start=False` a run that never reached the shell is not started any more.
        """
        retries = Retries(4)
        while True:
            if run.conn is None or run.conn.lost:
                if run.conn is not None and run.req is not None:
                    run.conn.close_request(run.req)
                run.conn = await self._connection()
                run.req = run.conn.open_request("follow" if run.sent else "run")
                try:
                    if run.sent:  # it may have started: pick it up where we are
                        await run.conn.send({"op": "follow", "req": run.req, "run": run.run_id, "offset": run.offset})
                    else:
                        run.sent = True
                        await run.conn.send(
                            {
                                "op": "run",
                                "req": run.req,
                                "run": run.run_id,
                                "script": run.script,
                                "env": self._spec.env,
                            }
                        )
                except Lost as e:
                    retries.lost(e)
                    continue
            assert run.req is not None
            try:
                while True:
                    kind, msg = await run.conn.next(run.req)
                    if kind == "O":
                        run.offset += len(msg)
                        buf.feed(msg)
                        if on_output is not None:
                            await on_output(msg)
                        continue
                    if msg.get("error"):
                        if not run.started:
                            run.refused = True
                        if msg["error"] == "busy":
                            raise SandboxBusy("A command is already running in this sandbox.")
                        raise SandboxError(msg.get("message") or f"The control shell failed: {msg['error']}")
                    ev = msg.get("ev")
                    if ev in ("started", "following"):
                        run.started = True
                    elif ev == "exit":
                        run.exit = msg
                        run.conn.close_request(run.req)
                        return
                    elif ev == "none":
                        if not run.started and may_start:  # the request never reached the shell: start it now
                            retries.lost(Lost("the command never reached the control shell"))
                            run.conn.close_request(run.req)
                            run.conn = None
                            run.sent = False
                            break
                        if run.started and (restarted := self._restarted_since(run.t0)):
                            run.exit = {"rc": None, "interrupted": True}  # its files went with the old state folder
                            run.conn.close_request(run.req)
                            raise SandboxRestarted(restarted)
                        run.exit = {"rc": None, "interrupted": False}
                        run.conn.close_request(run.req)
                        return
            except Lost as e:
                retries.lost(e)

    async def _ack(self, run: Run) -> None:
        conn = run.conn or self._conn
        if conn is not None and not conn.lost:
            try:
                await conn.send({"op": "done", "run": run.run_id})
            except Lost:
                pass

    # -- commands -------------------------------------------------------------------------------

    async def exec(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = 65536,
    ) -> ExecResult:
        if self._running:
            raise SandboxBusy("A command is already running in this sandbox.")
        self._running = True
        try:
            return await self._exec(script, timeout_s, on_output, max_output_bytes)
        finally:
            self._running = False

    async def _exec(
        self, script: str, timeout_s: float | None, on_output: OutputCallback | None, max_output_bytes: int
    ) -> ExecResult:
        run = Run("r" + secrets.token_hex(6), script)
        buf = OutputBuffer(max_output_bytes)
        started = time.monotonic()
        timed_out = False
        try:
            with anyio.move_on_after(timeout_s) as deadline:
                await self._drive(run, buf, on_output)
            if run.exit is None and deadline.cancelled_caught:
                timed_out = True
                await self._stop(mark=False)
                with anyio.fail_after(STOP_TIMEOUT_S):
                    await self._drive(run, buf, on_output)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if run.sent and not run.refused and run.exit is None:
                    with anyio.move_on_after(STOP_TIMEOUT_S):
                        try:
                            await self._stop(mark=False)
                            await self._drive(run, buf, None, may_start=False)
                        except SandboxError:
                            pass
                if run.exit is not None:
                    await self._ack(run)
                if run.conn is not None and run.req is not None:
                    run.conn.close_request(run.req)
            raise
        await self._ack(run)
        assert run.exit is not None
        return buf.result(
            run.exit.get("rc"),
            round(time.monotonic() - started, 3),
            timed_out=timed_out,
            interrupted=bool(run.exit.get("interrupted")) and not timed_out,
            failure=self._failure(run.exit),
        )

    async def interrupt(self) -> bool:
        msg = await self._stop(mark=True, background=True)
        return bool(msg.get("was_running"))

    async def take_over(self) -> ExecResult | None:
        if self._running:
            raise SandboxBusy("This sandbox object is running a command itself; interrupt it instead.")
        self._running = True
        try:
            stopped = await self._stop(mark=True)
            if not stopped.get("run"):
                return None
            run = Run(stopped["run"], "", sent=True, started=True)
            buf = OutputBuffer(TAKE_OVER_OUTPUT)
            with anyio.fail_after(STOP_TIMEOUT_S):
                await self._drive(run, buf, None)
            await self._ack(run)
        finally:
            self._running = False
        assert run.exit is not None
        exit_code = run.exit.get("rc")
        return buf.result(
            exit_code, 0.0, interrupted=bool(stopped.get("was_running")) or exit_code is None, failure=self._failure(run.exit)
        )

    def _failure(self, exit: dict[str, Any]) -> str | None:
        """Why the command failed when a limit of the sandbox's was used up, as the control shell saw it: the
        limit and the way out (the sandbox stays usable). None if none was."""
        exhausted = exit.get("exhausted") or {}
        if exhausted.get("limit") == "pids":
            return (
                f"process limit reached: the sandbox runs {exhausted.get('used')} of its {exhausted.get('max')} processes "
                "(what earlier commands left running counts too) and the command could not start more, so it was "
                f"stopped. {WAY_OUT} or create a session with a larger limits.pids"
            )
        kills = exit.get("oom")
        if isinstance(kills, int) and kills > 0:
            memory = self._limit_mb("memory_mb")
            limit = f"its memory limit of {memory} MiB" if memory else "its memory limit"
            killed = "a process" if kills == 1 else f"{kills} processes"
            return (
                f"out of memory: the sandbox reached {limit} and the kernel killed {killed} while the command ran. "
                f"{WAY_OUT} or create a session with a larger limits.memory_mb"
            )
        for full in exit.get("full") or []:
            if full.get("place") == "tmp":
                size = self._limit_mb("tmp_mb") or full.get("mb")
                return (
                    f"/tmp is full (its limit is {size} MiB): delete files there. {WAY_OUT} or create a session "
                    "with a larger limits.tmp_mb"
                )
            if full.get("place") == "workspace":
                size = self._limit_mb("disk_mb") or full.get("mb")
                return (
                    f"the workspace is full (its limit is {size} MiB): delete files. {WAY_OUT} or create a session "
                    "with a larger limits.disk_mb"
                )
        return None

    # -- files ----------------------------------------------------------------------------------

    def _check_path(self, path: str) -> str:
        if "\0" in path:
            raise PathNotAllowed("File paths cannot contain NUL bytes.")
        full = posixpath.normpath(path if path.startswith("/") else posixpath.join(self.workspace, path))
        if full != self.workspace and not full.startswith(self.workspace + "/"):
            raise PathNotAllowed(f"'{path}' is outside the workspace {self.workspace}. Give a path relative to the workspace.")
        return full

    # -- shell state (a pause or a fork carries it out of the sandbox and back) --------------------

    async def shell_state(self) -> bytes:
        """The state the next command starts with (cwd, variables, functions, aliases), as the control shell
        keeps it on the sandbox's /run: a stop loses it, so a pause or a fork carries it out first."""
        kind, msg = await self._request(
            {"op": "get_state", "max": MAX_STATE_BYTES},
            timeout=FILE_TIMEOUT_S,
            no_answer="Reading the shell's state got no answer from the sandbox",
        )
        if kind != "D":
            raise SandboxError(f"The sandbox's shell state could not be read: {msg.get('message') or msg.get('error')}.")
        return bytes(msg)

    async def set_shell_state(self, state: bytes) -> None:
        """Make `state` (what `shell_state` gave, here or in another sandbox) the next command's."""
        _kind, msg = await self._request(
            {"op": "set_state"},
            state,
            timeout=FILE_TIMEOUT_S,
            no_answer="Setting the shell's state got no answer from the sandbox",
        )
        if msg.get("error"):
            raise SandboxError(f"The sandbox's shell state could not be set: {msg.get('message') or msg['error']}.")

    async def _request(self, msg: dict[str, Any], payload: bytes = b"", *, timeout: float, no_answer: str) -> tuple[str, Any]:
        """One request with a deadline, made again on a new connection if the old one is lost. A control
        shell that does not answer in time is dropped, and the caller told `no_answer` (the request is not
        tried again: it would hang the same way)."""
        retries = Retries(3)
        while True:
            conn = await self._connection()
            try:
                return await conn.request(msg, payload, timeout=timeout)
            except NoAnswer:
                raise SandboxError(f"{no_answer}; the connection was dropped, the next request opens another.") from None
            except Lost as e:
                retries.lost(e)

    async def _file_request(self, path: str, msg: dict[str, Any], payload: bytes = b"", size: int = 0) -> tuple[str, Any]:
        """One file request, with a deadline for `size` bytes."""
        timeout = FILE_TIMEOUT_S + size / FILE_RATE
        verb = {"read": "Reading", "list": "Listing"}.get(msg["op"], "Writing")
        return await self._request(
            msg,
            payload,
            timeout=timeout,
            no_answer=f"{verb} '{path}' got no answer from the sandbox within {timeout:.0f} s (is the sandbox "
            "overloaded, or its disk stuck?)",
        )

    def _file_error(self, path: str, msg: dict[str, Any], max_bytes: int = 0) -> SandboxError | OSError:
        err = msg.get("error")
        if err == "not_allowed":
            return PathNotAllowed(f"'{path}' resolves outside the workspace {self.workspace} (through '..' or a symlink).")
        if err == "not_found":
            return FileNotFoundError(f"No such file in the workspace: '{path}'.")
        if err == "is_dir":
            return IsADirectoryError(f"'{path}' is a folder, not a file.")
        if err == "not_dir":
            return NotADirectoryError(f"A parent of '{path}' is a file, not a folder.")
        if err == "too_big":
            return too_big(path, msg.get("size"), max_bytes)
        if err == "not_regular":
            return not_regular(path, msg.get("kind"))
        if err == "timeout":
            return SandboxError(f"Reading or writing '{path}' took over {msg.get('seconds')} s and was given up.")
        return SandboxError(f"Cannot access '{path}': {msg.get('message') or err}.")

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        full = self._check_path(path)
        kind, msg = await self._file_request(path, {"op": "read", "path": full, "max": max_bytes}, size=max_bytes)
        if kind == "D":
            return msg
        raise self._file_error(path, msg, max_bytes)

    async def list_files(self, path: str, max_entries: int = MAX_LISTED) -> FolderListing:
        full = self._check_path(path or ".")
        _kind, msg = await self._file_request(path, {"op": "list", "path": full, "max": max_entries})
        err = msg.get("error")
        if err == "not_dir":
            raise not_a_folder(path, msg.get("kind"))
        if err == "not_found":
            raise no_folder(path)
        if err:
            raise self._file_error(path, msg)
        return listing_of(msg.get("path", ""), msg.get("entries", []), msg.get("total", 0), msg.get("all", True))

    async def write_file(self, path: str, data: bytes) -> None:
        full = self._check_path(path)
        if full == self.workspace:
            raise IsADirectoryError(f"'{path}' is the workspace folder, not a file.")
        _kind, msg = await self._file_request(path, {"op": "write", "path": full}, bytes(data), size=len(data))
        if msg.get("error"):
            raise self._file_error(path, msg)

    # -- a person's terminal (OpensTerminal) -----------------------------------------------------------

    def open_terminal(self, rows: int, cols: int) -> AbstractAsyncContextManager[ControlTerminal]:
        return control_terminal(self._connection, self._spec.env, rows, cols)

    # -- byte streams (OpensStreams), through a control connection of their own ------------------

    async def connect_inside(self, port: int) -> ControlStream:
        return await self._streams.connect(port)

    async def serve_inside(
        self, port: int, handler: StreamHandler, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._streams.serve(port, handler, task_status=task_status)
