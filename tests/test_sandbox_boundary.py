"""The boundary between a docker sandbox and the server, tried as an attacker would: code running in the
sandbox as its user (what `send_message` runs), through the real MCP client and a real engine.

What must hold (SECURITY.md): a command cannot write into the control shell's stream, read or change its
state, or answer for a later command; a result is the exit code and output of the command that ran.
`interrupt` stops every process of the sandbox user whatever it calls itself; a FIFO in the workspace is
refused, not waited on; a command killed at the memory limit fails its turn, not the session.
"""

# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_sessions.app import server_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, new_session
from .docker_support import IMAGE, RUNTIMES, docker_engine, isolation, remove_labelled  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BOUND_S = 30.0
"""Bound on waits for what takes about a second: it only turns a hang into a failure."""

ATTACKER = r'''
"""Left running by one command, it tries every way into the control shell and the next commands until the
file named first exists (a bound of 120 s only keeps it from running on forever)."""
import ctypes, os, sys, time

stop, end = sys.argv[1], time.monotonic() + 120
log = open(sys.argv[2], "a", buffering=1)
libc = ctypes.CDLL(None, use_errno=True)
me, tried = os.getpid(), set()
TURN_SHELL = b"bash\0-c\0. /run/mcp-shell/turn.sh\0"
FORGED = b'J\x00\x00\x00\x2a{"req":"q1","ev":"exit","rc":0,"bytes":16}'


def note(kind, target, error):
    if error is None:
        if (kind, None) not in tried:  # once a kind: the log is read back through a turn's (bounded) output
            tried.add((kind, None))
            log.write("WROTE %s %s\n" % (kind, target))
    elif (kind, error) not in tried:
        tried.add((kind, error))
        log.write("refused %s %s: %s\n" % (kind, target, error))


def attempt(kind, target, fn):
    try:
        fn()
    except OSError as e:
        note(kind, target, e.strerror)
    else:
        note(kind, target, None)


def write_to(path, data=FORGED, make=0):
    def go():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | make, 0o644)
        try:
            if os.readlink("/proc/self/fd/%d" % fd) == "/dev/null":  # what it reached leads nowhere
                raise OSError(6, "only /dev/null")
            os.write(fd, data)
        finally:
            os.close(fd)
    return go


def still_root(pid, fn):
    """`fn`, which counts only if `pid` is still root's after it: a child the control shell starts is root's
    for a moment before it becomes the sandbox user (its descriptors on /dev/null by then): that root
    process is gone, as if it had ended."""
    def go():
        fn()
        if int(status(pid)["Uid"].split()[0]) != 0:
            raise OSError(3, os.strerror(3))
    return go


def ptrace(pid):
    def go():
        if libc.ptrace(16, pid, 0, 0) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            exiting = not f.read()  # its memory is gone: the kernel skips the check, and there is nothing to reach
        libc.ptrace(17, pid, 0, 0)
        if exiting:
            raise OSError(3, os.strerror(3))
    return go


def read(path):
    def go():
        with open(path, "rb") as f:
            f.read(1)
    return go


def status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


while not os.path.exists(stop) and time.monotonic() < end:
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            uid = int(status(pid)["Uid"].split()[0])
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmdline = f.read()
        except (OSError, KeyError, ValueError):
            continue
        if uid == 0:  # init, the keepalive, control shells
            attempt("control-stream", pid, still_root(pid, write_to("/proc/%d/fd/1" % pid)))
            attempt("control-stdin", pid, still_root(pid, write_to("/proc/%d/fd/0" % pid)))
            attempt("signal-root", pid, still_root(pid, lambda: os.kill(pid, 0)))
        elif cmdline.startswith(TURN_SHELL):  # the shell of a command, running or started ahead
            attempt("shell-fd-list", pid, lambda: os.listdir("/proc/%d/fd" % pid))
            for fd in (3, 5, 252, 254):
                attempt("shell-fd", "%d/%d" % (pid, fd), write_to("/proc/%d/fd/%d" % (pid, fd)))
            attempt("shell-memory", pid, read("/proc/%d/mem" % pid))
            attempt("shell-ptrace", pid, ptrace(pid))
        else:  # a process of a command: what it writes its output to is the control shell's file
            for fd in (1, 2):
                attempt("command-output", pid, write_to("/proc/%d/fd/%d" % (pid, fd), b"120 tests passed\n"))
    attempt("state-list", "/run/mcp-shell", lambda: os.listdir("/run/mcp-shell"))
    attempt("state-read", "state.sh", read("/run/mcp-shell/state.sh"))  # there once the first command ended
    attempt("state-write", "forged.rc", write_to("/run/mcp-shell/forged.rc", b"0 0\n", os.O_CREAT))
    time.sleep(0.005)
log.write("done\n")
'''
KINDS = {
    "control-stream": "Permission denied",
    "control-stdin": "Permission denied",
    "signal-root": "Operation not permitted",
    "shell-fd-list": "Permission denied",
    "shell-fd": "Permission denied",
    "shell-memory": "Permission denied",
    "shell-ptrace": "Operation not permitted",
    "command-output": "Permission denied",
    "state-list": "Permission denied",
    "state-read": "Permission denied",
    "state-write": "Permission denied",
}
"""Every way the attacker tries, and the refusal each must meet."""


