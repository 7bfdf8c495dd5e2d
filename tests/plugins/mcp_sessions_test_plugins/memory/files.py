"""The memory sandbox's file tree: folders, files and symlinks, paths resolved like realpath."""

from __future__ import annotations

import posixpath
import re
import threading
from dataclasses import dataclass

WORKSPACE = "/workspace"
STOPPED = 130
"""The exit code of a command stopped by an interrupt, a cancel or a timeout, as bash's on SIGINT."""
STOP_WAIT_S = 10.0
"""How long stopping waits for each background job to end; a job checkpoints at every command."""
CHUNK = 65536
MAX_LINKS = 40
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = {"if", "then", "elif", "else", "fi", "for", "until", "case", "esac", "select", "function", "{", "}"}


# -- the file tree -------------------------------------------------------------------------------


class Folder:
    """The node of a folder."""


FOLDER = Folder()


@dataclass(frozen=True)
class Link:
    target: str


class Files:
    """A sandbox's file tree: absolute normalised paths to nodes. Commands (on the caller's loop) and
    background jobs (on the engine's thread) share it, so every operation holds the lock."""

    def __init__(self) -> None:
        self.nodes: dict[str, bytes | Folder | Link] = {"/": FOLDER, "/tmp": FOLDER, WORKSPACE: FOLDER}
        self.lock = threading.Lock()

    def real(self, path: str, cwd: str, *, follow_last: bool = True) -> str:
        """`path` (absolute, or relative to `cwd`) with `.`, `..` and symlinks resolved, as `realpath -m`."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done = "/" if path.startswith("/") else cwd
        hops = 0
        with self.lock:
            while todo:
                part = todo.pop(0)
                if part == "..":
                    done = posixpath.dirname(done)
                    continue
                step = posixpath.join(done, part)
                node = self.nodes.get(step)
                if isinstance(node, Link) and (todo or follow_last):
                    hops += 1
                    if hops > MAX_LINKS:
                        raise OSError("Too many levels of symbolic links")
                    todo[:0] = [p for p in node.target.split("/") if p not in ("", ".")]
                    if node.target.startswith("/"):
                        done = "/"
                    continue
                done = step
        return done

    def get(self, real: str) -> bytes | Folder | Link | None:
        with self.lock:
            return self.nodes.get(real)

    def children(self, real: str) -> list[tuple[str, bytes | Folder | Link]]:
        """The entries directly in the folder `real`, sorted by name."""
        prefix = real.rstrip("/") + "/"
        with self.lock:
            found = [(p[len(prefix) :], n) for p, n in self.nodes.items() if p.startswith(prefix) and p != prefix]
        return sorted((name, node) for name, node in found if "/" not in name)

    def read(self, real: str) -> bytes:
        node = self.get(real)
        if node is None:
            raise FileNotFoundError("No such file or directory")
        if not isinstance(node, bytes):
            raise IsADirectoryError("Is a directory")
        return node

    def write(self, real: str, data: bytes, *, append: bool = False, parents: bool = False) -> None:
        with self.lock:
            if parents:
                self._make_folders(posixpath.dirname(real))
            self._parent_is_a_folder(real)
            node = self.nodes.get(real)
            if node is FOLDER:
                raise IsADirectoryError("Is a directory")
            self.nodes[real] = node + data if append and isinstance(node, bytes) else bytes(data)

    def mkdir(self, real: str, *, parents: bool) -> None:
        with self.lock:
            if parents:
                self._make_folders(real)
                return
            if real in self.nodes:
                raise FileExistsError("File exists")
            self._parent_is_a_folder(real)
            self.nodes[real] = FOLDER

    def remove(self, real: str) -> None:
        with self.lock:
            node = self.nodes.get(real)
            if node is None:
                raise FileNotFoundError("No such file or directory")
            if node is FOLDER:
                raise IsADirectoryError("Is a directory")
            del self.nodes[real]

    def link(self, target: str, real: str) -> None:
        with self.lock:
            if real in self.nodes:
                raise FileExistsError("File exists")
            self._parent_is_a_folder(real)
            self.nodes[real] = Link(target)

    def _parent_is_a_folder(self, real: str) -> None:
        parent = self.nodes.get(posixpath.dirname(real))
        if parent is None:
            raise FileNotFoundError("No such file or directory")
        if parent is not FOLDER:
            raise NotADirectoryError("Not a directory")

    def _make_folders(self, real: str) -> None:
        path = "/"
        for part in real.split("/"):
            if part:
                path = posixpath.join(path, part)
                node = self.nodes.setdefault(path, FOLDER)
                if node is not FOLDER:
                    raise NotADirectoryError("Not a directory")
