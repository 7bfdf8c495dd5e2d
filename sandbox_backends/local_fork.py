"""Copying a local sandbox, and keeping checkpoints of it: its workspace folder (a reflink copy where the filesystem allows, so a large
workspace costs little until either side changes a file; else a plain copy), and its saved shell state,
pointed at the new workspace.

The state names the workspace by its path (`cd -- /.../ses_A/workspace/src`, and PWD among the exported
variables), and each sandbox has a folder of its own, so the source's path is replaced with the copy's
in it. A path quoted differently in the state (one with spaces or quotes in it) keeps the source's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio

from .base import PhaseCallback, Sandbox, SandboxError, SandboxSpec
from .control.runner import STATE_FILE, promote_state
from .disk import measure

if TYPE_CHECKING:
    from .local import LocalDriver, LocalSandbox


async def copy_tree(source: Path, target: Path) -> None:
    """Copy what is in `source` into the folder `target`, keeping modes, times and links; reflinked where the
    filesystem can. Raises SandboxError with what went wrong."""
    cp = shutil.which("cp")
    if cp is None:
        raise SandboxError("Cannot copy the workspace: there is no `cp` on this machine's PATH.")
    result = await anyio.run_process([cp, "-a", "--reflink=auto", f"{source}/.", f"{target}/"], check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise SandboxError(f"Copying the workspace failed: {detail[-1] if detail else f'cp exited with {result.returncode}'}.")


async def fork(
    driver: LocalDriver, source: LocalSandbox, spec: SandboxSpec, on_phase: PhaseCallback | None, at: tuple[str, bytes] | None
) -> LocalSandbox:
    """A new sandbox for `spec` with a copy of `source`'s workspace and shell state (see the module docstring),
    or of its checkpoint `at` (key, shell state)."""
    sandbox = await driver.create(spec, on_phase)
    try:
        if on_phase:
            await on_phase("copying_workspace", f"from {source.workspace}")
        await copy_tree(Path(source.workspace) if at is None else checkpoint_dir(source, at[0]), Path(sandbox.workspace))
        state = shell_state(source) if at is None else at[1]
        if state:
            state = state.replace(source.workspace.encode(), sandbox.workspace.encode())
            (sandbox._state / STATE_FILE).write_bytes(state)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await sandbox.close(delete=True)
        raise
    return sandbox


# -- checkpoints: a copy of the workspace beside it, out of the commands' reach only by convention --------


def checkpoint_dir(sandbox: LocalSandbox, key: str) -> Path:
    return Path(sandbox.workspace).parent / ".checkpoints" / key


def shell_state(sandbox: LocalSandbox) -> bytes:
    promote_state(sandbox._state)
    try:
        return (sandbox._state / STATE_FILE).read_bytes()
    except FileNotFoundError:
        return b""


async def checkpoint(sandbox: LocalSandbox, key: str) -> tuple[int, bytes]:
    target = checkpoint_dir(sandbox, key)
    await anyio.to_thread.run_sync(lambda: shutil.rmtree(target, ignore_errors=True))
    target.mkdir(parents=True)
    try:
        await copy_tree(Path(sandbox.workspace), target)
        used = await measure(target, 1 << 30)
    except BaseException:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(target, ignore_errors=True))
        raise
    return used.used_mb, shell_state(sandbox)


async def restore(sandbox: LocalSandbox, key: str, state: bytes) -> None:
    source, workspace = checkpoint_dir(sandbox, key), Path(sandbox.workspace)
    if not source.is_dir():
        raise SandboxError(f"The checkpoint {key} is gone from {source.parent}.")

    def empty() -> None:
        for entry in workspace.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    await anyio.to_thread.run_sync(empty)
    await copy_tree(source, workspace)
    if state:
        (sandbox._state / STATE_FILE).write_bytes(state)


def drop(root: Path, name: str, key: str) -> None:
    shutil.rmtree(root / name / ".checkpoints" / key, ignore_errors=True)


class LocalCopies:
    """The part of `LocalDriver` that copies sandboxes (`Forks`) and keeps their checkpoints (`Checkpoints`)."""

    root: Path

    async def fork(
        self, source: Sandbox, spec: SandboxSpec, on_phase: PhaseCallback | None = None, at: tuple[str, bytes] | None = None
    ) -> LocalSandbox:
        from .local import LocalSandbox  # this module is a part of local.py's driver, imported by it

        if not isinstance(source, LocalSandbox):
            raise SandboxError("The local driver copies only local sandboxes.")
        return await fork(cast("LocalDriver", self), source, spec, on_phase, at)

    async def checkpoint(self, sandbox: Sandbox, key: str) -> tuple[int, bytes]:
        """A copy of the workspace in the sandbox's folder, beside the workspace (`.checkpoints/KEY`)."""
        return await checkpoint(cast("LocalSandbox", sandbox), key)

    async def restore(self, sandbox: Sandbox, key: str, state: bytes) -> None:
        await sandbox.interrupt()  # what earlier commands left running would write on into the restored files
        await restore(cast("LocalSandbox", sandbox), key, state)

    async def drop_checkpoint(self, name: str, key: str) -> None:
        await anyio.to_thread.run_sync(drop, self.root, name, key)
