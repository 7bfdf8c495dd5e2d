"""Workspace size limits as every driver takes them (`Limits.disk_mb`), and measuring a folder against one.

Separate from the drivers because each checks the same range and words its refusal the same way, and
more than one measures a folder it can read directly. A folder is counted the way `du -sx` counts it:
allocated blocks, not apparent sizes (a sparse file costs what it holds), each hard-linked file once,
without following symlinks or crossing into other filesystems. The docker control shell walks a
workspace the same way in its own code (`measure` in control/program.py, which imports nothing of
ours): change both together.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio

from .base import DiskUse

MIB = 1 << 20
INLINE_ENTRIES = 1000
"""A folder of up to this many entries is measured on the event loop (under 1 ms); a larger one in a worker
thread, whose hop would cost a small folder ten times the walk."""
MIN_DISK_MB = 16
"""The smallest workspace: a filesystem's own structures need a few MiB."""


def check_disk_mb(asked: int | None, most: int | None) -> None:
    """Raise ValueError, naming the range, if a workspace size is outside what this server allows."""
    if asked is not None and (asked < MIN_DISK_MB or (most is not None and asked > most)):
        top = f"{most}" if most is not None else "any size"
        raise ValueError(f"limits.disk_mb={asked} is outside this server's range: ask for {MIN_DISK_MB} to {top} (MiB).")


def folder_use(root: Path, most: int | None = None) -> tuple[int, str | None] | None:
    """Bytes allocated under `root` (itself included), and the first folder that could not be read (relative to
    `root`), if any; None if it holds more than `most` entries. Blocking."""
    total = 0
    entries_seen = 0
    seen: set[tuple[int, int]] = set()
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return 0, None
    device = top.st_dev
    total += top.st_blocks * 512
    pending = [str(root)]
    unreadable: str | None = None
    while pending:
        folder = pending.pop()
        try:
            listing = os.scandir(folder)
        except FileNotFoundError:
            continue  # deleted while measured
        except OSError:
            if unreadable is None:
                unreadable = os.path.relpath(folder, root)
            continue
        with listing:
            for entry in listing:
                entries_seen += 1
                if most is not None and entries_seen > most:
                    return None
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if info.st_dev != device:
                    continue
                if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                    key = (info.st_dev, info.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
    return total, unreadable


async def measure(root: Path, limit_mb: int) -> DiskUse:
    """`root`'s use against `limit_mb`, to the nearest MiB."""
    found = folder_use(root, INLINE_ENTRIES)
    if found is None:
        found = await anyio.to_thread.run_sync(folder_use, root)
    assert found is not None
    used, unreadable = found
    return DiskUse(used_mb=round(used / MIB), limit_mb=limit_mb, unreadable=unreadable)
