"""Docker driver latencies against plain docker SDK calls, measured in one run on the same engine.

    python bench/bench_docker.py [--n 30] [--image IMAGE] [--write BENCHMARKS.md]

Measures, and prints as a Markdown section with the median and p90 of each, its ratio to its baseline
and its target (--write puts the section into that file, replacing the one it wrote before):

- a `true` round trip through `DockerSandbox.exec` (the attached control shell) vs a raw `docker exec`
  (`exec_run`) into the same container, back to back and after 20 ms idle (the control shell starts
  the next command's bash in the background), and the CPU the container spends on each;
- sandbox create to ready (first `true` done): cold, claimed from the warm pool, and a raw
  `containers.run` with the same hardened settings plus a first `exec_run` (timed in alternation
  with the cold creates, so both see the engine in the same state);
- interrupt of `sleep 300` until `exec` has returned;
- a 1 MB file write and read through the control shell vs put_archive / get_archive;
- a workspace filesystem of the default size made (sparse image, mkfs, mount) and removed.

The drivers are made as the server makes them: workspaces of the default size (4096 MiB), each on a
filesystem of its own where the host allows it (root, a local engine), under a throwaway folder.

Needs a running engine and the sandbox image (scripts/start-docker.sh). Everything it makes is
labelled with a throwaway server id and removed at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import docker
from report import paragraph, publish, target_cell
from timing import interleaved, timed

from sandbox_backends.base import SandboxSpec
from sandbox_backends.docker import DockerSettings
from sandbox_backends.docker.container import DEFAULT_IMAGE, KEEPALIVE_CMD, LABEL_SERVER
from sandbox_backends.docker.disks import Disks
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox

SECTION = "## Docker driver against the docker SDK"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def remove_leftovers(client: docker.DockerClient, server_ids: list[str], disk_root: Path) -> None:
    """What a benchmark's drivers left on the engine and the host: their containers, volumes and the
    volumes' filesystems, then the folder of those."""
    for server_id in server_ids:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_SERVER}={server_id}"}):
            c.remove(force=True)
        for v in client.volumes.list(filters={"label": f"{LABEL_SERVER}={server_id}"}):
            v.remove(force=True)
            Disks(disk_root).remove(v.name)
    shutil.rmtree(disk_root, ignore_errors=True)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, list[float], str | None, str]] = []
        self.samples: dict[str, list[float]] = {}

    def add(
        self, name: str, xs: list[float], baseline: str | None = None, max_ratio: float | None = None, max_ms: float | None = None
    ) -> None:
        """A row; `max_ratio` (to the baseline's median) or `max_ms` is the target its median must meet."""
        med_ms = statistics.median(xs) * 1000
        base_ms = statistics.median(self.samples[baseline]) * 1000 if baseline else None
        self.rows.append((name, xs, baseline, target_cell(med_ms, base_ms, max_ratio, max_ms)))
        self.samples[name] = xs
        print(f"  {name}: median {med_ms:.2f} ms (n={len(xs)})", file=sys.stderr)

    def render(self) -> str:
        out = [
            "| measurement | n | median | p90 | ratio to baseline (median) | target |",
            "|---|---:|---:|---:|---|---|",
        ]
        for name, xs, baseline, target in self.rows:
            med = statistics.median(xs)
            ratio = ""
            if baseline:
                ratio = f"{med / statistics.median(self.samples[baseline]):.3f}x of {baseline}"
            out.append(f"| {name} | {len(xs)} | {fmt(med)} | {fmt(pct(xs, 0.9))} | {ratio} | {target} |")
        return "\n".join(out)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def one_file_tar(name: str, data: bytes) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.uid = info.gid = 1000
        tf.addfile(info, io.BytesIO(data))
    return bio.getvalue()


