"""A person's terminal in a local sandbox: an interactive bash on a PTY of this machine.

It starts from the state the last command saved (`state.sh`: cwd, exported variables, functions, aliases)
and, when its bash exits, saves its own the way the runner does (`state.new`, promoted only if whole), so
the next command goes on from where the person left: a new runner restores the file, since the old one's
state is no longer the one in force (control/runner.py). Under bwrap it runs inside the same wrapper.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from .control.runner import NEW_STATE_FILE, STATE_FILE, promote_state, state_whole

HANG_UP_S = 10.0
"""How long a hung-up bash may take to save its state and exit before it is killed."""


def terminal_rc(state_dir: Path) -> str:
    """The rc file: the saved state, a prompt that says where it is, and the save on exit."""
    state, new = state_dir / STATE_FILE, state_dir / NEW_STATE_FILE
    return (
        f"[[ -f '{state}' ]] && . '{state}' </dev/null >/dev/null 2>&1\n"
        "PS1='(sandbox) \\w\\$ '\n"
        'trap \'{ builtin export -p; builtin declare -f; builtin alias -p; builtin printf "cd -- %q\\n" "$PWD"; '
        f'builtin echo "#complete"; }} > "{new}" 2>/dev/null\' EXIT\n'
    )


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(1, min(rows, 1000)), max(1, min(cols, 1000)), 0, 0))


def _controlling_terminal() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class LocalTerminal:
    def __init__(self, proc: subprocess.Popen[bytes], master: int) -> None:
        self._proc = proc
        self._master = master
        self.exit_code: int | None = None
        self.state_saved = False
        self.ended = False

    async def read(self) -> bytes:
        while not self.ended:
            with anyio.move_on_after(0.1):  # a job it left may hold the PTY open: its bash's exit is the end
                await anyio.wait_readable(self._master)
            try:
                chunk = os.read(self._master, 65536)
            except BlockingIOError:
                if self._proc.poll() is not None:
                    self.ended = True
                continue
            except OSError:  # EIO: every process holding the PTY has closed it
                chunk = b""
            if chunk:
                return chunk
            self.ended = True
        return b""

    async def write(self, data: bytes) -> None:
        try:
            os.write(self._master, data)
        except OSError:
            pass  # what the PTY cannot take now is dropped, as the docker control shell does

    async def resize(self, rows: int, cols: int) -> None:
        _set_size(self._master, rows, cols)

    async def wait(self) -> int:
        while (code := self._proc.poll()) is None:
            await anyio.sleep(0.05)
        return code


@asynccontextmanager
async def open_pty_terminal(
    argv: list[str], cwd: Path, env: dict[str, str], state_dir: Path, rows: int, cols: int
) -> AsyncIterator[LocalTerminal]:
    """`argv` (a wrapper, or nothing) + an interactive bash on a new PTY, in `cwd` with `env`."""
    rc = state_dir / "terminal.rc"
    rc.write_text(terminal_rc(state_dir))
    (state_dir / NEW_STATE_FILE).unlink(missing_ok=True)
    master, slave = os.openpty()
    try:
        _set_size(master, rows, cols)
        proc = subprocess.Popen(
            [*argv, "bash", "--noprofile", "--rcfile", str(rc), "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env={**env, "TERM": env.get("TERM", "xterm-256color")},
            preexec_fn=_controlling_terminal,
            close_fds=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    terminal = LocalTerminal(proc, master)
    try:
        yield terminal
    finally:
        with anyio.CancelScope(shield=True):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGHUP)  # as closing the window: bash saves its state and exits
            with anyio.move_on_after(HANG_UP_S):
                await terminal.wait()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            terminal.exit_code = await terminal.wait()
            os.close(master)
            terminal.state_saved = state_whole(state_dir)
            promote_state(state_dir)
