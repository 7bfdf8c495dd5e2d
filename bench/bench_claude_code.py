"""What a Claude Code turn costs: the claude-code agent's long-lived process against a new `claude -p
--resume` process per turn, in one run, both answered at once by a fake Anthropic server on this machine (the comparison on the local driver; on
docker, the agent's turns alone).

    python bench/bench_claude_code.py [--n 20] [--driver local|docker] [--write BENCHMARKS.md]

Both go through the same server and MCP client (`send_message` until the reply): the agent's turn is
one stream-json line to its running process, through the model proxy; the baseline is a `shell` session
whose message runs `claude -p <msg> --resume <id>` with the same quiet settings (and, on the local
driver, straight to the fake server: no proxy in its way). Timed in alternation. Also: a session's
first turn, which starts its process. Target: long-lived ≤ 0.2x of a process per turn. Needs Claude
Code installed (scripts/install-cli-agents.sh claude-code).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import anyio
import docker
from bench_docker import Table, remove_leftovers
from mcp import Client
from report import paragraph, publish
from timing import interleaved, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake model server

from mcp_sessions.agents.cli import binaries
from mcp_sessions.agents.cli.claude_code import QUIET_ENV
from mcp_sessions.app import server_id
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings
from sandbox_backends.docker.container import DEFAULT_IMAGE
from tests.fake_llm import FakeLLM, Reply

PER_TURN = "`claude -p --resume`: a process per turn"
LONG_LIVED = "claude-code agent: one long-lived process"
MODEL = "claude-sonnet-4-5"


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error and result.structured_content is not None, result.content
    return result.structured_content


async def turn(client: Client, sid: str, text: str) -> None:
    reply = await call(client, "send_message", session_id=sid, text=text, wait_s=50)
    assert reply["turn_status"] == "completed", reply


async def run(n: int, driver: str, write: Path | None) -> None:
    claude = binaries.binary(binaries.default_dir(), "claude-code")
    table = Table()
    with FakeLLM() as llm, tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        llm.script(*[Reply(text="hi", input_tokens=10, output_tokens=1) for _ in range(4 * n + 40)])
        home = Path(tmp)
        settings = Settings(home=home, driver=driver, image=DEFAULT_IMAGE, claude_code_base_url=llm.url, claude_code_api_key="k")
        async with Client(create_server(settings)) as client:
            cold: list[float] = []

            async def first_turn() -> None:
                sid = (await call(client, "create_session", agent="claude-code", model=MODEL))["id"]
                cold.extend(await timed(1, lambda: turn(client, sid, "say hi")))
                await call(client, "close_session", session_id=sid, delete=True)

            for _ in range(max(3, n // 4)):
                await first_turn()
            long_lived = (await call(client, "create_session", agent="claude-code", model=MODEL))["id"]
            await turn(client, long_lived, "say hi")
            if driver == "local":
                per_turn = (await call(client, "create_session", agent="shell"))["id"]
                conversation = str(uuid.uuid4())
                env = {**QUIET_ENV, "HOME": str(home / "baseline-home"), "ANTHROPIC_BASE_URL": llm.url, "ANTHROPIC_API_KEY": "k"}
                exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
                base = f"mkdir -p {shlex.quote(env['HOME'])} && {exports} {shlex.quote(str(claude))} -p 'say hi' --model {MODEL}"
                base += " --output-format stream-json --verbose --dangerously-skip-permissions >/dev/null"
                await turn(client, per_turn, f"{base} --session-id {conversation}")
                a, b = await interleaved(
                    n,
                    lambda: turn(client, long_lived, "say hi"),
                    lambda: turn(client, per_turn, f"{base} --resume {conversation}"),
                )
                table.add(PER_TURN, b)
                table.add(LONG_LIVED, a, PER_TURN, max_ratio=0.2)
            else:  # a process per turn would need the fake server inside the container: the local run compares
                table.add(LONG_LIVED, await timed(n, lambda: turn(client, long_lived, "say hi")))
            table.add("claude-code agent: a session's first turn (starts its process)", cold)
        if driver == "docker":
            remove_leftovers(docker.from_env(), [server_id(settings)], home / "docker" / "workspaces")
    intro = paragraph(
        f"A trivial turn (the fake model answers at once) through the server, `send_message` to the reply, on the {driver} driver,",
        f"Claude Code {binaries.PINNED['claude-code'].version}; the two ways timed in alternation.",
        "The process per turn (local only) is `claude -p ... --resume <id>` run by a shell session, straight to the fake server.",
    )
    publish(
        f"## Claude Code turns on the {driver} driver: one long-lived process, a process per turn", intro, table.render(), write
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--driver", choices=["local", "docker"], default="local")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    anyio.run(run, args.n, args.driver, args.write)


if __name__ == "__main__":
    main()
