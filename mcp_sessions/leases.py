"""Which server process owns a running turn, and whether that process is still alive.

Several server processes can share one state folder; a turn belongs to the process that started it.
A lease names that process by host, pid and the pid's start time, so a reused pid is not mistaken
for the original owner.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return fields[19].decode()


def this_process() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{_start_time(os.getpid())}"


def is_alive(lease: str) -> bool:
    """False only when the owner is certainly gone: same host, and its pid is dead or reused."""
    try:
        host, pid, started = lease.rsplit("/", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    return _start_time(int(pid)) == started
