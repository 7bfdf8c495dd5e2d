"""The official MCP conformance suite (@modelcontextprotocol/conformance, two pinned releases, installed by
scripts/install-conformance.sh) against the real server as a user starts it: `serve --http` with default
flags, and the stdio server behind tests/stdio_bridge.py; in the handshake era, and in 2026-07-28 with
the newer release. What does not apply is listed, with the reason, in conformance_expected_failures.yaml;
a new failure, or an entry there that starts passing, fails the test. The tasks scenarios of 2026-07-28
call the suite's own fixture tools: they run whole against a server with the test plugins installed
(tests/plugins/mcp_sessions_test_plugins/conformance_tools.py), and are left out of the default runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.ci import unavailable

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / ".ci/conformance"
NODE = SUITES / "node-22.23.3/node_modules/.bin"
BASELINE = Path(__file__).with_name("conformance_expected_failures.yaml")
RUNS = [
    ("0.1.16", None),
    ("0.2.0-alpha.12", None),
    ("0.2.0-alpha.12", "2026-07-28"),
]
"""(suite release, requirement set): None runs the release's active suite (the handshake era)."""
TASKS_RELEASE = "0.2.0-alpha.12"
TASKS_SCENARIOS = [
    "tasks-lifecycle",
    "tasks-capability-negotiation",
    "tasks-wire-fields",
    "tasks-request-state-removal",
    "tasks-mrtr-input",
    "tasks-request-headers",
    "tasks-dispatch-and-envelope",
    "tasks-required-task-error",
    "tasks-mrtr-composition",
]
"""The scenarios of the io.modelcontextprotocol/tasks extension that call the suite's fixture tools (its
tasks-status-notifications is skipped by the suite itself, pending a rewrite)."""

if not (NODE / "node").exists() or not all((SUITES / release / "node_modules/.bin/conformance").exists() for release, _ in RUNS):
    unavailable(f"the MCP conformance suite is not in {SUITES}: run scripts/install-conformance.sh", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    return {**env, "MCP_SESSIONS_HOME": str(home)}


@contextmanager
def serving_http(folder: Path) -> Iterator[str]:
    """`mcp-sessions serve --http` with default flags (but a free port), as a process; its URL."""
    port = free_port()
    command = [sys.executable, "-m", "mcp_sessions", "serve", "--http", "--port", str(port)]
    with subprocess.Popen(command, env=environment(folder / "home"), stderr=(folder / "stderr").open("w")) as server:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, (folder / "stderr").read_text()
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.terminate()


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_http(tmp_path_factory.mktemp("http")) as url:
        yield url


@pytest.fixture(scope="module")
def stdio_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stdio server (`python -m mcp_sessions`, as an MCP host starts it) behind the bridge."""
    home = tmp_path_factory.mktemp("stdio")
    command = [sys.executable, "-m", "tests.stdio_bridge", "--", sys.executable, "-m", "mcp_sessions"]
    with subprocess.Popen(
        command, cwd=ROOT, env=environment(home / "home"), stdout=subprocess.PIPE, stderr=(home / "stderr").open("w"), text=True
    ) as bridge:
        try:
            assert bridge.stdout is not None
            line = bridge.stdout.readline()
            assert line.startswith("listening on "), (home / "stderr").read_text()
            yield line.split()[-1]
        finally:
            bridge.terminate()


def conformance(release: str, url: str, out: Path, *options: str) -> str:
    """Run the suite against `url`: the summary of its report, after asserting that it passed."""
    command = [str(SUITES / release / "node_modules/.bin/conformance"), "server", "--url", url, "-o", str(out), *options]
    env = {**os.environ, "PATH": f"{NODE}:{os.environ['PATH']}", "NO_COLOR": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    report = run.stdout[max(run.stdout.rfind("=== SUMMARY ==="), 0) :]
    assert run.returncode == 0, report or run.stderr
    return report


@pytest.mark.parametrize("transport", ["http", "stdio"])
@pytest.mark.parametrize(("release", "requirements"), RUNS, ids=[f"{r}-{q or 'handshake'}" for r, q in RUNS])
def test_the_conformance_suite_passes_what_applies(
    request: pytest.FixtureRequest, transport: str, release: str, requirements: str | None, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{transport}_url")
    baseline = BASELINE
    if requirements:  # the tasks scenarios run whole in the test below, with their fixtures
        baseline = tmp_path / "baseline.yaml"
        baseline.write_text(BASELINE.read_text() + "".join(f"  - {name}\n" for name in TASKS_SCENARIOS))
    options = ["--expected-failures", str(baseline), *(["--requirements", requirements] if requirements else [])]
    report = conformance(release, url, tmp_path / "out", *options)
    assert "Baseline check passed" in report and "Unexpected" not in report, report


def test_the_tasks_scenarios_pass_with_the_suites_fixture_tools(plugins_installed: Path, tmp_path: Path) -> None:
    """greet, slow_compute, failing_job, ... as tool plugins that run as tasks like send_message: every
    check of every tasks scenario passes, none expected to fail."""
    with serving_http(tmp_path) as url:
        for scenario in TASKS_SCENARIOS:
            report = conformance(TASKS_RELEASE, url, tmp_path / scenario, "--scenario", scenario)
            assert ", 0 failed, 0 warnings" in report and "FAILURE" not in report, (scenario, report)
