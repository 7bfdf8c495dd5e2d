"""What stronger isolation costs: docker sessions under gVisor (runsc) against runc, and local sessions in
bubblewrap against plain ones, in one run.

    python bench/bench_isolation.py [--n 20] [--image IMAGE] [--write BENCHMARKS.md]

For runc and runsc, timed in alternation so both see the machine in the same state, each as the server
makes them (workspaces of the default size on filesystems of their own where the host allows it):

- a cold create until the first `true` has run;
- a create claimed from the warm pool until the first `true` has run;
- a `true` round trip through the driver (back to back);
- a 1 MB file written and read back through the control shell.

and for the local driver, a `true` round trip plain and with isolation="bwrap".

Targets: runsc cold create ≤ 1.5x runc, round trip ≤ 2x runc; bwrap round trip ≤ 1.2x plain. Needs the
engine, the sandbox image, runsc registered and bwrap (scripts/start-docker.sh, scripts/install-runsc.sh,
scripts/install-bwrap.sh). Everything it makes is labelled
with a throwaway server id and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
import docker
from bench_docker import Table, docker_version, remove_leftovers
from report import paragraph, publish
from timing import interleaved

from sandbox_backends.base import FailureCallback, Limits, SandboxSpec
from sandbox_backends.docker import DockerSettings
from sandbox_backends.docker.container import DEFAULT_IMAGE, GVISOR_RUNTIME
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox
from sandbox_backends.local import LocalDriver

SECTION = "## Isolation: gVisor against runc, bubblewrap against plain"
RUNTIMES = ("runc", GVISOR_RUNTIME)


async def docker_part(n: int, image: str, table: Table) -> None:
    server_id = "bench-" + secrets.token_hex(4)
    disk_root = Path(tempfile.mkdtemp(prefix="mcp-bench-disks-"))
    as_served = {"default_disk_mb": DockerSettings().default_disk_mb, "disk_root": disk_root}
    # A server id each: a driver's watch reports the other's containers as removed otherwise.
    drivers = {
        rt: DockerDriver(image=image, server_id=f"{server_id}-{rt}", runtime=rt, pool_size=1, **as_served) for rt in RUNTIMES
    }
    names = iter(f"b-{i}-{secrets.token_hex(3)}" for i in range(10_000))
    made: list[DockerSandbox] = []

    async def ignore(name: str, reason: str) -> None:
        print(f"  {name} failed: {reason}", file=sys.stderr)

    on_failure: FailureCallback = ignore
    try:
        async with anyio.create_task_group() as tg:
            for driver in drivers.values():
                tg.start_soon(driver.watch, on_failure)  # fills the warm pools

            def create(rt: str, *, cold: bool):
                async def go() -> None:
                    # Limits other than the pool's make a cold create (the pool serves only its own policy).
                    spec = SandboxSpec(name=next(names), limits=Limits(pids=511) if cold else drivers[rt].pool_limits)
                    sandbox = await drivers[rt].create(spec)
                    await sandbox.exec("true")
                    made.append(sandbox)

                return go

            async def close_made() -> None:
                while made:
                    await made.pop().close(delete=True)

            async def pools_full() -> None:
                await close_made()
                with anyio.fail_after(60):
                    while any(d.pool_available < 1 for d in drivers.values()):
                        await anyio.sleep(0.01)

            print("cold create", file=sys.stderr)
            runc, runsc = await interleaved(n, create("runc", cold=True), create(GVISOR_RUNTIME, cold=True), between=close_made)
            table.add("runc: create cold + first `true`", runc)
            table.add("runsc: create cold + first `true`", runsc, "runc: create cold + first `true`", max_ratio=1.5)
            print("create from the warm pool", file=sys.stderr)
            runc, runsc = await interleaved(n, create("runc", cold=False), create(GVISOR_RUNTIME, cold=False), between=pools_full)
            table.add("runc: create from the warm pool + first `true`", runc)
            table.add("runsc: create from the warm pool + first `true`", runsc, "runc: create from the warm pool + first `true`")
            await close_made()

            print("round trip and files", file=sys.stderr)
            box = {rt: await drivers[rt].create(SandboxSpec(name=next(names))) for rt in RUNTIMES}
            made.extend(box.values())
            data = secrets.token_bytes(1 << 20)

            def true(rt: str):
                async def go() -> None:
                    await box[rt].exec("true")

                return go

            def write_read(rt: str):
                async def go() -> None:
                    await box[rt].write_file("bench.bin", data)
                    assert await box[rt].read_file("bench.bin", 2 << 20) == data

                return go

            async def idle() -> None:
                await anyio.sleep(0.02)

            runc, runsc = await interleaved(max(n, 100), true("runc"), true(GVISOR_RUNTIME), warmup=10, block=10)
            table.add("runc: `exec('true')` back to back", runc)
            table.add("runsc: `exec('true')` back to back", runsc, "runc: `exec('true')` back to back", max_ratio=2.0)
            runc, runsc = await interleaved(max(n, 100), true("runc"), true(GVISOR_RUNTIME), block=10, between=idle)
            table.add("runc: `exec('true')` after 20 ms idle", runc)
            table.add("runsc: `exec('true')` after 20 ms idle", runsc, "runc: `exec('true')` after 20 ms idle", max_ratio=2.0)
            runc, runsc = await interleaved(n, write_read("runc"), write_read(GVISOR_RUNTIME), warmup=2)
            table.add("runc: 1 MB `write_file` + `read_file`", runc)
            table.add("runsc: 1 MB `write_file` + `read_file`", runsc, "runc: 1 MB `write_file` + `read_file`")
            await close_made()
            tg.cancel_scope.cancel()
    finally:
        for driver in drivers.values():
            await driver.aclose()
        client = docker.from_env(version="auto")
        remove_leftovers(client, [driver.server_id for driver in drivers.values()], disk_root)
        client.close()


async def local_part(n: int, table: Table) -> None:
    root = Path(tempfile.mkdtemp(prefix="mcp-bench-local-"))
    driver = LocalDriver(root)
    try:
        plain = await driver.create(SandboxSpec(name="plain"))
        boxed = await driver.create(SandboxSpec(name="bwrap", options={"isolation": "bwrap"}))

        async def plain_true() -> None:
            await plain.exec("true")

        async def bwrap_true() -> None:
            await boxed.exec("true")

        print("local round trip", file=sys.stderr)
        ours, base = await interleaved(max(n, 100), bwrap_true, plain_true, warmup=10, block=10)
        table.add("local plain: `exec('true')` back to back", base)
        table.add("local bwrap: `exec('true')` back to back", ours, "local plain: `exec('true')` back to back", max_ratio=1.2)
        for sandbox in (plain, boxed):
            await sandbox.close(delete=True)
    finally:
        await driver.aclose()
        shutil.rmtree(root, ignore_errors=True)


async def main(n: int, image: str, write: Path | None) -> None:
    started = time.strftime("%Y-%m-%d %H:%M")
    table = Table()
    await docker_part(n, image, table)
    await local_part(n, table)
    intro = paragraph(
        "Docker sessions under runc and under gVisor (Debian's runsc 2022-12, its ptrace platform), and local",
        f"sessions plain and in bubblewrap 0.8, in one run: {started}, {os.cpu_count()} cores, Docker",
        f"{docker_version()}, image `{image}`. Each pair is timed in alternation.",
    )
    publish(SECTION, intro, table.render(), write)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="samples per measurement (default 20)")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the section into this Markdown file")
    args = parser.parse_args()
    anyio.run(main, args.n, args.image, args.write)
