"""What the CLI agents cost before the model is asked: `create_session` to ready, and `send_message` to the
first model request reaching the upstream, for claude-code, codex and opencode on the docker driver.

    python bench/bench_cli_agents.py [--n 10] [--write BENCHMARKS.md]

One server, the three agents' model proxies pointed at the tests' fake model server on this machine
(Anthropic Messages, OpenAI Responses, Chat Completions), which answers every request at once. Each
round makes one session of each agent, in a rotating order (so the three see the machine alike), and
times: `create_session` (wait_s) until the session is ready (cold: a new container, the CLI's binary
mounted); then its first and second message, each from the `send_message` call until the fake server
received the turn's first request (the time the CLI took to start and ask, through the proxy). A second
server of the same process keeps a warm pool of one container (`--docker-pool 1`, which binds the
installed CLIs' binaries); right after each cold session, once that pool has refilled, a session of the
same agent is made there, and its `create_session` to ready is timed too (it must come from the pool).
The sessions are closed and deleted as they go. Needs the three CLIs (scripts/install-cli-agents.sh) and the
sandbox image.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import docker
from bench_docker import Table, remove_leftovers
from mcp import Client
from report import paragraph, publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake model server

from mcp_sessions.agents.cli import binaries
from mcp_sessions.app import server_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends.docker.container import DEFAULT_IMAGE
from tests.fake_llm import FakeLLM, Reply

MODELS = {"claude-code": "claude-sonnet-4-5", "codex": "gpt-4.1", "opencode": "gpt-4.1"}


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error and result.structured_content is not None, result.content
    return result.structured_content


async def to_first_request(client: Client, llm: FakeLLM, sid: str) -> float:
    """Seconds from `send_message` to the first model request of the turn at the upstream (the turn then
    waited out)."""
    seen = len(llm.requests)
    started = time.monotonic()
    await call(client, "send_message", session_id=sid, text="say hi", wait_s=0)
    detail = (await call(client, "get_session", session_id=sid, wait_s=60))["session"]
    assert detail["status"] == "ready" and detail["last_turn"]["status"] == "completed", detail
    assert len(llm.requests) > seen, "the turn made no model request"
    return llm.requests[seen].at - started


REFILL_WAIT_S = 1.5
"""Before each warm create: the pool makes its next container 0.1 s after a claim, in about 0.3 s here."""


async def create(client: Client, agent: str) -> tuple[float, dict[str, Any]]:
    """Seconds from `create_session` to a ready session of `agent`, and the session."""
    t0 = time.monotonic()
    session = await call(client, "create_session", agent=agent, model=MODELS[agent], wait_s=60)
    created = time.monotonic() - t0
    assert session["status"] == "ready", session
    return created, session


async def run(n: int, write: Path | None) -> None:
    for name in MODELS:
        binaries.binary(binaries.default_dir(), name)  # says which to install
    table = Table()
    samples: dict[str, dict[str, list[float]]] = {a: {"create": [], "warm": [], "first": [], "second": []} for a in MODELS}
    started_at = time.strftime("%Y-%m-%d %H:%M")
    loads: list[float] = []
    with (
        FakeLLM() as llm,
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp,
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as warm_tmp,
    ):
        llm.script(*[Reply(text="hi", input_tokens=10, output_tokens=1) for _ in range(20 * n * len(MODELS) + 20)])
        upstreams = dict(claude_code_base_url=llm.url, codex_base_url=llm.openai_base_url, opencode_base_url=llm.openai_base_url)
        settings = Settings(home=Path(tmp), driver="docker", image=DEFAULT_IMAGE, **upstreams)
        pooled = Settings(home=Path(warm_tmp), driver="docker", image=DEFAULT_IMAGE, docker_pool=1, **upstreams)
        async with Client(create_server(settings)) as client, Client(create_server(pooled)) as warm_client:
            order = list(MODELS)
            for round_ in range(n + 1):  # the first round warms the engine and the page cache: not counted
                for agent in order:
                    loads.append(os.getloadavg()[0])
                    created, session = await create(client, agent)
                    first = await to_first_request(client, llm, session["id"])
                    second = await to_first_request(client, llm, session["id"])
                    await call(client, "close_session", session_id=session["id"], delete=True)
                    await anyio.sleep(REFILL_WAIT_S)  # the pool refills (in round 0 it is still starting)
                    warm, session = await create(warm_client, agent)
                    await call(warm_client, "close_session", session_id=session["id"], delete=True)
                    if round_:
                        assert session["sandbox"]["pooled"], f"a {agent} session did not come from the warm pool"
                        for key, value in (("create", created), ("warm", warm), ("first", first), ("second", second)):
                            samples[agent][key].append(value)
                order = order[1:] + order[:1]
        engine = docker.from_env()
        remove_leftovers(engine, [server_id(settings)], Path(tmp) / "docker" / "workspaces")
        remove_leftovers(engine, [server_id(pooled)], Path(warm_tmp) / "docker" / "workspaces")
    for agent in MODELS:
        cold = f"{agent}: `create_session` to ready (cold)"
        table.add(cold, samples[agent]["create"])
        table.add(f"{agent}: `create_session` to ready (warm pool)", samples[agent]["warm"], baseline=cold)
    for agent in MODELS:
        table.add(f"{agent}: `send_message` to the first model request, a session's first turn", samples[agent]["first"])
    for agent in MODELS:
        table.add(f"{agent}: `send_message` to the first model request, its second turn", samples[agent]["second"])
    versions = ", ".join(f"{a} {binaries.PINNED[a].version}" for a in MODELS)
    intro = paragraph(
        f"The CLI agents on the docker driver ({versions}), {started_at}, 2 cores shared with other people's",
        f"test runs: 1-minute load average {min(loads):.1f}-{max(loads):.1f} while it ran (so compare the agents",
        "with each other, within this run). Each round makes one session of each agent in a rotating order:",
        "`create_session` to ready (a new container, no warm pool), then two messages, each timed from the",
        "`send_message` call to the first model request reaching the fake upstream (through the model proxy),",
        "which answers at once. Claude Code's second turn goes to its running process; Codex and OpenCode",
        "start their CLI again for every message. OpenCode's time is its own start (run on the host, straight",
        "to the fake server, it takes as long before its first request). Alternated with each cold session,",
        "one of the same agent on a second server with `--docker-pool 1`, served from its pool (the pooled",
        f"container binds the installed CLIs' binaries), made {REFILL_WAIT_S:g} s after the previous one so that the pool has refilled.",
    )
    publish("## CLI agents on docker: create to ready, message to the first model request", intro, table.render(), write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    anyio.run(run, args.n, args.write)


if __name__ == "__main__":
    main()
