"""Workspace filesystems on this host: a sparse ext4 image per workspace, mounted through a loop device.

Separate from the docker parts because it is plain host work (files, `mkfs.ext4`, `mount`), done by a
server that runs as root next to its engine. Under the driver's folder (the server's state folder):

    <root>/<volume>.img          the image: sparse, so it costs the host what the workspace holds
    <root>/<volume>/             where it is mounted (loop, nodev, nosuid, noatime, discard)
    <root>/<volume>/workspace/   the folder the docker volume binds; the filesystem's root keeps lost+found

A path of our own, not a loop device's name, is what the docker volume names: loop numbers change
across reboots, the path does not, and an image that is not mounted leaves the volume's folder missing,
so a container never starts on the empty mount point. `discard` gives deleted files' blocks back to the
host. Every change is made under one lock file, so server processes sharing the folder never mount an
image twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base import SandboxError

log = logging.getLogger(__name__)

MOUNT_OPTIONS = "loop,nodev,nosuid,noatime,discard"
MKFS = [
    "mkfs.ext4",
    "-q",
    "-F",
    "-m",
    "0",
    "-i",
    "8192",
    "-O",
    "sparse_super2,^resize_inode",
    "-E",
    "lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0",
]
"""No blocks reserved for root; an inode per 8 KiB (a tree of small files runs out of space before inodes);
the journal and inode tables not written out, since a new sparse file already reads as zeros; no backup
superblocks and no room to grow online (a workspace is made at its size and thrown away whole). Formatting
4 GiB takes 3 ms instead of 7-12 ms, and the new image holds 124 KiB instead of 2.3 MiB."""
TOOL_TIMEOUT_S = 60.0
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
"""ioctls (linux/fs.h) that make a filesystem write everything out and hold new writes, and let them go."""


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounted_under(root: Path) -> list[Path]:
    """Mount points at or under `root`, deepest first (the order to unmount them in)."""
    prefix = str(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"{argv[0]} failed: {e}") from None
    if done.returncode != 0:
        raise SandboxError(f"{argv[0]} failed: {(done.stderr or done.stdout).strip() or f'exit code {done.returncode}'}")


def copy_sparse(source: Path, target: Path) -> None:
    """Copy a file's data into a new file of the same size, leaving its holes holes (an image of 4 GiB that
    holds 100 MB costs 100 MB to copy and to keep). In the kernel (a reflink where the host filesystem can)."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        dst.truncate(size)
        at = 0
        while at < size:
            try:
                at = os.lseek(src.fileno(), at, os.SEEK_DATA)
            except OSError:  # ENXIO: nothing but a hole to the end
                break
            end = os.lseek(src.fileno(), at, os.SEEK_HOLE)
            while at < end:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), end - at, at, at)
                if copied == 0:
                    raise OSError(f"{source} changed size while it was copied")
                at += copied


