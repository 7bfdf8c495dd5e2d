"""schemathesis against the live HTTP server: every operation of the OpenAPI document, fuzzed (valid and
invalid requests, boundary values, stateful sequences: create, then message, stream, close...), each
answer checked against the document (status, content type, body, SSE events, headers), undeclared methods
answered 405, two owners kept apart. `tests/schemathesis.toml` lists the few narrowed checks and why.

The server runs here, under uvicorn on 127.0.0.1, with the test plugins installed, so the document also
carries a plugin agent's options and a plugin tool's route. Sessions use the `memory` driver: the fuzzer
sends messages of arbitrary text, which a real shell on this machine would run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import anyio
import pytest

from mcp_sessions.settings import Settings

from .test_http import ALICE, BOB, TOKENS, running

pytestmark = pytest.mark.anyio

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 15
"""Examples per operation and phase: the whole run takes under a minute on two cores."""


def wfc_auth(path: Path) -> Path:
    """The two owners as a Web Fuzzing Commons auth file, the form schemathesis reads identities in."""
    users = [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
        for name, token in (("alice", ALICE), ("bob", BOB))
    ]
    path.write_text(json.dumps({"auth": users}))
    return path


async def test_the_http_server_is_true_to_its_openapi_document(plugins_installed: Path, tmp_path: Path) -> None:
    # a turn ends within its command timeout, well inside schemathesis' 5 s request timeout (tests/schemathesis.toml),
    # whatever wait_s the fuzzer sends: a request held up to its wait is an answer, not a network error
    settings = Settings(
        home=tmp_path / "home", driver="memory", rate_limit_per_s=0, max_sessions_per_owner=0, command_timeout_s=1
    )
    async with running(settings, TOKENS) as (base, _):
        env = {**os.environ, "MCP_SESSIONS_TEST_WFC": str(wfc_auth(tmp_path / "auth.json")), "NO_COLOR": "1"}
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{base}/api/v1/openapi.json"]
        command += ["--max-examples", str(EXAMPLES)]
        with anyio.fail_after(900):  # only turns a hang into a failure
            done = await anyio.run_process(command, cwd=tmp_path, env=env, check=False)
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output[-20000:]
    # it ran: every operation of the document, in every phase that generates requests
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert selected and len(set(selected.groups())) == 1 and int(selected[1]) >= 12, output[-5000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output[-5000:]
