"""Byte streams through the control shell against `docker exec`, measured in one run on the same engine.

    python bench/bench_streams.py [--n 30] [--mb 100] [--image IMAGE] [--write BENCHMARKS.md]

A docker sandbox has no network interface: `connect_inside` and `serve_inside` relay TCP connections on
its 127.0.0.1 over a control connection of their own. Measures, as a Markdown section:

- a small HTTP request (`GET` of a 13-byte file from `python3 -m http.server` in the sandbox, a new
  connection each) through `connect_inside`, against what a caller without streams would do: a
  `docker exec` of a python3 fetching the same URL inside (`exec_run`);
- a 1-byte round trip on an open stream to an echo server inside;
- throughput of `--mb` MB out of the sandbox (`connect_inside`, a server inside writing) and into it
  (`serve_inside`, a process inside reading what the server's handler writes), against the same bytes
  written by `head -c` to a `docker exec`'s stdout (the exec stream the control shell itself rides on).

Needs a running engine and the sandbox image (scripts/start-docker.sh). Everything it makes is labelled
with a throwaway server id and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.abc
import docker
from bench_docker import Table, docker_version, remove_leftovers
from report import paragraph, publish
from timing import interleaved, timed

from sandbox_backends.base import SandboxSpec
from sandbox_backends.docker import DockerSettings
from sandbox_backends.docker.container import DEFAULT_IMAGE
from sandbox_backends.docker.driver import DockerDriver

SECTION = "## Byte streams into a sandbox without a network"
ECHO = (
    "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', 8101))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n"
    "    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "    while (b := c.recv(65536)):\n        c.sendall(b)\n    c.close()\n"
)
SOURCE = (
    "import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', 8102))\ns.listen()\nblock = b'x' * (1 << 20)\n"
    "while True:\n    c, _ = s.accept()\n    for _ in range(int(sys.argv[1])):\n        c.sendall(block)\n    c.close()\n"
)
SINK = (
    "import socket, sys\nc = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\nn = 0\n"
    "while (b := c.recv(1 << 20)):\n    n += len(b)\nprint(n)\n"
)
FETCH = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/p.txt').read()"


async def drain(stream: anyio.abc.ByteStream) -> int:
    n = 0
    try:
        while True:
            n += len(await stream.receive(1 << 20))
    except anyio.EndOfStream:
        return n


async def main(n: int, mb: int, image: str, write: Path | None) -> None:
    started = time.strftime("%Y-%m-%d %H:%M")
    server_id = "bench-" + secrets.token_hex(4)
    client = docker.from_env(version="auto")
    disk_root = Path(tempfile.mkdtemp(prefix="mcp-bench-disks-"))
    driver = DockerDriver(image=image, server_id=server_id, default_disk_mb=DockerSettings().default_disk_mb, disk_root=disk_root)
    table = Table()
    try:
        sb = await driver.create(SandboxSpec(name="bench-streams-" + secrets.token_hex(3)))
        container = client.containers.get(sb.id)
        await sb.write_file("p.txt", b"hello, world\n")
        await sb.write_file("echo.py", ECHO.encode())
        await sb.write_file("source.py", SOURCE.encode())
        await sb.write_file("sink.py", SINK.encode())
        await sb.exec(
            f"nohup python3 -m http.server 8100 --bind 127.0.0.1 >/dev/null 2>&1 & nohup python3 echo.py >/dev/null 2>&1 & "
            f"nohup python3 source.py {mb} >/dev/null 2>&1 & sleep 1"
        )

        print("small request", file=sys.stderr)

        async def through_stream() -> None:
            stream = await sb.connect_inside(8100)
            async with stream:
                await stream.send(b"GET /p.txt HTTP/1.0\r\n\r\n")
                await drain(stream)

        async def exec_fetch() -> None:
            await anyio.to_thread.run_sync(container.exec_run, ["python3", "-c", FETCH])

        ours, base = await interleaved(n, through_stream, exec_fetch, warmup=3)
        table.add("`docker exec` python3 fetching the URL inside (baseline)", base)
        table.add(
            "HTTP GET through `connect_inside` (new connection)", ours, "`docker exec` python3 fetching the URL inside (baseline)"
        )

        echo = await sb.connect_inside(8101)

        async def round_trip() -> None:
            await echo.send(b"x")
            await echo.receive()

        table.add("1-byte round trip on an open stream", await timed(n * 10, round_trip, warmup=20))
        await echo.aclose()

        print("throughput", file=sys.stderr)

        async def exec_stdout() -> None:
            await anyio.to_thread.run_sync(container.exec_run, ["head", "-c", str(mb << 20), "/dev/zero"])

        async def out_of_sandbox() -> None:
            stream = await sb.connect_inside(8102)
            async with stream:
                assert await drain(stream) == mb << 20

        into: list[int] = []

        async def into_sandbox() -> None:
            block = b"y" * (1 << 20)

            async def handler(stream: anyio.abc.ByteStream) -> None:
                for _ in range(mb):
                    await stream.send(block)

            async with anyio.create_task_group() as tg:
                address = await tg.start(sb.serve_inside, 0, handler)
                got = await sb.exec(f"python3 sink.py {address.split(':')[1]}")
                into.append(int(got.output))
                tg.cancel_scope.cancel()

        rounds = max(3, n // 10)
        base = await timed(rounds, exec_stdout, warmup=1)
        table.add(f"{mb} MB on a `docker exec`'s stdout (baseline)", base)
        table.add(
            f"{mb} MB out through `connect_inside`",
            await timed(rounds, out_of_sandbox, warmup=1),
            f"{mb} MB on a `docker exec`'s stdout (baseline)",
        )
        table.add(f"{mb} MB in through `serve_inside` (incl. starting the reader)", await timed(rounds, into_sandbox, warmup=1))
        assert set(into) == {mb << 20}, into
        await sb.close(delete=True)
    finally:
        await driver.aclose()
        remove_leftovers(client, [server_id], disk_root)
        client.close()

    intro = paragraph(
        f"One run on the same engine: {started}, {os.cpu_count()} cores, Docker {docker_version()}, image `{image}`.",
        "The sandbox has no network (`--network none`); every byte is relayed by its control shell.",
        "Throughput rows are the time for the whole transfer; divide the size by it for MB/s.",
    )
    publish(SECTION, intro, table.render(), write)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="samples per measurement (default 30)")
    parser.add_argument("--mb", type=int, default=100, help="MB per throughput sample (default 100)")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the section into this Markdown file")
    args = parser.parse_args()
    anyio.run(main, args.n, args.mb, args.image, args.write)
