"""Load: many concurrent sessions through one server, over stdio (MCP) and over HTTP (REST).

    python bench/bench_load.py --transport stdio --sessions 100 --messages 20
    python bench/bench_load.py --transport http --sessions 100 --messages 20
    python bench/bench_load.py --transport stdio --sessions 100 --idle 100   # also hold 100 more, idle

Starts `python -m mcp_sessions` (stdio, or `serve --http` on a loopback port) with the docker driver
and a fresh state folder, creates `--sessions` sessions (at most `--create-concurrency` at a time),
then has every session send `--messages` messages (`echo <n>`) one after another, all sessions at
once. Reports throughput, median and p99 latency of a message, errors, the server's CPU time and
resident memory, and the server's resident memory per idle session (before the first create vs. with
every session open and idle). Closes and deletes every session at the end. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters

IMAGE = os.environ.get("MCP_SESSIONS_IMAGE", "mcp-sessions-sandbox:bookworm")
TICK = os.sysconf("SC_CLK_TCK")


def server_pid(home: Path) -> int:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                env = Path(f"/proc/{entry.name}/environ").read_bytes()
            except OSError:
                continue
            if b"mcp_sessions" in cmd and f"MCP_SESSIONS_HOME={home}".encode() in env.split(b"\0"):
                return int(entry.name)
    raise RuntimeError("server process not found")


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Stdio:
    """Tool calls through the MCP client over stdio."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def call(self, tool: str, **args: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, args)
        if result.is_error:
            raise RuntimeError(result.content[0].text)
        return result.structured_content or {}

    async def create(self) -> str:
        s = await self.call("create_session", wait_s=50)
        if s["status"] != "ready":
            raise RuntimeError(f"session {s['id']} is {s['status']}: {s.get('failure_reason')}")
        return s["id"]

    async def send(self, sid: str, text: str) -> dict[str, Any]:
        return await self.call("send_message", session_id=sid, text=text, wait_s=50)

    async def close(self, sid: str) -> None:
        await self.call("close_session", session_id=sid, delete=True)


class Rest:
    """The same operations through the REST API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        return response.json()

    async def create(self) -> str:
        s = await self._json(await self.client.post("/api/v1/sessions", params={"wait_s": 50}, json={}))
        if s["status"] != "ready":
            raise RuntimeError(f"session {s['id']} is {s['status']}: {s.get('failure_reason')}")
        return s["id"]

    async def send(self, sid: str, text: str) -> dict[str, Any]:
        return await self._json(
            await self.client.post(f"/api/v1/sessions/{sid}/messages", params={"wait_s": 50}, json={"text": text, "queue": False})
        )

    async def close(self, sid: str) -> None:
        await self._json(await self.client.post(f"/api/v1/sessions/{sid}/close", params={"delete": "true"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env = {**os.environ, "MCP_SESSIONS_HOME": str(home), "MCP_SESSIONS_IMAGE": IMAGE, "MCP_SESSIONS_DRIVER": "docker"}
    env.update(
        {"MCP_SESSIONS_MAX_SESSIONS_PER_OWNER": "0", "MCP_SESSIONS_RATE_LIMIT_PER_S": "0", "MCP_SESSIONS_IDLE_TIMEOUT_S": "0"}
    )
    if args.transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_sessions"], env=env)
        async with Client(params, mode="legacy") as client:
            return await measure(Stdio(client), server_pid(home), args)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mcp_sessions", "serve", "--http", "--port", str(port)], env=env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            with anyio.fail_after(60):
                while True:
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.2)
            return await measure(Rest(client), proc.pid, args)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def bounded(items: list[Any], limit: int, fn: Callable[[Any], Awaitable[None]]) -> None:
    limiter = anyio.CapacityLimiter(limit)

    async def one(item: Any) -> None:
        async with limiter:
            await fn(item)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)


async def measure(api: Stdio | Rest, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    await anyio.sleep(1)
    rss_start = rss_mb(pid)
    errors: list[str] = []
    sids: list[str] = []

    async def create(_: int) -> None:
        try:
            sids.append(await api.create())
        except Exception as e:
            errors.append(f"create: {e}")

    started = time.perf_counter()
    await bounded(list(range(args.sessions + args.idle)), args.create_concurrency, create)
    create_s = time.perf_counter() - started
    await anyio.sleep(2)
    rss_idle = rss_mb(pid)
    per_idle_kb = (rss_idle - rss_start) * 1024 / max(len(sids), 1)

    latencies: list[float] = []
    busy = sids[: args.sessions]

    async def converse(sid: str) -> None:
        for n in range(args.messages):
            t0 = time.perf_counter()
            try:
                reply = await api.send(sid, f"echo {n}")
                if reply.get("turn_status") != "completed" or reply.get("output") != f"{n}\n":
                    errors.append(f"send: {reply.get('turn_status')} {reply.get('output')!r} {reply.get('reason')}")
                    continue
            except Exception as e:
                errors.append(f"send: {e}")
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0 = cpu_s(pid)
    peak = rss_mb(pid)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as outer:

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mb(pid))
                await anyio.sleep(0.5)

        outer.start_soon(sample)
        async with anyio.create_task_group() as tg:
            for sid in busy:
                tg.start_soon(converse, sid)
        outer.cancel_scope.cancel()
    wall = time.perf_counter() - t0
    cpu = cpu_s(pid) - cpu0
    rss_end = rss_mb(pid)

    await bounded(sids, args.create_concurrency, api.close)
    ordered = sorted(latencies)
    return {
        "transport": args.transport,
        "sessions": len(busy),
        "idle_extra": len(sids) - len(busy),
        "messages": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "create_s": create_s,
        "throughput": len(latencies) / wall if wall else 0.0,
        "median_ms": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99_ms": ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000 if ordered else float("nan"),
        "cpu_pct": cpu / wall * 100 if wall else 0.0,
        "rss_start": rss_start,
        "rss_idle": rss_idle,
        "rss_peak": peak,
        "rss_end": rss_end,
        "per_idle_kb": per_idle_kb,
        "open_sessions": len(sids),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--sessions", type=int, default=100, help="sessions that each send --messages messages, all at once")
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--idle", type=int, default=0, help="extra sessions held open and idle meanwhile")
    parser.add_argument("--create-concurrency", type=int, default=8)
    args = parser.parse_args()
    r = anyio.run(run, args)
    print(
        "| transport | sessions busy + idle | messages | errors | throughput (msg/s) | median | p99 | server CPU | "
        "server RSS: start / all idle / peak | RSS per idle session | create all |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {r['transport']} | {r['sessions']} + {r['idle_extra']} | {r['messages']} | {r['errors']} | "
        f"{r['throughput']:.0f} | {r['median_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['cpu_pct']:.0f}% of a core | "
        f"{r['rss_start']:.0f} / {r['rss_idle']:.0f} / {r['rss_peak']:.0f} MB | {r['per_idle_kb']:.0f} KB | {r['create_s']:.0f} s |"
    )
    if r["first_errors"]:
        print("first errors:", *r["first_errors"], sep="\n  ", file=sys.stderr)


if __name__ == "__main__":
    main()
