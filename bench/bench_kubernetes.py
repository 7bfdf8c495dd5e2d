"""The kubernetes driver's own cost per command, against the exec emulator, beside the docker driver's round trip.

    python bench/bench_kubernetes.py [--n 200] [--image IMAGE] [--write BENCHMARKS.md]

No cluster runs here, so the API server is the tests' emulator (tests/kubernetes_cluster.py: kmock over
real HTTP on 127.0.0.1, pods as local namespaces, exec as a websocket relayed by aiohttp to a local
process). Measured in one run, alternating where two are compared:

- a `true` round trip through `KubernetesSandbox.exec` (the control shell over the pod's exec websocket);
- the floor under it: one 64-byte message echoed by `cat` over a raw exec websocket into the same pod
  (the emulator's relay and the websocket, with no control shell): the difference is the driver's own
  framing and the control shell's work, the part that is the same on a real cluster;
- a `true` as a one-shot exec per command (a websocket of its own, read to the end), what a driver
  without a long-lived control shell pays for each command (a process started through the exec path);
- a `true` round trip through the docker driver (its control shell over a `docker exec`), when a Docker
  engine and the sandbox image are here.

On a real cluster each exec message also crosses the API server and the kubelet (a proxy hop each
way), which this cannot show; scripts/k8s-e2e.sh is where to measure that.

Needs root (the emulator's pods are namespaces).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' emulator

import anyio
from report import paragraph, publish
from timing import interleaved, timed

from sandbox_backends import registry
from sandbox_backends.base import SandboxSpec
from sandbox_backends.kubernetes.driver import KubernetesDriver
from sandbox_backends.kubernetes.sandbox import KubernetesSandbox
from sandbox_backends.registry import DriverContext
from tests.kubernetes_cluster import cluster, kubernetes_settings

SECTION = "## Kubernetes driver: its own cost per command, against the exec emulator"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def echo_floor(driver: KubernetesDriver, pod: str) -> tuple[object, object]:
    """A raw exec websocket to `cat` in the pod, and one message's round trip over it."""
    ws = await driver._exec_socket(pod, ["cat"])
    payload = memoryview(b"x" * 64)
    got = bytearray()

    async def once() -> None:
        got.clear()
        sent = ws.send_nowait(payload)
        while sent < len(payload):
            await ws.wait_writable()
            sent += ws.send_nowait(payload[sent:])
        while len(got) < len(payload):
            await ws.receive_into(got)

    return ws, once


async def docker_round_trip(n: int, image: str) -> list[float] | None:
    try:
        import docker

        docker.from_env(version="auto").images.get(image)
    except Exception as e:
        print(f"  no docker round trip: {e}", file=sys.stderr)
        return None
    from sandbox_backends.docker.driver import DockerDriver

    driver = DockerDriver(image=image, server_id="bench-k8s-" + secrets.token_hex(4))
    sb = await driver.create(SandboxSpec(name="bench-" + secrets.token_hex(4)))
    try:
        return await timed(n, lambda: sb.exec("true"), warmup=10)
    finally:
        await sb.close(delete=True)
        await driver.aclose()


async def main(n: int, image: str, write: Path | None) -> None:
    started = time.strftime("%Y-%m-%d %H:%M")
    rows: list[tuple[str, list[float], str | None, str]] = []
    with tempfile.TemporaryDirectory(prefix="mcp-bench-k8s-") as tmp:
        async with cluster(Path(tmp)) as made:
            plugin = registry.drivers()["kubernetes"]
            assert plugin.settings is not None
            settings = plugin.settings.model_validate(kubernetes_settings(made))
            driver = plugin.make(settings, DriverContext(home=Path(tmp) / "home", server_id="bench"))
            assert isinstance(driver, KubernetesDriver)
            sb = await driver.create(SandboxSpec(name="bench-" + secrets.token_hex(4)))
            assert isinstance(sb, KubernetesSandbox)
            ws, echo = await echo_floor(driver, sb.pod)

            async def ours() -> None:
                await sb.exec("true")

            k8s, floor = await interleaved(n, ours, echo, warmup=10)  # type: ignore[arg-type]
            rows.append(("`true` through KubernetesSandbox.exec", k8s, "exec websocket echo (floor)", ""))
            rows.append(("exec websocket echo (floor)", floor, None, ""))  # measured alternating with the row above

            async def one_shot() -> None:  # an exec of its own, read to its end: what clients' exec calls do
                shot = await driver._exec_socket(sb.pod, ["true"])
                try:
                    while True:
                        await shot.receive_into(bytearray())
                except (anyio.ClosedResourceError, OSError):
                    pass
                finally:
                    shot.close()

            rows.append(("`true` as a one-shot exec", await timed(max(20, n // 5), one_shot, warmup=3), None, ""))
            ws.close()  # type: ignore[attr-defined]
            await sb.close(delete=True)
            await driver.aclose()
    docker_samples = await docker_round_trip(n, image)
    if docker_samples:
        rows.append(("`true` through DockerSandbox.exec", docker_samples, None, ""))
    med = {name: statistics.median(xs) for name, xs, _b, _t in rows}
    ours_name = "`true` through KubernetesSandbox.exec"
    own_ms = (med[ours_name] - med["exec websocket echo (floor)"]) * 1000
    table = ["| measurement | n | median | p90 | ratio (median) |", "|---|---:|---:|---:|---|"]
    for name, xs, baseline, _target in rows:
        ratio = f"{med[name] / med[baseline]:.2f}x of {baseline}" if baseline else ""
        if name == ours_name and docker_samples:
            ratio += f"; {med[name] / med['`true` through DockerSandbox.exec']:.2f}x of the docker driver's"
        table.append(f"| {name} | {len(xs)} | {fmt(med[name])} | {fmt(pct(xs, 0.9))} | {ratio} |")
    notes = paragraph(
        f"Measured {started} on {os.cpu_count()} cores shared with other work.",
        f"Above the emulator's relay (the floor), a command costs the driver and its control shell {own_ms:.2f} ms:",
        "the same control shell and framing as docker's, so the two drivers' round trips are alike here, and a real",
        "cluster adds its API server and kubelet hops to each message on top.",
        f"A one-shot exec of `true` costs {med['`true` as a one-shot exec'] / med[ours_name]:.2f}x the control shell's",
        "round trip here, where starting one is a local nsenter and nothing of a shell's state is restored; on a",
        "cluster each one-shot exec is a new API server, kubelet and runtime exec (scripts/k8s-e2e.sh is where to",
        "measure it), and commands run that way keep no shell state, no output across a lost connection and no",
        "interrupt by process group.",
    )
    publish(SECTION, notes, "\n".join(table), write)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--image", default="mcp-sessions-sandbox:bookworm")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    anyio.run(main, args.n, args.image, args.write)
