"""A local sandbox's mounts (`SandboxSpec.mounts`): links in its folder to the host files, which its
commands see anyway (they share the host's filesystem; under bubblewrap, read-only)."""

from __future__ import annotations

from pathlib import Path

MOUNTS_DIR = "mounts"


def link_mounts(folder: Path, mounts: dict[str, str]) -> None:
    """Make `folder/<name>` a link to each host path (again, so a changed mount is followed)."""
    if not mounts:
        return
    folder.mkdir(exist_ok=True)
    for name, host_path in mounts.items():
        link = folder / name
        link.unlink(missing_ok=True)
        link.symlink_to(host_path)
