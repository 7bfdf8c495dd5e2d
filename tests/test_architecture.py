"""The rules of the layout (docs/ARCHITECTURE.md), checked on the source, so that breaking one fails here
and not in a review: the session layer names no driver or agent, only lifecycle.py sets a status, only
sdk.py reaches into the MCP SDK's private parts, sandbox_backends imports nothing of the session layer,
and a long module says why it is long."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_sessions.agents.registry import BUILTIN as BUILTIN_AGENTS
from sandbox_backends.registry import BUILTIN as BUILTIN_DRIVERS

ROOT = Path(__file__).resolve().parent.parent
SESSION_LAYER = ROOT / "mcp_sessions"
PLUGINS = (SESSION_LAYER / "agents",)
"""Plugins live beside the session layer; they are not part of it."""
NAMES = set(BUILTIN_DRIVERS) | set(BUILTIN_AGENTS)
ALLOWED_NAMES = {
    ("settings.py", "local"): "the embedded default driver",
    ("settings.py", "shell"): "the embedded default agent",
}
"""The places the session layer may name a plugin, and why."""
MAX_LINES = 600


def modules(root: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if not any(path.is_relative_to(s) for s in skip):
            yield path


def session_layer() -> Iterator[Path]:
    return modules(SESSION_LAYER, PLUGINS)


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def names_of_plugins(path: Path) -> list[tuple[int, str]]:
    """String constants that are a plugin's name (outside docstrings), and imports of a plugin module."""
    found = []
    module = tree(path)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(module)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    plugin_modules = {target.partition(":")[0] for target in [*BUILTIN_DRIVERS.values(), *BUILTIN_AGENTS.values()]}
    for node in ast.walk(module):
        named = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES
        if named and id(node) not in docstrings and (path.name, node.value) not in ALLOWED_NAMES:
            found.append((node.lineno, repr(node.value)))
        if isinstance(node, ast.ImportFrom):
            imported = node.module or ""
            if node.level:  # relative: resolve against the module's package
                package = path.parent.relative_to(ROOT).parts[: len(path.parent.relative_to(ROOT).parts) - node.level + 1]
                imported = ".".join([*package, *([imported] if imported else [])])
            wanted = [imported] + [f"{imported}.{alias.name}" for alias in node.names]
            for name in wanted:
                if any(name == m or name.startswith(m + ".") for m in plugin_modules):
                    found.append((node.lineno, f"import of {name}"))
                    break
    return found


def test_the_session_layer_names_no_driver_or_agent() -> None:
    found = {f"{path.relative_to(ROOT)}:{line}: {what}" for path in session_layer() for line, what in names_of_plugins(path)}
    assert not found, "the session layer must ask the catalog, not name a plugin:\n" + "\n".join(sorted(found))


def test_the_check_finds_a_named_driver(tmp_path: Path) -> None:
    """The check above fails when it should: code that branches on a driver's name, or imports one."""
    bad = tmp_path / "mcp_sessions" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        '"""Docs may say docker."""\nfrom sandbox_backends.docker.driver import DockerDriver\n\ndef f(d):\n    return d == "docker"\n'
    )
    assert [what for _, what in names_of_plugins(bad)] == ["import of sandbox_backends.docker.driver", "'docker'"]


def status_writes(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(tree(path)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            if any(isinstance(e, ast.Attribute) and e.attr == "status" for e in elements):
                lines.append(node.lineno)
    return lines


def test_only_the_lifecycle_sets_a_status() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules(SESSION_LAYER)
        if path.name != "lifecycle.py"
        for line in status_writes(path)
    ]
    assert not found, "status changes belong in lifecycle.py:\n" + "\n".join(found)


def test_the_status_check_finds_a_status_set_by_hand(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(r):\n    r.session.status = 'dead'\n    s.status, s.reason = 'failed', 'x'\n")
    assert status_writes(bad) == [2, 3]


SDK_PRIVATE = {
    "_request_handlers",
    "_lowlevel_server",
    "_subscriptions",
    "_connection",
    "_request_outbound",
    "_progress_token",
    "_on_progress",
}


def sdk_internals(path: Path) -> list[str]:
    """Uses of the SDK's private attributes: `x._lowlevel_server`, or `getattr(x, "_request_outbound")`."""
    found = []
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Attribute) and node.attr in SDK_PRIVATE:
            found.append(f"{node.lineno}: .{node.attr}")
        if isinstance(node, ast.Constant) and node.value in SDK_PRIVATE:
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_only_sdk_py_reaches_into_the_sdk() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{where}"
        for path in modules(SESSION_LAYER)
        if path.name != "sdk.py"
        for where in sdk_internals(path)
    ]
    assert not found, "wrap SDK internals in mcp_sessions/sdk.py:\n" + "\n".join(found)
    assert sdk_internals(SESSION_LAYER / "sdk.py"), "the check looks for the attributes sdk.py wraps"


def test_sandbox_backends_imports_nothing_of_the_session_layer_or_mcp() -> None:
    found = []
    for path in modules(ROOT / "sandbox_backends"):
        for node in ast.walk(tree(path)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("mcp_sessions", "mcp", "mcp_types")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("package", ["mcp_sessions", "sandbox_backends"])
def test_a_long_module_says_why_it_is_long(package: str) -> None:
    long = []
    for path in modules(ROOT / package):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and "Long because" not in (ast.get_docstring(tree(path)) or ""):
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, (
        f"split these, or say in the docstring why they are over {MAX_LINES} lines ('Long because ...'):\n" + "\n".join(long)
    )
