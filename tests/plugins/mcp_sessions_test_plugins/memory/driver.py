"""The memory engine, sandboxes and driver, and the plugin object the entry point names."""

from __future__ import annotations

import queue
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from anyio.from_thread import BlockingPortal

from sandbox_backends.base import (
    MAX_LISTED,
    ClosesOnExit,
    ExecResult,
    FailureCallback,
    FolderListing,
    OutputCallback,
    PathNotAllowed,
    PhaseCallback,
    SandboxBusy,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
    listing_of,
)
from sandbox_backends.output import OutputBuffer
from sandbox_backends.registry import DriverContext, DriverPlugin

from .files import FOLDER, Files, Link
from .parse import AndOr
from .shell import NULL, Ctx, Exit, Io, Shell, Stream

WORKSPACE = "/workspace"
STOPPED = 130
"""The exit code of a command stopped by an interrupt, a cancel or a timeout, as bash's on SIGINT."""
STOP_WAIT_S = 10.0
"""How long stopping waits for each background job to end; a job checkpoints at every command."""
CHUNK = 65536
MAX_LINKS = 40
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = {"if", "then", "elif", "else", "fi", "for", "until", "case", "esac", "select", "function", "{", "}"}


# -- the engine, sandboxes and the driver ------------------------------------------------------------


