"""Copying a local sandbox: its workspace folder (a reflink copy where the filesystem allows, so a large
workspace costs little until either side changes a file; else a plain copy), and its saved shell state,
pointed at the new workspace.

The state names the workspace by its path (`cd -- /.../ses_A/workspace/src`, and PWD among the exported
variables), and each sandbox has a folder of its own, so the source's path is replaced with the copy's
in it. A path quoted differently in the state (one with spaces or quotes in it) keeps the source's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .base import PhaseCallback, SandboxError, SandboxSpec
from .control.runner import STATE_FILE, promote_state

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


async def fork(driver: LocalDriver, source: LocalSandbox, spec: SandboxSpec, on_phase: PhaseCallback | None) -> LocalSandbox:
    """A new sandbox for `spec` with a copy of `source`'s workspace and shell state (see the module docstring)."""
    sandbox = await driver.create(spec, on_phase)
    try:
        if on_phase:
            await on_phase("copying_workspace", f"from {source.workspace}")
        await copy_tree(Path(source.workspace), Path(sandbox.workspace))
        state_dir = source._state
        promote_state(state_dir)  # a finished command whose state its server did not put in force yet
        try:
            state = (state_dir / STATE_FILE).read_bytes()
        except FileNotFoundError:
            state = b""
        if state:
            state = state.replace(source.workspace.encode(), sandbox.workspace.encode())
            (sandbox._state / STATE_FILE).write_bytes(state)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await sandbox.close(delete=True)
        raise
    return sandbox
