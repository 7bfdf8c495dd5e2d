"""The local driver's `isolation="bwrap"`: its runner in a bubblewrap sandbox (Debian's `bubblewrap`).

What bubblewrap gives here: no network (only `lo`), the host's filesystem read-only, the sandbox's own
folder the only writable place (its workspace, the runner's state, and its `/tmp`), and its own pid, IPC,
UTS, cgroup and user namespaces; when the namespace's first process dies, so does every process in it,
`setsid` escapees included. It starts in about 7 ms. What it does not give: memory, CPU or process
limits (RLIMIT_NPROC counts every process of the server's user on the host, and RLIMIT_AS breaks
runtimes that reserve address space; cgroups would need a delegated hierarchy), nor a kernel of its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .base import SandboxError

BWRAP_PACKAGE = "bubblewrap"


def bwrap_argv(base: Path, hidden: Path) -> list[str]:
    """What puts a runner in a bubblewrap sandbox whose only writable place is `base` (its workspace, its state,
    and its /tmp), with `hidden` (the server's state folder: other sessions, their transcripts) out of sight.
    Raises SandboxError naming the package when bwrap is not installed."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(
            f"isolation='bwrap' needs bubblewrap, which is not installed on the server's machine: install the Debian "
            f"package '{BWRAP_PACKAGE}' (scripts/install-bwrap.sh does), or use isolation='plain'."
        )
    return [
        bwrap,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", str(hidden),
        "--bind", str(base / "tmp"), "/tmp",  # before the folder: a folder under /tmp must not be hidden
        "--bind", str(base), str(base),
        "--chdir", str(base / "workspace"),
        "--unshare-all",  # network (only lo), pids, ipc, uts, cgroup, user
        "--",
    ]  # fmt: skip
