"""End-to-end timings through the real MCP client and a stdio server, with baselines from the same run.

    python bench/bench_e2e.py --driver local [-n 50]
    python bench/bench_e2e.py --driver docker [-n 50] [--pool 8]

Measures create_session to ready, a `true` round trip through send_message (back to back, and after
100 ms idle, as between a model's calls), and interrupt of `sleep 300` back to ready. Baselines: for local, spawning `bash -c true`; for docker, a raw
`docker exec` (`exec_run`) and `containers.run` + first exec with the docker SDK. Each baseline is
timed in alternation with the operation it is compared to. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from timing import interleaved, timed

IMAGE = os.environ.get("MCP_SESSIONS_IMAGE", "mcp-sessions-sandbox:bookworm")
IDLE_S = 0.1  # a pause before each call, as between the calls of a model: caches and clocks cool down


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return result.structured_content or {}


async def pool_full(size: int) -> None:
    """Wait until the engine runs `size` warm containers and a moment more for their control shells."""
    import docker

    from sandbox_backends.docker import POOL_PREFIX

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


Samples = dict[str, tuple[list[float], list[float] | None]]


async def measure(driver: str, n: int, pool: int) -> Samples:
    """Our timings, each with the baseline's timed in alternation with it (None where there is none)."""
    home = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    args = ["-m", "mcp_sessions", "--driver", driver]
    if pool:
        args += ["--docker-pool", str(pool)]
    env = {**os.environ, "MCP_SESSIONS_HOME": str(home), "MCP_SESSIONS_IMAGE": IMAGE}
    results: Samples = {}
    base = Baseline(driver)
    try:
        async with Client(StdioServerParameters(command=sys.executable, args=args, env=env), mode="legacy") as client:
            created: list[str] = []

            async def create() -> None:
                session = await call(client, "create_session", wait_s=50)
                assert session["status"] == "ready", session
                created.append(session["id"])

            if pool:
                await pool_full(pool)  # before timing claims
            if driver == "docker":
                results["create_session to ready"] = await interleaved(
                    min(n, pool) if pool else max(5, n // 2), create, base.create, warmup=0
                )
            else:
                results["create_session to ready"] = (await timed(n, create, warmup=0), None)
            if pool:  # the claims are being replaced by cold creates: time the rest once the pool is full again
                await pool_full(pool)
            sid = created[0]

            async def send_true() -> None:
                await call(client, "send_message", session_id=sid, text="true")

            async def pause() -> None:
                await anyio.sleep(IDLE_S)

            results["send_message `true`, back to back"] = await interleaved(n, send_true, base.true, warmup=3, block=10)
            results[f"send_message `true`, after {IDLE_S * 1000:.0f} ms idle"] = await interleaved(
                n, send_true, base.true, warmup=1, between=pause
            )

            async def interrupt_sleep() -> None:
                await call(client, "send_message", session_id=sid, text="sleep 300", wait_s=0)
                reply = await call(client, "interrupt", session_id=sid)
                assert reply["status"] == "ready", reply

            results["interrupt `sleep 300` to ready"] = (await timed(max(5, n // 5), interrupt_sleep, warmup=1), None)
            for session_id in created:
                await call(client, "close_session", session_id=session_id, delete=True)
    finally:
        base.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["local", "docker"], default="local")
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--pool", type=int, default=0, help="docker warm pool size (docker only)")
    args = parser.parse_args()
    results = anyio.run(measure, args.driver, args.n, args.pool)
    base_name = "`bash -c true` spawn" if args.driver == "local" else "raw docker SDK"
    label = f"{args.driver}{f', pool {args.pool}' if args.pool else ''}"
    print(f"\n| operation ({label}, over stdio) | median ms | p90 ms | {base_name} median ms | ratio |")
    print("|---|---|---|---|---|")
    for name, (ours, base) in results.items():
        med, p90 = stats(ours)
        if base:
            base_med, _ = stats(base)
            print(f"| {name} | {med:.1f} | {p90:.1f} | {base_med:.1f} | {med / base_med:.2f}x |")
        else:
            print(f"| {name} | {med:.1f} | {p90:.1f} | – | – |")
    print(f"\n{subprocess.run(['uname', '-srm'], capture_output=True, text=True).stdout.strip()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
