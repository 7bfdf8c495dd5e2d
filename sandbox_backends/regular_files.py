"""Reading and writing workspace files that a sandbox's own commands may have made hostile.

A command can leave a FIFO, a socket or a device where a file is expected, or a file that grows while it is
read. Opening a FIFO blocks until someone writes to it, and reading one (or /dev/zero) never ends: a file
read must not wait on the sandbox, nor take more than its size limit. So files are opened non-blocking,
only regular files are used, the limit is kept while reading (not only by a `stat` before), and the whole
read or write has a time limit.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from .base import LIST_SCAN_LIMIT, FileTooBig, FolderListing, NotRegularFile, PathNotAllowed, SandboxError, listing_of

T = TypeVar("T")

FILE_IO_LIMIT_S = 4.0
"""The longest a file read or write may take before it is given up."""

KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def not_regular(path: str, kind: str | None) -> NotRegularFile:
    """The error for a workspace path that is something other than a regular file or a folder."""
    return NotRegularFile(f"'{path}' is {kind or 'not a regular file'}: only regular files can be read or written here.")


def resolve_inside(workspace: Path, path: str) -> Path:
    """The real path of `path` in `workspace`, refusing anything that lands outside it (`..`, absolute, symlinks)."""
    if "\0" in path:
        raise PathNotAllowed("File paths cannot contain NUL bytes.")
    root = workspace.resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if full != root and root not in full.parents:
        raise PathNotAllowed(f"'{path}' is outside the workspace {root}. Give a path relative to the workspace.")
    return full


def not_a_folder(path: str, kind: str | None) -> NotADirectoryError:
    """The error for listing a workspace path that is not a folder (a FIFO is named, never opened)."""
    return NotADirectoryError(f"'{path}' is {kind or 'a file'}, not a folder: only folders can be listed.")


def no_folder(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"No such folder in the workspace: '{path}'.")


def too_big(path: str, size: int | str | None, max_bytes: int) -> FileTooBig:
    return FileTooBig(f"'{path}' is {size} bytes, over the {max_bytes}-byte limit for reading it here.")


def _open_regular(full: Path, shown: str, flags: int) -> int:
    """A descriptor on `full` if it is a regular file: opened without blocking and without following a
    symlink in its last part (one swapped in after the path was checked)."""
    try:
        fd = os.open(full, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a FIFO opened for writing, non-blocking, with no reader
            raise not_regular(shown, KINDS[stat.S_IFIFO]) from None
        raise
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind == stat.S_IFREG:
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    if kind == stat.S_IFDIR:
        raise IsADirectoryError(f"'{shown}' is a folder, not a file.")
    raise not_regular(shown, KINDS.get(kind))


def _read(full: Path, shown: str, max_bytes: int) -> bytes:
    fd = _open_regular(full, shown, os.O_RDONLY)
    with open(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise too_big(shown, size, max_bytes)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while it was read
        raise too_big(shown, f"over {max_bytes}", max_bytes)
    return data


def _write(full: Path, shown: str, data: bytes) -> None:
    fd = _open_regular(full, shown, os.O_WRONLY | os.O_CREAT)
    with open(fd, "wb") as f:
        f.truncate(0)
        f.write(data)


async def _in_thread(shown: str, verb: str, work: Callable[[], T]) -> T:
    """Run `work` off the event loop; past the time limit the caller gets an error (the thread is left to end)."""
    with anyio.move_on_after(FILE_IO_LIMIT_S):
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    raise SandboxError(f"{verb} '{shown}' took over {FILE_IO_LIMIT_S:.0f} s and was given up.")


async def read_regular(full: Path, shown: str, max_bytes: int) -> bytes:
    """The content of the regular file `full` (`shown` is the caller's path, for errors), at most `max_bytes`."""
    return await _in_thread(shown, "Reading", functools.partial(_read, full, shown, max_bytes))


async def write_regular(full: Path, shown: str, data: bytes) -> None:
    """Write `data` to `full`, made if missing; refused if something other than a regular file is there."""
    await anyio.Path(full.parent).mkdir(parents=True, exist_ok=True)
    await _in_thread(shown, "Writing", functools.partial(_write, full, shown, data))


ENTRY_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "folder", stat.S_IFLNK: "symlink"}


def _list(full: Path, root: Path, shown: str, most: int) -> FolderListing:
    """The listing of `full` (already resolved inside `root`), the way the docker control shell lists one
    (`list_inside` in control/program.py: change both together): opened without following a last symlink and
    checked to be inside `root` once open, names sorted, entries lstat'ed."""
    try:
        fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise no_folder(shown) from None
    except NotADirectoryError:
        raise not_a_folder(shown, KINDS.get(stat.S_IFMT(os.lstat(full).st_mode))) from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # swapped for a symlink since it was resolved
            raise PathNotAllowed(f"'{shown}' leads outside the workspace through a symlink.") from None
        raise
    try:
        where = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else full
        if where != root and root not in where.parents:
            raise PathNotAllowed(f"'{shown}' leads outside the workspace through a symlink.")
        names: list[str] = []
        counted, complete = 0, True
        with os.scandir(fd) as found:
            for entry in found:
                counted += 1
                if counted > LIST_SCAN_LIMIT:
                    counted, complete = LIST_SCAN_LIMIT, False
                    break
                names.append(entry.name)
        names.sort()
        listed: list[list[object]] = []
        for name in names[:most]:
            try:
                st = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                counted -= 1  # deleted meanwhile
                continue
            listed.append([name, ENTRY_KINDS.get(stat.S_IFMT(st.st_mode), "other"), st.st_size, int(st.st_mtime)])
    finally:
        os.close(fd)
    relative = os.path.relpath(where, root)
    return listing_of("" if relative == "." else relative, listed, counted, complete)


async def list_folder(full: Path, root: Path, shown: str, most: int) -> FolderListing:
    """The entries of the workspace folder `full` (resolved inside `root`; `shown` is the caller's path, for
    errors), at most `most`, off the event loop and within the file time limit."""
    return await _in_thread(shown, "Listing", functools.partial(_list, full, root.resolve(), shown, most))
