"""End-to-end timings through the real MCP client and a stdio server, with baselines from the same run.

    python bench/bench_e2e.py --driver docker [-n 60] [--pool 8] [--write BENCHMARKS.md]
    python bench/bench_e2e.py --driver local [-n 60] [--write BENCHMARKS.md]

One command measures, in one run: create_session to ready (for docker: cold, then claimed from the
warm pool of a second server started with `--docker-pool`), a `true` round trip through send_message
(back to back, and after 100 ms idle, as between a model's calls), and interrupt of `sleep 300` back
to ready. Baselines: for local, spawning `bash -c true`; for docker, a raw `docker exec` (`exec_run`)
and `containers.run` + first `exec_run` with the docker SDK. Each baseline is timed in alternation
with the operation it is compared to. For reference, it also times a trivial tool on a bare SDK
server (sdk_floor_server.py): the protocol's own cost on the machine, under every call above. Prints a Markdown section with the targets; --write puts it
into that file (BENCHMARKS.md), replacing the section of the same driver.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from report import command_line, paragraph, target_cell, write_section
from timing import interleaved, timed

IMAGE = os.environ.get("MCP_SESSIONS_IMAGE", "mcp-sessions-sandbox:bookworm")
IDLE_S = 0.1  # a pause before each call, as between the calls of a model: caches and clocks cool down
SEND_TARGET = 0.1  # send_message `true` over stdio: at most this times a raw `docker exec`
POOL_TARGET_MS = 25.0  # create_session from the warm pool over stdio
INTERRUPT_TARGET_MS = 1000.0


def stats(samples: list[float]) -> tuple[float, float]:
    """Median and p90, in ms."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


@dataclass
class Row:
    name: str
    ours: list[float]
    baseline: list[float] | None = None
    baseline_name: str = ""
    max_ratio: float | None = None
    max_ms: float | None = None

    def render(self) -> str:
        med, p90 = stats(self.ours)
        base_med = stats(self.baseline)[0] if self.baseline else None
        base = f"{self.baseline_name}: {base_med:.1f} ms" if base_med else ""
        ratio = f"{med / base_med:.2f}x" if base_med else ""
        target = target_cell(med, base_med, self.max_ratio, self.max_ms)
        return f"| {self.name} | {med:.1f} | {p90:.1f} | {base} | {ratio} | {target} |"


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return result.structured_content or {}


async def pool_full(size: int) -> None:
    """Wait until the engine runs `size` warm containers and a moment more for their control shells."""
    import docker

    from sandbox_backends.docker.container import POOL_PREFIX

    engine = docker.from_env()
    with anyio.fail_after(120):
        while len(await anyio.to_thread.run_sync(lambda: engine.containers.list(filters={"name": POOL_PREFIX}))) < size:
            await anyio.sleep(0.5)
    await anyio.sleep(1.0)


class Baseline:
    """The same operations done without the server: `bash -c true` spawns, or raw docker SDK calls."""

    def __init__(self, driver: str) -> None:
        self.driver = driver
        self.containers: list[Any] = []
        if driver == "docker":
            import docker

            self.engine = docker.from_env()

    def _run_and_exec(self) -> None:
        container = self.engine.containers.run(
            image=IMAGE, command=["sleep", "infinity"], network_mode="none", detach=True, init=True
        )
        self.containers.append(container)
        container.exec_run(["true"])

    async def create(self) -> None:
        await anyio.to_thread.run_sync(self._run_and_exec)

    async def true(self) -> None:
        if self.driver == "local":
            await anyio.run_process(["bash", "-c", "true"])
            return
        if not self.containers:
            await self.create()
        target = self.containers[0]
        await anyio.to_thread.run_sync(lambda: target.exec_run(["true"]))

    def close(self) -> None:
        for container in self.containers:
            container.remove(force=True)


@asynccontextmanager
async def server(driver: str, pool: int = 0) -> AsyncIterator[Client]:
    """A client connected to a new `python -m mcp_sessions` over stdio, with a fresh state folder."""
    home = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    args = ["-m", "mcp_sessions", "--driver", driver, *(["--docker-pool", str(pool)] if pool else [])]
    env = {**os.environ, "MCP_SESSIONS_HOME": str(home), "MCP_SESSIONS_IMAGE": IMAGE}
    async with Client(StdioServerParameters(command=sys.executable, args=args, env=env), mode="legacy") as client:
        yield client


async def floor_rows(n: int, pause: Callable[[], Awaitable[None]]) -> list[Row]:
    """A trivial tool on a bare SDK server over stdio: what the protocol alone costs on this machine."""
    floor = Path(__file__).with_name("sdk_floor_server.py")
    params = StdioServerParameters(command=sys.executable, args=[str(floor)])
    async with Client(params, mode="legacy") as client:

        async def ping() -> None:
            await call(client, "ping", n=1)

        return [
            Row("for reference: a trivial tool on a bare SDK server, back to back", await timed(n, ping, warmup=3)),
            Row(f"for reference: the same, after {IDLE_S * 1000:.0f} ms idle", await timed(n, ping, warmup=1, between=pause)),
        ]