class Disks:
    """The workspace images under `root`. Every method blocks: call it in a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._overhead: dict[int, int] = {}
        """Size asked -> MiB the filesystem's own structures took (journal, inode tables), learnt at the first make."""

    def image(self, volume: str) -> Path:
        return self.root / f"{volume}.img"

    def mountpoint(self, volume: str) -> Path:
        return self.root / volume

    def source(self, volume: str) -> Path:
        """The folder a workspace's docker volume binds."""
        return self.root / volume / "workspace"

    def has(self, volume: str) -> bool:
        return self.image(volume).exists()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _is_mounted(self, volume: str) -> bool:
        return self.mountpoint(volume) in mounted_under(self.mountpoint(volume))

    def _mount(self, volume: str, owner: tuple[int, int] | None) -> None:
        """Mount the image, and make its workspace folder if it has none (new, or cut short while being made)."""
        point = self.mountpoint(volume)
        point.mkdir(exist_ok=True, mode=0o755)
        _run(["mount", "-o", MOUNT_OPTIONS, str(self.image(volume)), str(point)])
        workspace = self.source(volume)
        if not workspace.is_dir():
            workspace.mkdir(mode=0o755)
            if owner is not None:
                os.chown(workspace, *owner)

    def _unmount(self, volume: str) -> None:
        point = self.mountpoint(volume)
        while self._is_mounted(volume):
            try:
                _run(["umount", str(point)])
            except SandboxError as e:  # held open by someone: detach it now, the kernel frees it once let go
                log.warning("unmounting the workspace %s lazily: %s", volume, e)
                _run(["umount", "--lazy", str(point)])

    def make(self, volume: str, size_mb: int, owner: tuple[int, int] | None) -> None:
        """Make and mount a workspace filesystem whose free space is at least `size_mb` (a few % more at most).
        An image already there is mounted and kept as it is (with the size it was made with)."""
        with self._locked():
            if self.has(volume):
                if not self._is_mounted(volume):
                    self._mount(volume, owner)
                return
            image, fresh = self.image(volume), self.root / f"{volume}.new"
            overhead = self._overhead.get(size_mb, size_mb // 25 + 4)
            try:
                while True:
                    with open(fresh, "wb") as f:
                        f.truncate((size_mb + overhead) << 20)
                    _run([*MKFS, str(fresh)])
                    fresh.rename(image)  # formatted: only now does it count as this workspace's
                    self._mount(volume, owner)
                    st = os.statvfs(self.mountpoint(volume))
                    free_mb = st.f_bavail * st.f_frsize >> 20
                    if free_mb >= size_mb:
                        break
                    self._unmount(volume)  # the estimate was short: once more, with what it really took
                    image.unlink()
                    overhead += size_mb - free_mb + size_mb // 200 + 1
                self._overhead[size_mb] = overhead
            except BaseException:
                self._unmount(volume)
                fresh.unlink(missing_ok=True)
                image.unlink(missing_ok=True)
                raise

    def clone(self, source: str, volume: str) -> bool:
        """Make and mount a workspace filesystem that is a copy of `source`'s as it is now: `source`'s is frozen
        (everything written out, new writes held: its sandbox's writes wait, they do not fail) while its image is
        copied, tens of milliseconds for a workspace of 100 MB. False (nothing made) if `source` has no mounted
        image, or `volume` has one already."""
        with self._locked():
            if not self.has(source) or not self._is_mounted(source) or self.has(volume):
                return False
            image, fresh = self.image(volume), self.root / f"{volume}.new"
            fresh.unlink(missing_ok=True)  # left by a server that died while cloning
            try:
                fd = os.open(self.mountpoint(source), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.ioctl(fd, FIFREEZE, 0)
                    try:
                        copy_sparse(self.image(source), fresh)
                    finally:
                        fcntl.ioctl(fd, FITHAW, 0)
                finally:
                    os.close(fd)
                fresh.rename(image)
                self._mount(volume, None)  # the copy's workspace folder has the source's owner already
            except BaseException:
                self._unmount(volume)
                fresh.unlink(missing_ok=True)
                image.unlink(missing_ok=True)
                raise
            return True

    def thaw(self, volume: str) -> None:
        """Let writes to the workspace go on if a clone left it frozen (its server died in those milliseconds)."""
        if not self._is_mounted(volume):
            return
        try:
            fd = os.open(self.mountpoint(volume), os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError:
            pass  # EINVAL: it was not frozen
        finally:
            os.close(fd)

    def mount(self, volume: str, owner: tuple[int, int] | None) -> bool:
        """Mount the workspace's image if it is not (after a reboot, or a close); False if it has no image."""
        with self._locked():
            if not self.has(volume):
                return False
            if not self._is_mounted(volume):
                self._mount(volume, owner)
            return True

    def release(self, volume: str) -> None:
        """Unmount the workspace (its image stays): a closed sandbox holds no mount or loop device."""
        with self._locked():
            self._unmount(volume)

    def remove(self, volume: str) -> None:
        """Unmount and delete the workspace's image. Nothing of it is left on the host."""
        with self._locked():
            self._unmount(volume)
            self.image(volume).unlink(missing_ok=True)
            (self.root / f"{volume}.new").unlink(missing_ok=True)
            shutil.rmtree(self.mountpoint(volume), ignore_errors=True)  # the empty mount point


def can_mount(root: Path) -> str | None:
    """Why workspace images cannot be made and mounted under `root` here, or None if they can. Tries it with a
    small image (about 20 ms), the only sure test: root in a container may still lack the right to mount."""
    if os.geteuid() != 0:
        return "the server does not run as root, which mounting a workspace filesystem needs"
    missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    probe = Disks(root)
    name = f".probe-{os.getpid()}"
    try:
        probe.make(name, 16, None)
    except (SandboxError, OSError) as e:
        return f"a workspace filesystem could not be mounted ({e})"
    finally:
        try:
            probe.remove(name)
        except (SandboxError, OSError) as e:
            log.warning("removing the probe workspace under %s: %s", root, e)
    return None