async def main(n: int, image: str, write: Path | None) -> None:
    started = time.strftime("%Y-%m-%d %H:%M")
    server_id = "bench-" + secrets.token_hex(4)
    client = docker.from_env(version="auto")
    api = client.api
    disk_root = Path(tempfile.mkdtemp(prefix="mcp-bench-disks-"))
    as_served = {"default_disk_mb": DockerSettings().default_disk_mb, "disk_root": disk_root}
    driver = DockerDriver(image=image, server_id=server_id, **as_served)
    table = Table()
    names = iter(f"b-{i}-{secrets.token_hex(3)}" for i in range(10_000))
    try:
        # -- exec round trip -------------------------------------------------------------------
        print("exec round trip", file=sys.stderr)
        sb = await driver.create(SandboxSpec(name=next(names)))
        container = client.containers.get(sb.id)
        for _ in range(10):  # warm up both paths
            await sb.exec("true")
            container.exec_run(["true"])

        async def raw_true() -> None:
            container.exec_run(["true"])

        async def sandbox_true() -> None:
            await sb.exec("true")

        async def idle() -> None:
            await anyio.sleep(0.02)

        raw = "raw `docker exec true` (exec_run)"
        table.add(raw, await timed(n, raw_true))
        table.add("`DockerSandbox.exec('true')` back to back", await timed(max(n, 100), sandbox_true), raw, max_ratio=0.05)
        table.add("`DockerSandbox.exec('true')` after 20 ms idle", await timed(max(n, 100), sandbox_true, between=idle), raw)

        def cpu_used() -> int:
            return int(api.stats(sb.id, stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"])

        per_command = []  # what the container's processes spend (its cgroup), not the server or dockerd
        for _ in range(5):
            before = await anyio.to_thread.run_sync(cpu_used)
            for _ in range(100):
                await sb.exec("true")
            per_command.append((await anyio.to_thread.run_sync(cpu_used) - before) / 100 / 1e9)
        table.add("CPU in the container per `exec('true')` back to back (5 batches of 100)", per_command)

        # -- files -----------------------------------------------------------------------------
        print("files", file=sys.stderr)
        data = secrets.token_bytes(1 << 20)
        tar = one_file_tar("bench.bin", data)

        async def put_archive() -> None:
            container.put_archive("/workspace", tar)

        async def get_archive() -> None:
            stream, _ = container.get_archive("/workspace/bench.bin")
            b"".join(stream)

        async def write_file() -> None:
            await sb.write_file("bench.bin", data)

        async def read_file() -> None:
            assert len(await sb.read_file("bench.bin", 2 << 20)) == len(data)

        table.add("raw put_archive 1 MB", await timed(n, put_archive))
        table.add("`write_file` 1 MB", await timed(n, write_file), "raw put_archive 1 MB")
        table.add("raw get_archive 1 MB", await timed(n, get_archive))
        table.add("`read_file` 1 MB", await timed(n, read_file), "raw get_archive 1 MB")

        # -- interrupt -------------------------------------------------------------------------
        print("interrupt", file=sys.stderr)
        interrupts: list[float] = []

        async def sleep_300(into: list[Any]) -> None:
            into.append(await sb.exec("sleep 300"))

        for _ in range(n):
            result: list[Any] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep_300, result)
                await anyio.sleep(0.2)
                t = time.perf_counter()
                await sb.interrupt()
            interrupts.append(time.perf_counter() - t)
            assert result[0].interrupted, result
        table.add("interrupt `sleep 300` until `exec` returned", interrupts, max_ms=1000)
        await sb.close(delete=True)

        # -- create to ready -------------------------------------------------------------------
        print("create to ready", file=sys.stderr)
        made: list[DockerSandbox] = []

        async def cold_create() -> None:
            s = await driver.create(SandboxSpec(name=next(names)))
            await s.exec("true")
            made.append(s)

        async def close_made() -> None:
            while made:
                await made.pop().close(delete=True)

        hc = driver._host_config(api, driver._pool_policy, "VOLUME")

        async def raw_run() -> None:
            vol = next(names)
            c = client.containers.run(
                image,
                KEEPALIVE_CMD,
                detach=True,
                labels={LABEL_SERVER: server_id},
                user=driver.user,
                network_mode="none",
                init=True,
                mem_limit=hc["Memory"],
                memswap_limit=hc["MemorySwap"],
                nano_cpus=hc["NanoCpus"],
                pids_limit=hc["PidsLimit"],
                read_only=True,
                tmpfs=hc["Tmpfs"],
                volumes={vol: {"bind": "/workspace", "mode": "rw"}},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
            )
            c.exec_run(["true"])
            raw_made.append((c, vol))

        raw_made: list[tuple[Any, str]] = []

        async def close_raw() -> None:
            while raw_made:
                c, vol = raw_made.pop()
                c.remove(force=True)
                client.volumes.get(vol).remove(force=True)

        async def close_both() -> None:
            await close_made()
            await close_raw()

        cold, raw_cold = await interleaved(n, cold_create, raw_run, between=close_both)
        await close_both()
        table.add("raw `containers.run` + first `exec_run true`", raw_cold)
        table.add("`create` cold + first `exec('true')`", cold, "raw `containers.run` + first `exec_run true`", max_ratio=1.15)

        pooled = DockerDriver(image=image, server_id=server_id, pool_size=1, **as_served)

        async def fail(name: str, reason: str) -> None:
            print(f"unexpected failure of {name}: {reason}", file=sys.stderr)

        async def pool_create() -> None:
            s = await pooled.create(SandboxSpec(name=next(names)))
            await s.exec("true")
            made.append(s)
            assert s.describe()["pooled"], "the pool was empty"

        async def refill() -> None:
            await close_made()
            with anyio.fail_after(60):
                while pooled.pool_available < 1:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pooled.watch, fail)
            table.add(
                "`create` from the warm pool + first `exec('true')`",
                await timed(n, pool_create, between=refill),
                "raw `containers.run` + first `exec_run true`",
                max_ms=15,
            )
            tg.cancel_scope.cancel()
        await close_made()
        await pooled.aclose()

        # -- a workspace filesystem ------------------------------------------------------------
        print("workspace filesystem", file=sys.stderr)
        disks, size = Disks(disk_root / "alone"), DockerSettings().default_disk_mb
        volumes = iter(f"v-{i}" for i in range(10_000))
        current: list[str] = []

        def make_disk() -> None:
            current.append(next(volumes))
            disks.make(current[-1], size, (1000, 1000))

        def remove_disk() -> None:
            if current:
                disks.remove(current.pop())

        async def made_disk() -> None:
            await anyio.to_thread.run_sync(make_disk)

        async def removed_disk() -> None:
            await anyio.to_thread.run_sync(remove_disk)

        await made_disk()  # the first of a size learns what its filesystem's structures take
        await removed_disk()
        table.add(
            f"workspace filesystem of {size} MiB made (image, mkfs, mount)", await timed(n, made_disk, between=removed_disk)
        )
        await removed_disk()
        table.add(f"workspace filesystem of {size} MiB removed (umount, delete)", await timed(n, removed_disk, between=made_disk))
    finally:
        await driver.aclose()
        remove_leftovers(client, [server_id], disk_root)
        client.close()

    intro = paragraph(
        "The driver's own costs, with the same operations done directly with the docker SDK as the baseline,",
        f"in one run on the same engine: {started}, {os.cpu_count()} cores, Docker {docker_version()}, image",
        f"`{image}`. Cold creates are timed in alternation with the raw creates they are compared to, so both",
        "see the engine in the same state.",
    )
    publish(SECTION, intro, table.render(), write)


def docker_version() -> str:
    try:
        return docker.from_env().version().get("Version", "?")
    except Exception:
        return "?"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="samples per measurement (default 30)")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the section into this Markdown file")
    args = parser.parse_args()
    anyio.run(main, args.n, args.image, args.write)