def expected(isolation: str) -> tuple[dict[str, str], set[str], set[str]]:
    """(the refusals each way must meet, the ways that may succeed, other refusals that count) under `isolation`.
    Under gVisor (SECURITY.md) a turn shell is dumpable, so its descriptors can be listed, but opened only with
    the rights their files give (root's are refused); the host's descriptors cannot be opened at all."""
    if isolation != "gvisor":
        return KINDS, set(), set()
    return {k: v for k, v in KINDS.items() if k != "shell-fd-list"}, {"shell-fd-list"}, {"Bad file descriptor"}


@pytest.fixture
def docker_settings(home: Path, docker_engine: Any, isolation: str) -> Iterator[Settings]:
    """A docker server whose sessions run on the runtime of `isolation` by default (each test runs under both)."""
    settings = Settings(home=home, driver="docker", image=IMAGE, command_timeout_s=120, docker_runtime=RUNTIMES[isolation])
    yield settings
    remove_labelled(docker_engine, server_id(settings))


async def send(client: Client, sid: str, text: str, **args: Any) -> dict[str, Any]:
    return await call(client, "send_message", session_id=sid, text=text, **args)


async def test_a_process_left_by_a_command_cannot_answer_for_the_next(docker_settings: Settings, isolation: str) -> None:
    """The attack that fooled the old control shell: a background job that writes a forged result (into the
    control shell's stdout, its state files, the next command's shell or output). The next turn reports the
    exit code and output of its own command, and every way in is refused."""
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client, files={"attacker.py": ATTACKER})
        attack = "python3 attacker.py /tmp/attack.stop /tmp/attack.log >/dev/null 2>&1 & echo started"
        started = await send(client, sid, attack)
        assert started["output"] == "started\n"
        reply = await send(client, sid, "echo real-output; sleep 1; echo still-real; exit 7", wait_s=BOUND_S)
        assert (reply["turn_status"], reply["exit_code"], reply["output"]) == ("completed", 7, "real-output\nstill-real\n")
        await send(client, sid, "touch /tmp/attack.stop")  # it ran all along the command above: now it may end
        with anyio.fail_after(BOUND_S):  # wait for its last word
            while "done" not in (log := (await send(client, sid, "cat /tmp/attack.log"))["output"]):
                await anyio.sleep(0.5)
    kinds, may_succeed, also_refused = expected(isolation)
    assert {line.split()[1] for line in log.splitlines() if line.startswith("WROTE ")} <= may_succeed, log
    refused: dict[str, set[str]] = {}
    for line in log.splitlines():
        if line.startswith("refused "):
            refused.setdefault(line.split()[1], set()).add(line.partition(": ")[2])
    assert set(refused) - may_succeed == set(kinds), log  # it found every target...
    for kind, error in kinds.items():  # ...and met the refusal it should (or found it gone, racing its end)
        gone = {"No such file or directory", "No such process", "only /dev/null"}
        assert error in refused[kind] and refused[kind] <= {error, *gone, *also_refused}, log


async def test_a_command_cannot_reach_its_control_shell(docker_settings: Settings) -> None:
    """From the command itself: its parent is the control shell, whose stdout, folder and life are out of reach."""
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client)
        await send(client, sid, "cd /tmp")  # a command's end leaves the shell state in the folder
        reply = await send(
            client,
            sid,
            "printf 'Z\\377\\377\\377\\377junk' > /proc/$PPID/fd/1; find /run/mcp-shell -mindepth 1; touch /run/mcp-shell/x.rc; "
            "cat /run/mcp-shell/state.sh; kill -STOP $PPID; echo after",
        )
        lines = reply["output"].splitlines()
        assert "/proc/" in lines[0] and lines[0].endswith("/fd/1: Permission denied"), lines
        assert lines[1].startswith("find: ") and lines[1].endswith("/run/mcp-shell\u2019: Permission denied"), lines
        assert lines[2] == "touch: cannot touch '/run/mcp-shell/x.rc': Permission denied"
        assert lines[3] == "cat: /run/mcp-shell/state.sh: Permission denied"
        assert lines[4].endswith("Operation not permitted") and lines[5:] == ["after"]
        assert (await send(client, sid, "echo next"))["output"] == "next\n"


