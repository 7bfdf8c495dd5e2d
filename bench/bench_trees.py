"""Fork and resume of docker sandboxes against what a person would do by hand with the docker SDK, in one run.

    python bench/bench_trees.py [--n 5] [--image IMAGE] [--write BENCHMARKS.md]

Measures, and prints as a Markdown section (--write puts it into that file):

- fork of a sandbox whose workspace holds 100 MB in 5,000 files, to the fork's first command answered
  (`DockerDriver.fork` + `exec('true')`), against a raw `containers.run` of a new container with a new
  volume plus a `cp -a` of the source's volume in a helper container plus a first `exec_run true`;
- the ways of copying the workspace alone: a clone of its filesystem (frozen while its image is copied on
  the host, then mounted: what the driver does where workspaces have filesystems of their own), a helper
  container's `cp -a` (what the driver does otherwise), and a tar stream through the engine (`get_archive`
  of the source's /workspace into `put_archive` of the new container's; a stream through the two control
  shells would add their framing to it);
- checkpoint of that workspace, and restore of it (the workspace emptied and copied back);
- resume of a paused sandbox to its first command answered (`attach` + `resume` + `exec('true')`) against a
  raw `start` plus a first `exec_run true` of a plain stopped container, and of the same sandbox container
  stopped by a pause (its workspace ready, as the person would have it).

Ours and the baselines alternate sample by sample, so both see the engine in the same state. The driver
is made as the server makes it (workspaces on a filesystem of their own where the host allows). Everything
it makes is labelled with a throwaway server id and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import docker
from bench_docker import Table, docker_version, remove_leftovers
from report import paragraph, publish
from timing import timed

from sandbox_backends.base import SandboxSpec
from sandbox_backends.docker import DockerSettings
from sandbox_backends.docker.container import DEFAULT_IMAGE, KEEPALIVE_CMD, LABEL_SERVER
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox

SECTION = "## Fork, checkpoints and resume of docker sessions"
FILES, FILE_BYTES = 5000, 20_000
FILL = f"mkdir -p data && cd data && for i in $(seq {FILES}); do head -c {FILE_BYTES} /dev/urandom > f$i; done && cd .. && du -sm data"


async def alternate(n: int, *fns: Callable[[], Awaitable[float]]) -> list[list[float]]:
    """`n` samples of each, rotating which goes first; each returns the seconds it timed itself (unlike
    timing.interleaved, whose calls are timed whole: these set up what they time first)."""
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for k in range(len(fns)):
            at = (i + k) % len(fns)
            samples[at].append(await fns[at]())
    return samples


async def main(n: int, image: str, write: Path | None) -> None:
    started = time.strftime("%Y-%m-%d %H:%M")
    server_id = "bench-" + secrets.token_hex(4)
    client = docker.from_env(version="auto")
    api = client.api
    disk_root = Path(tempfile.mkdtemp(prefix="mcp-bench-disks-"))
    driver = DockerDriver(image=image, server_id=server_id, default_disk_mb=DockerSettings().default_disk_mb, disk_root=disk_root)
    labels = {LABEL_SERVER: server_id}
    table = Table()
    names = iter(f"t-{i}-{secrets.token_hex(3)}" for i in range(10_000))

    def run_raw(name: str, volume: str) -> Any:
        return client.containers.run(
            image, KEEPALIVE_CMD, name=name, detach=True, labels=labels, network_mode="none",
            volumes={volume: {"bind": "/workspace", "mode": "rw"}}, working_dir="/workspace",
        )  # fmt: skip

    try:
        print("filling the source workspace", file=sys.stderr)
        source = await driver.create(SandboxSpec(name=next(names)))
        filled = await source.exec(FILL, timeout_s=600)
        assert filled.exit_code == 0, filled.output
        await source.exec("cd data && export MARK=forked")
        assert source.volume is not None
        source_volume = source.volume

        # -- fork to first command ---------------------------------------------------------------
        print("fork", file=sys.stderr)
        made: list[DockerSandbox] = []
        raw_made: list[Any] = []

        async def fork() -> float:
            start = time.perf_counter()
            sandbox = await driver.fork(source, SandboxSpec(name=next(names)))
            result = await sandbox.exec("true")
            took = time.perf_counter() - start
            assert isinstance(sandbox, DockerSandbox) and result.exit_code == 0
            made.append(sandbox)
            return took

        def raw_fork_blocking() -> float:
            name = next(names)
            start = time.perf_counter()
            api.create_volume(name=name, labels=labels)
            client.containers.run(
                image, ["cp", "-a", "/from/.", "/to/"], remove=True, user="0:0", labels=labels, network_mode="none",
                volumes={source_volume: {"bind": "/from", "mode": "ro"}, name: {"bind": "/to", "mode": "rw"}},
            )  # fmt: skip
            container = run_raw(name, name)
            assert container.exec_run(["true"]).exit_code == 0
            took = time.perf_counter() - start
            raw_made.append(container)
            return took

        async def raw_fork() -> float:
            return await anyio.to_thread.run_sync(raw_fork_blocking)

        ours, raw = await alternate(n, fork, raw_fork)
        check = await made[0].exec("pwd; echo $MARK; ls | wc -l")
        assert check.output == f"/workspace/data\nforked\n{FILES}\n", check.output
        raw_name = (
            f"raw `docker run` + `cp -a` of the volume in a helper container + first `exec_run true` ({FILES} files, 100 MB)"
        )
        table.add(raw_name, raw)
        table.add("`fork` + the fork's first `exec('true')`", ours, raw_name, max_ms=1000)
        for sandbox in made:
            await sandbox.close(delete=True)
        for container in raw_made:
            container.remove(force=True)
            api.remove_volume(container.name)

        # -- the copy alone, three ways ----------------------------------------------------------
        print("copy: filesystem clone vs helper container vs tar stream", file=sys.stderr)
        targets: list[tuple[str, Any]] = []

        def target() -> tuple[str, Any]:
            name = next(names)
            api.create_volume(name=name, labels=labels)
            targets.append((name, run_raw(name, name)))
            return targets[-1]

        async def helper_copy() -> float:
            name, _ = await anyio.to_thread.run_sync(target)
            start = time.perf_counter()
            await driver._copy_volume(source_volume, name, image)
            return time.perf_counter() - start

        def tar_stream_blocking() -> float:
            _, container = target()
            start = time.perf_counter()
            stream, _ = api.get_archive(source.id, "/workspace/.")
            api.put_archive(container.id, "/workspace", stream)
            return time.perf_counter() - start

        async def tar_stream() -> float:
            return await anyio.to_thread.run_sync(tar_stream_blocking)

        clones: list[str] = []

        async def clone() -> float:
            name = next(names)
            start = time.perf_counter()
            assert await driver._clone_volume(await driver._api(), source_volume, name, labels)
            took = time.perf_counter() - start
            clones.append(name)
            return took

        helper, tar, cloned = await alternate(n, helper_copy, tar_stream, clone)
        stream_name = "workspace copy: tar stream through the engine (get_archive → put_archive)"
        helper_name = "workspace copy: `cp -a` in a helper container (the driver's without a filesystem to clone)"
        table.add(stream_name, tar)
        table.add(helper_name, helper, stream_name)
        table.add("workspace copy: clone of its filesystem, mounted (the driver's)", cloned, helper_name)
        for name, container in targets:
            container.remove(force=True)
            api.remove_volume(name)
        for name in clones:
            await driver._remove_volume(name)

        # -- checkpoint and restore of the same workspace ---------------------------------------
        print("checkpoint and restore", file=sys.stderr)
        keys = iter(f"k{i}" for i in range(10_000))
        kept: list[tuple[str, bytes]] = []

        async def checkpoint() -> None:
            key = next(keys)
            size, state = await driver.checkpoint(source, key)
            assert size >= 90, size
            kept.append((key, state))

        async def restore() -> None:
            key, state = kept[-1]
            await driver.restore(source, key, state)

        table.add(f"checkpoint of the same workspace ({FILES} files, 100 MB)", await timed(n, checkpoint))
        await source.exec("rm -rf /workspace/data/f1*")
        table.add("restore of that checkpoint (the workspace emptied, then copied back)", await timed(n, restore))
        back = await source.exec("ls /workspace/data | wc -l")
        assert back.output == f"{FILES}\n", back.output
        for key, _ in kept:
            await driver.drop_checkpoint(source.name, key)

        # -- resume to first command -------------------------------------------------------------
        print("resume", file=sys.stderr)
        spec = SandboxSpec(name=next(names))
        paused_box = await driver.create(spec)
        await paused_box.exec("cd /tmp && export MARK=resumed")
        cid = paused_box.id
        raw_volume = next(names)
        api.create_volume(name=raw_volume, labels=labels)  # labelled, so that it is removed with the rest
        raw_box = run_raw(next(names), raw_volume)

        current = [paused_box]

        async def resume() -> float:
            saved = await current[0].pause()
            start = time.perf_counter()
            sandbox = await driver.attach(cid, spec)
            await sandbox.resume(saved)
            result = await sandbox.exec("true")
            took = time.perf_counter() - start
            assert result.exit_code == 0
            current[0] = sandbox
            return took

        def raw_start(container: Any) -> float:
            start = time.perf_counter()
            container.start()
            assert container.exec_run(["true"]).exit_code == 0
            return time.perf_counter() - start

        async def raw_resume() -> float:
            await anyio.to_thread.run_sync(lambda: raw_box.stop(timeout=2))
            return await anyio.to_thread.run_sync(raw_start, raw_box)

        same = client.containers.get(cid)

        async def raw_same() -> float:
            saved = await current[0].pause()
            assert paused_box.volume is not None
            await driver._mount_disk(paused_box.volume)  # mounted already unless a pause lets it go
            took = await anyio.to_thread.run_sync(raw_start, same)
            current[0] = await driver.attach(cid, spec)
            await current[0].resume(saved)
            return took

        ours, raw, raw_own = await alternate(n, resume, raw_resume, raw_same)
        back = await current[0].exec("pwd; echo $MARK")
        assert back.output == "/tmp\nresumed\n", back.output
        raw_name = "raw `start` of a stopped container + first `exec_run true`"
        own_name = "raw `start` of the same sandbox container, stopped by a pause + first `exec_run true`"
        resume_name = "resume (`attach` + `resume` + first `exec('true')`)"
        table.add(raw_name, raw)
        table.add(own_name, raw_own)
        table.add(resume_name, ours, raw_name, max_ratio=1.2)
        table.add(resume_name + ", against the same container started by hand", ours, own_name, max_ratio=1.2)
    finally:
        await driver.aclose()
        remove_leftovers(client, [server_id], disk_root)
        client.close()

    intro = paragraph(
        "What a fork, a checkpoint, a restore and a resume cost, against the same done by hand with the docker",
        f"SDK, alternated sample by sample in one run on the same engine: {started}, {os.cpu_count()} cores, Docker",
        f"{docker_version()}, image `{image}`, load average {os.getloadavg()[0]:.0f} (other test runs shared the",
        f"cores). The source workspace holds {FILES} files of {FILE_BYTES // 1000} kB (100 MB). The driver makes",
        "its workspaces as the server does (a filesystem of their own where the host allows; the raw baselines",
        "use plain volumes).",
    )
    why = paragraph(
        "The copy rows compare three ways to copy a workspace. Where the workspace is a filesystem of its own",
        "the driver clones it: a freeze, a copy of the image's data on the host and a mount, no container and",
        "no path of the hostile workspace read; the fork's container is then made and started. Otherwise it",
        "takes the helper container although the engine's tar stream copies alone about as fast or faster:",
        "the fork's container is made and started while the helper copies (`put_archive` needs that container",
        "first, so the stream would follow its start, for about the same total), and the engine's archive",
        "endpoints, used on a running container whose workspace the sandbox user controls, have a history of",
        "symlink races (`docker cp`: CVE-2018-15664, and more found since), while the helper reads the volume",
        "read-only beside the source, confined to the two volumes. A resume pays what the raw path does not:",
        "the control shell's start in the container (python and its hello, where the raw path runs `true`) and",
        "the shell state handed back; the workspace filesystem stays mounted while the session is paused.",
    )
    intro = intro + "\n\n" + why
    publish(SECTION, intro, table.render(), write)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    anyio.run(main, args.n, args.image, args.write)
