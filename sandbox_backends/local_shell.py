"""The local driver's handle on one runner process (`control/runner.py`): handing it runs and hearing
when each is done, on pipes of its own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import Process

from .local_processes import POLL_S

EXIT_WAIT_S = 2.0


class RunnerShell:
    """A runner process and what it last told: the run it finished and is back from, and the state it saved.

    It runs on pipes of our own, non-blocking: handing it a run id is one write with no trip through the
    event loop, and closing our ends is ours to do (a job the runner left may hold its stdout open after
    it exits, which would keep a subprocess transport's pipe open until garbage collection).
    """

    def __init__(self, proc: Process, stdin: int, stdout: int) -> None:
        self.proc = proc
        self.done: str | None = None
        self.state: tuple[int, int, int] | None = None
        self._stdin: int | None = stdin
        self._stdout: int | None = stdout
        self._buf = b""

    @classmethod
    async def start(cls, argv: list[str], cwd: Path, env: dict[str, str]) -> RunnerShell:
        in_r, in_w = os.pipe()
        try:
            out_r, out_w = os.pipe()
        except OSError:
            os.close(in_r)
            os.close(in_w)
            raise
        try:
            proc = await anyio.open_process(
                argv, cwd=cwd, env=env, start_new_session=True, stdin=in_r, stdout=out_w, stderr=subprocess.DEVNULL
            )
        except BaseException:
            os.close(in_w)
            os.close(out_r)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        os.set_blocking(in_w, False)
        os.set_blocking(out_r, False)
        return cls(proc, in_w, out_r)

    def send(self, run_id: str) -> None:
        """Hand it a run; OSError (a broken pipe) if it has gone."""
        if self._stdin is None:
            raise BrokenPipeError("the runner's input is closed")
        os.write(self._stdin, f"{run_id}\n".encode())

    async def wait_done(self, run_id: str, tick: Callable[[], Awaitable[None]] | None = None) -> None:
        """Until the runner says `run_id` is done, or it exits. Every POLL_S meanwhile, `tick()` (say, to
        publish output) and a look at whether it exited: a job of its own may keep its stdout open.
        No helper task: most commands end before the first POLL_S."""
        next_tick = anyio.current_time() + POLL_S
        while self.done != run_id and self._stdout is not None:
            try:
                chunk = os.read(self._stdout, 4096)
            except BlockingIOError:
                with anyio.move_on_after(max(0.0, next_tick - anyio.current_time())):
                    try:
                        await anyio.wait_readable(self._stdout)
                    except anyio.ClosedResourceError:
                        return
            else:
                if not chunk:
                    return  # it exited, and nothing else holds its stdout
                lines = (self._buf + chunk).split(b"\n")
                self._buf = lines.pop()[-256:]
                if lines and lines[-1]:
                    self.done = lines[-1].split()[0].decode(errors="replace")
                continue
            if anyio.current_time() >= next_tick:
                next_tick = anyio.current_time() + POLL_S
                if self.proc.returncode is not None:
                    return
                if tick is not None:
                    with anyio.CancelScope(shield=True):  # a chunk is either delivered whole or not read yet
                        await tick()

    async def wait_exit(self) -> None:
        """Until the process has exited and been reaped, for at most EXIT_WAIT_S."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_WAIT_S):
            await self.proc.wait()

    async def aclose(self) -> None:
        """Close its input: an idle runner exits, one running a command exits after it (not waited for)."""
        for fd in (self._stdin, self._stdout):
            if fd is not None:
                anyio.notify_closing(fd)
                os.close(fd)
        self._stdin = self._stdout = None
        await self.wait_exit()