class Engine:
    """An event loop of its own on a daemon thread, where background jobs run, as a container's
    processes run in its engine: apart from whoever started them."""

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._lock = threading.Lock()

    def start(self, func: Callable[..., Awaitable[None]], *args: Any) -> Future[None]:
        """Start `func(*args)` as a task there; cancelling the future cancels it. Blocks: call from a thread."""
        return self._running().start_task_soon(func, *args)

    def _running(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                ready: queue.Queue[BlockingPortal] = queue.Queue()
                threading.Thread(target=anyio.run, args=(self._serve, ready), name="memory-engine", daemon=True).start()
                try:
                    self._portal = ready.get(timeout=STOP_WAIT_S)
                except queue.Empty:
                    raise SandboxError("The memory engine did not start.") from None
            return self._portal

    @staticmethod
    async def _serve(ready: queue.Queue[BlockingPortal]) -> None:
        async with BlockingPortal() as portal:
            ready.put(portal)
            await portal.sleep_until_stopped()


ENGINE = Engine()


@dataclass(eq=False)
class Job:
    done: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None


@dataclass(eq=False)
class Run:
    """The command running in a sandbox, for whoever interrupts it."""

    buf: OutputBuffer
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    interrupted: bool = False


class State:
    """One sandbox as the engine keeps it: what outlives every object that drives it."""

    def __init__(self, name: str, server_id: str, env: dict[str, str]) -> None:
        self.name = name
        self.server_id = server_id
        self.files = Files()
        variables = {"HOME": WORKSPACE, "PWD": WORKSPACE, **env}
        self.ctx = Ctx(WORKSPACE, variables, set(variables))
        self.shell = Shell(self.files, self.spawn)
        self.run: Run | None = None
        self.jobs: set[Job] = set()
        self.lock = threading.Lock()

    async def spawn(self, node: AndOr, ctx: Ctx) -> None:
        job = Job()
        with self.lock:
            self.jobs.add(job)
        job.future = await anyio.to_thread.run_sync(ENGINE.start, self._job, node, ctx, job)

    async def _job(self, node: AndOr, ctx: Ctx, job: Job) -> None:
        """A background job, on the engine's loop; its output goes nowhere."""
        try:
            await self.shell.run_and_or(node, ctx, Io(NULL, NULL))
        except Exit:
            pass
        finally:
            with self.lock:
                self.jobs.discard(job)
            job.done.set()

    async def stop_jobs(self) -> None:
        """Cancel every background job and wait until each has ended."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            if job.future is not None:
                job.future.cancel()

        def wait() -> None:
            for job in jobs:
                job.done.wait(STOP_WAIT_S)

        if jobs:
            await anyio.to_thread.run_sync(wait)


_SANDBOXES: dict[str, State] = {}
"""Every memory sandbox of this process by id, whichever driver object made it."""


class MemorySandbox(ClosesOnExit):
    """A handle on one sandbox of the table; any number of handles may drive the same one."""

    def __init__(self, sandbox_id: str) -> None:
        self._id = sandbox_id

    @property
    def id(self) -> str:
        return self._id

    @property
    def workspace(self) -> str:
        return WORKSPACE

    def describe(self) -> dict[str, object]:
        return {
            "driver": "memory",
            "id": self._id,
            "workspace": WORKSPACE,
            "network": "none",
            "limits": "not enforced by the memory driver",
        }

    def _state(self) -> State:
        state = _SANDBOXES.get(self._id)
        if state is None:
            raise SandboxNotFound(f"The memory sandbox {self._id} no longer exists.")
        return state

    async def exec(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = 65536,
    ) -> ExecResult:
        state = self._state()
        if state.run is not None:
            raise SandboxBusy("A command is already running in this sandbox.")
        run = state.run = Run(OutputBuffer(max_output_bytes))
        stream = Stream(run.buf, on_output)
        started = time.monotonic()
        code = STOPPED
        try:
            with anyio.move_on_after(timeout_s) as deadline, run.scope:
                code = await state.shell.run_script(script, state.ctx, Io(stream, stream))
            if deadline.cancelled_caught:  # so is everything it started (`interrupt` stops them itself)
                await state.stop_jobs()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await state.stop_jobs()
            raise
        finally:
            state.run = None
            run.done.set()
        timed_out = deadline.cancelled_caught
        return run.buf.result(
            code, round(time.monotonic() - started, 3), timed_out=timed_out, interrupted=run.interrupted and not timed_out
        )

    async def interrupt(self) -> bool:
        state = _SANDBOXES.get(self._id)
        run = state.run if state is not None else None
        if state is None:
            return False
        if run is None:
            await state.stop_jobs()  # what earlier commands left running
            return False
        run.interrupted = True
        run.scope.cancel()
        await run.done.wait()
        await state.stop_jobs()
        return True

    async def take_over(self) -> ExecResult | None:
        """A command runs only while its `exec` waits in this process; stopping it hands its output over."""
        run = self._state().run
        if run is None:
            return None
        await self.interrupt()
        return run.buf.result(STOPPED, 0.0, interrupted=True)

    def _inside(self, state: State, path: str) -> str:
        if "\0" in path:
            raise PathNotAllowed("File paths cannot contain NUL bytes.")
        try:
            real = state.files.real(path, WORKSPACE)
        except OSError as e:
            raise SandboxError(f"Cannot resolve '{path}': {e}.") from e
        if real != WORKSPACE and not real.startswith(WORKSPACE + "/"):
            raise PathNotAllowed(f"'{path}' is outside the workspace {WORKSPACE}. Give a path relative to the workspace.")
        return real

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        state = self._state()
        node = state.files.get(self._inside(state, path))
        if node is None:
            raise FileNotFoundError(f"No such file in the workspace: '{path}'.")
        if not isinstance(node, bytes):
            raise IsADirectoryError(f"'{path}' is a folder, not a file.")
        if len(node) > max_bytes:
            raise SandboxError(f"'{path}' is {len(node)} bytes, over the {max_bytes}-byte limit for reading it here.")
        return node

    async def list_files(self, path: str, max_entries: int = MAX_LISTED) -> FolderListing:
        state = self._state()
        real = self._inside(state, path or ".")
        node = state.files.get(real)
        if node is None:
            raise FileNotFoundError(f"No such folder in the workspace: '{path}'.")
        if node is not FOLDER:
            raise NotADirectoryError(f"'{path}' is a file, not a folder: only folders can be listed.")
        children = state.files.children(real)
        kinds = {bytes: "file", Link: "symlink"}
        named = [
            [name, kinds.get(type(n), "folder"), len(n) if isinstance(n, bytes) else 0, int(time.time())]
            for name, n in children[:max_entries]
        ]
        return listing_of(real[len(WORKSPACE) + 1 :], named, len(children), True)

    async def write_file(self, path: str, data: bytes) -> None:
        state = self._state()
        real = self._inside(state, path)
        if real == WORKSPACE:
            raise IsADirectoryError(f"'{path}' is the workspace folder, not a file.")
        try:
            state.files.write(real, data, parents=True)
        except IsADirectoryError:
            raise IsADirectoryError(f"'{path}' is a folder, not a file.") from None
        except NotADirectoryError:
            raise NotADirectoryError(f"A parent of '{path}' is a file, not a folder.") from None

    async def close(self, *, delete: bool = False) -> None:
        state = _SANDBOXES.get(self._id)
        if state is None:
            return
        await self.interrupt()
        await state.stop_jobs()
        if delete and _SANDBOXES.get(self._id) is state:
            del _SANDBOXES[self._id]


class MemoryDriver:
    """Makes `MemorySandbox`es in the module's table, under this server's id."""

    name = "memory"

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> MemorySandbox:
        if not spec.name:
            raise SandboxError("Invalid sandbox name ''.")
        if any(s.server_id == self.server_id and s.name == spec.name for s in _SANDBOXES.values()):
            raise SandboxError(f"A memory sandbox named {spec.name!r} already exists.")
        if on_phase:
            await on_phase("creating_sandbox", "in memory")
        sandbox_id = "mem-" + secrets.token_hex(8)
        _SANDBOXES[sandbox_id] = State(spec.name, self.server_id, spec.env)
        return MemorySandbox(sandbox_id)

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> MemorySandbox:
        state = _SANDBOXES.get(sandbox_id)
        if state is None or (state.server_id, state.name) != (self.server_id, spec.name):
            raise SandboxNotFound(f"The memory sandbox {sandbox_id} no longer exists.")
        return MemorySandbox(sandbox_id)

    async def watch(self, on_failure: FailureCallback) -> None:
        """Nothing kills a memory sandbox behind the server's back."""
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Sandboxes stay in the table, for the next driver object to attach to."""


def _make(settings: object, context: DriverContext) -> MemoryDriver:
    return MemoryDriver(context.server_id)


plugin = DriverPlugin(
    name="memory",
    make=_make,
    summary="a sandbox in the server's memory running a small subset of bash (for tests)",
)
