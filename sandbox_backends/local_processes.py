"""The processes of a local sandbox: is one alive, stopping a command's process group, and finding every
process a sandbox started (`setsid` escapees too) by the marker in its environment.

Apart from local.py so that the sandbox module keeps to what a sandbox does; these only know pids.
"""

from __future__ import annotations

import os
import signal

import anyio

MARKER_ENV = "MCP_SESSIONS_SANDBOX"
"""Set in every command's environment so `close()` finds processes that left their group (`setsid`)."""

POLL_S = 0.02
GRACE_S = 0.35


def alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def stop_process_group(pgid: int) -> None:
    """SIGINT, then SIGTERM, then SIGKILL; the group's last members always get SIGKILL.

    Background jobs of a non-interactive shell ignore SIGINT, so once the leader is gone the rest of
    the group is killed outright. Returns within about 1 s.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        _signal_group(pgid, sig)
        with anyio.move_on_after(GRACE_S):
            while alive(pgid):
                await anyio.sleep(POLL_S)
        if not alive(pgid):
            break
    _signal_group(pgid, signal.SIGKILL)
    with anyio.move_on_after(GRACE_S):
        while _group_alive(pgid) and _any_member_alive(pgid):
            await anyio.sleep(POLL_S)


def _any_member_alive(pgid: int) -> bool:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    return True
            except (ProcessLookupError, PermissionError):
                continue
    return False


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment carries `MARKER_ENV=marker`. Returns how many."""
    needle = f"{MARKER_ENV}={marker}".encode()
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
        except OSError:
            continue
    return killed