async def measure(driver: str, n: int, pool: int) -> list[Row]:
    docker = driver == "docker"
    exec_name = "raw `docker exec`" if docker else "spawning `bash -c true`"
    create_name = "`containers.run` + first `exec_run`"
    rows: list[Row] = []
    base = Baseline(driver)
    created: list[str] = []

    def creator(client: Client) -> Callable[[], Awaitable[None]]:
        async def create() -> None:
            session = await call(client, "create_session", wait_s=50)
            assert session["status"] == "ready", session
            created.append(session["id"])

        return create

    async def close_created(client: Client) -> None:
        while created:
            await call(client, "close_session", session_id=created.pop(), delete=True)

    try:
        async with server(driver) as client:
            if docker:
                ours, raw = await interleaved(max(5, n // 2), creator(client), base.create, warmup=0)
                rows.append(Row("`create_session` to ready, cold", ours, raw, create_name))
            else:
                rows.append(Row("`create_session` to ready", await timed(n, creator(client), warmup=0)))
            sid = created[0]

            async def send_true() -> None:
                await call(client, "send_message", session_id=sid, text="true")

            async def pause() -> None:
                await anyio.sleep(IDLE_S)

            target = SEND_TARGET if docker else None
            ours, raw = await interleaved(n, send_true, base.true, warmup=3, block=10)
            rows.append(Row("`send_message` `true`, back to back", ours, raw, exec_name, max_ratio=target))
            ours, raw = await interleaved(n, send_true, base.true, warmup=1, between=pause)
            rows.append(Row(f"`send_message` `true`, after {IDLE_S * 1000:.0f} ms idle", ours, raw, exec_name, max_ratio=target))

            async def interrupt_sleep() -> None:
                await call(client, "send_message", session_id=sid, text="sleep 300", wait_s=0)
                reply = await call(client, "interrupt", session_id=sid)
                assert reply["status"] == "ready", reply

            rows += await floor_rows(n, pause)

            interrupts = await timed(max(5, n // 5), interrupt_sleep, warmup=1)
            rows.append(Row("interrupt `sleep 300` to ready", interrupts, max_ms=INTERRUPT_TARGET_MS))
            await close_created(client)

        if docker and pool:
            async with server(driver, pool) as client:
                await pool_full(pool)  # before timing claims
                ours, raw = await interleaved(min(n, pool), creator(client), base.create, warmup=0)
                name = f"`create_session` to ready, from a warm pool of {pool}"
                rows.append(Row(name, ours, raw, create_name, max_ms=POOL_TARGET_MS))
                await close_created(client)
    finally:
        base.close()
    return rows


def engine_version() -> str:
    import docker

    try:
        return docker.from_env().version().get("Version", "?")
    except Exception:
        return "?"


def section(driver: str, pool: int, rows: list[Row], started: str) -> str:
    machine = f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if driver == "docker":
        machine += f", Docker {engine_version()}, image `{IMAGE}`"
    how = [
        f"The MCP Python SDK client (handshake era) talking to `python -m mcp_sessions --driver {driver}` over stdio,",
        f"each tool call timed from the client; {started}, {machine}. Each baseline is timed in alternation with",
        "what it is compared to: back to back in blocks of ten calls, and after idle one call of each side after a",
        f"{IDLE_S * 1000:.0f} ms pause, the way a model spaces its calls.",
    ]
    if driver == "docker":
        how.append("The cold baseline is a plain `containers.run`, without the sandbox's limits, volume and tmpfs.")
        if pool:
            how.append(f"The pool row comes from a second server started with `--docker-pool {pool}`, once its pool is full.")
    how.append(
        "The reference rows time a tool that answers at once on a bare SDK server (`bench/sdk_floor_server.py`),"
        " right after the `send_message` rows: the floor under any call through the SDK over stdio."
    )
    lines = [
        f"## End to end over stdio: {driver}",
        "",
        paragraph(*how),
        "",
        "```",
        command_line(),
        "```",
        "",
        "| operation | median ms | p90 ms | baseline, same run (median) | ratio | target |",
        "|---|---:|---:|---|---|---|",
        *(row.render() for row in rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["local", "docker"], default="local")
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--pool", type=int, default=8, help="docker: the warm pool of the second server (0: no pool row)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the section into this Markdown file")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = anyio.run(measure, args.driver, args.n, args.pool)
    text = section(args.driver, args.pool, rows, started)
    print(text)
    if args.write:
        write_section(args.write, text)
        print(f"written to {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