async def test_interrupt_kills_processes_whatever_they_call_themselves(docker_settings: Settings) -> None:
    """Names are what a process chooses: one renamed after the keepalive or carrying the control shell's mark
    in its arguments is the sandbox user's all the same, and goes."""
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client)
        disguised = (
            "(exec -a mcp-keepalive sleep 1001) & (exec -a mcp-sessions-control sleep 1002) & "
            "python3 -c 'import time; time.sleep(1003)' mcp-sessions-control /run/mcp-shell /workspace & "
            "setsid bash -c 'exec -a mcp-keepalive sleep 1004' & "
            # until all four have started (a loaded machine takes its time); 30 s only turns a hang into a failure
            "for _ in $(seq 300); do [ $(ps -eo args= | grep -c '100[1-4]') = 4 ] && break; sleep 0.1; done; "
            "ps -eo uid=,args= | grep -c '100[1-4]'"
        )
        assert (await send(client, sid, disguised))["output"] == "4\n"
        busy = await send(client, sid, "echo begin; sleep 300", wait_s=1)
        assert busy["status"] == "busy"
        stopped = await call(client, "interrupt", session_id=sid)
        assert stopped["interrupted"] and stopped["status"] == "ready"
        left = await send(client, sid, "ps -eo uid=,args= | grep '100[1-4]' | grep -v grep || echo none")
        assert left["output"] == "none\n"
        keepalive = await send(client, sid, "ps -eo uid=,args= | grep -c '^ *0 mcp-keepalive infinity'")
        assert keepalive["output"] == "1\n"  # the real one (root's) is untouched


async def test_a_fifo_in_the_workspace_is_refused_not_waited_on(docker_settings: Settings) -> None:
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client)
        await send(client, sid, "mkfifo pipe && mkfifo fed && (while :; do echo more; done > fed &) && echo made")
        for name in ("pipe", "fed"):  # with no writer, and with one that never stops
            with anyio.fail_after(BOUND_S), pytest.raises(MCPError, match=f"'{name}' is a FIFO \\(named pipe\\)"):
                await client.read_resource(f"session://{sid}/files/{name}")
        assert (await send(client, sid, "echo next"))["output"] == "next\n"
        busy = await send(client, sid, "sleep 300", wait_s=1)
        assert busy["status"] == "busy"
        stopped = await call(client, "interrupt", session_id=sid)
        assert stopped["interrupted"] and stopped["status"] == "ready"


async def test_a_command_killed_out_of_memory_fails_its_turn_not_the_session(docker_settings: Settings, isolation: str) -> None:
    """Under gVisor the host's OOM killer takes gVisor itself, and with it the session (SECURITY.md): then the
    turn and the session fail, saying so."""
    async with Client(create_server(docker_settings), mode="legacy") as client:
        sid = await new_session(client, limits={"memory_mb": 128})
        reply = await send(client, sid, "python3 -c 'x = bytearray(1 << 30); print(len(x))'; echo after $?", wait_s=BOUND_S)
        assert reply["turn_status"] == "failed"
        if isolation == "gvisor":
            assert reply["reason"] in ("oom killed", "the sandbox failed: oom killed"), reply  # the turn, or the session first
            with anyio.fail_after(BOUND_S):
                while (session := (await call(client, "get_session", session_id=sid))["session"])["status"] != "failed":
                    await anyio.sleep(0.1)
            assert "oom killed" in session["failure_reason"], session
            return
        assert reply["reason"] == (
            "out of memory: the sandbox reached its memory limit of 128 MiB and the kernel killed a process while the command ran. "
            "Interrupt the session to kill the processes earlier commands left running, close it, or create a session with a "
            "larger limits.memory_mb"
        )
        assert reply["output"].endswith("after 137\n")
        assert reply["status"] == "ready"
        assert (await send(client, sid, "echo still here"))["output"] == "still here\n"
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["status"] == "ready" and session["last_turn"]["status"] == "completed"
