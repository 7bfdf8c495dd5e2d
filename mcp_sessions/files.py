"""A session's workspace files for the people behind the agents: a folder's listing and a file's download.

Apart from the manager because neither changes a session: both find its sandbox (owner-checked, like every
read) and ask it. A listing needs a sandbox that can list (`ListsFiles`: docker and local); a download is
the read the `session://{id}/files/{path}` resource makes. Path mistakes are the caller's (400, or 404 for
one that is not there), worded by the sandbox layer, which resolves every path inside the sandbox.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, Field

from sandbox_backends.base import FileTooBig, ListsFiles, NotRegularFile, PathNotAllowed, Sandbox, SandboxNotFound

from .errors import InvalidInput, PayloadTooLarge, SessionBusy, SessionClosed, SessionError, SessionNotFound, Unsupported
from .manager import SessionManager

T = TypeVar("T")


class FileMissing(SessionError):
    code = "file_not_found"


class FileEntry(BaseModel):
    name: str
    path: str = Field(description="The entry's path relative to the workspace: give it back to list or download it.")
    kind: Literal["file", "folder", "symlink", "other"] = Field(
        description="A symlink is not followed; other: a FIFO, socket or device."
    )
    size: int = Field(description="Bytes.")
    modified_at: datetime


class FolderView(BaseModel):
    session_id: str
    path: str = Field(description='The folder relative to the workspace ("" is the workspace).')
    entries: list[FileEntry] = Field(description="Sorted by name; at most 500.")
    more: int = Field(0, description="How many entries were left out of this listing.")
    more_exact: bool = Field(
        True, description="False: there are at least `more` others (a huge folder is not counted to its end)."
    )


async def workspace_of(manager: SessionManager, session_id: str, owner: str | None) -> Sandbox:
    """The sandbox of a session the caller owns, while it has one."""
    record = await manager.store.get(session_id)
    if record is None or (owner is not None and record.session.owner != owner):
        raise SessionNotFound(session_id)
    if record.sandbox_id is None:
        raise SessionBusy(f"Session '{session_id}' has no workspace yet (status {record.session.status}).")
    try:
        return await manager.sandboxes.of(record)
    except SandboxNotFound as e:
        raise SessionClosed(f"The sandbox of session '{session_id}' is gone ({e}); its files cannot be read.") from e


async def _path_errors(work: Callable[[], Awaitable[T]], missing: str) -> T:
    """The sandbox layer's refusals of a path, as the caller's mistakes; `missing` says what is not there (a
    driver's own words may name where its workspace is on the host)."""
    try:
        return await work()
    except FileNotFoundError:
        raise FileMissing(missing) from None
    except FileTooBig as e:
        raise PayloadTooLarge(str(e)) from None
    except (PathNotAllowed, NotRegularFile, NotADirectoryError, IsADirectoryError) as e:
        raise InvalidInput(str(e)) from None


async def list_folder(manager: SessionManager, session_id: str, path: str, owner: str | None = None) -> FolderView:
    sandbox = await workspace_of(manager, session_id, owner)
    if not isinstance(sandbox, ListsFiles):
        raise Unsupported(
            f"Session '{session_id}' runs on a driver that cannot list its folders; read a file by its path "
            f"(the session://{session_id}/files/{{path}} resource, or GET .../files/download?path=...)."
        )
    listing = await _path_errors(lambda: sandbox.list_files(path), f"No such folder in the workspace: '{path}'.")
    entries = [
        FileEntry(
            name=e.name,
            path=posixpath.join(listing.path, e.name),
            kind=e.kind,
            size=e.size,
            modified_at=datetime.fromtimestamp(e.mtime, UTC),
        )
        for e in listing.entries
    ]
    return FolderView(session_id=session_id, path=listing.path, entries=entries, more=listing.more, more_exact=listing.more_exact)


async def read_file(manager: SessionManager, session_id: str, path: str, owner: str | None = None) -> bytes:
    """A workspace file's content, through the manager's read (the resource's), with path mistakes as such."""
    return await _path_errors(
        lambda: manager.read_file(session_id, path, owner=owner), f"No such file in the workspace: '{path}'."
    )
