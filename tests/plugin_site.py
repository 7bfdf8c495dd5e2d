"""Installs the test plugins (`tests/plugins/`) as pip would, as far as Python's entry-point discovery can tell.

The package is copied into a temporary site folder next to a `*.dist-info` folder (`METADATA`,
`entry_points.txt`, `RECORD`, `INSTALLER`), and the folder goes on `sys.path`, and on `PYTHONPATH` for
the servers a test starts as subprocesses. The server then finds the plugins the way it finds any
third-party package's: by entry point, through `importlib.metadata`. Uninstalling takes the folder off
both paths, forgets the imported modules and removes the folder.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PACKAGE = "mcp_sessions_test_plugins"
SOURCE = Path(__file__).resolve().parent / "plugins" / PACKAGE
VERSION = "0.0.0"
ENTRY_POINTS = {
    "mcp_sessions.drivers": {"memory": f"{PACKAGE}.memory.driver:plugin"},
    "mcp_sessions.agents": {"echo": f"{PACKAGE}.echo_agent:plugin", "scripted": f"{PACKAGE}.conformance_tools:scripted"},
    "mcp_sessions.tools": {
        "word_count": f"{PACKAGE}.word_count_tool:word_count",
        **{
            name: f"{PACKAGE}.conformance_tools:{name}"
            for name in (
                "greet",
                "slow_compute",
                "failing_job",
                "protocol_error_job",
                "confirm_delete",
                "multi_input",
                "test_tool_with_task",
            )
        },
    },
}


def _record_line(site: Path, path: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(site).as_posix()},sha256={digest},{len(data)}"


def write_distribution(site: Path) -> Path:
    """The package and its `*.dist-info` in `site`, as a wheel install leaves them. Returns the dist-info."""
    shutil.copytree(SOURCE, site / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{PACKAGE}-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n")
    (info / "INSTALLER").write_text("pytest\n")
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items()) + "\n"
            for group, points in ENTRY_POINTS.items()
        )
    )
    files = sorted(p for p in site.rglob("*") if p.is_file())
    (info / "RECORD").write_text("".join(_record_line(site, p) + "\n" for p in files) + f"{info.name}/RECORD,,\n")
    return info


@contextmanager
def installed(site: Path) -> Iterator[Path]:
    """The test plugins installed into `site` (an empty folder) until the block ends."""
    write_distribution(site)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.syspath_prepend(str(site))  # also invalidates the import and metadata caches
            patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
            yield site
    finally:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        shutil.rmtree(site, ignore_errors=True)
