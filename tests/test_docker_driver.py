"""The docker driver against a real engine: isolation, limits, interrupts of escaping processes, recovery, pool.

The shell semantics it shares with every driver are checked in tests/driver_conformance.py.

No timing assertions beyond generous bounds that catch hangs; speed is measured in bench/bench_docker.py.
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_backends.base import (
    ExecResult,
    Limits,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from sandbox_backends.control.client import CONTROL_CODE, ControlClient, control_command
from sandbox_backends.docker.container import (
    KEEPALIVE_CMD,
    LABEL_NAME,
    LABEL_SANDBOX,
    LABEL_SERVER,
    POOL_PREFIX,
    SESSION_PREFIX,
    STATE_DIR,
    WORKSPACE,
    host_pids,
)
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox
from sandbox_backends.docker.transport import open_exec
from tests.docker_support import (  # noqa: F401  (fixtures are used by name)
    IMAGE,
    RUNTIMES,
    docker_driver,
    docker_engine,
    docker_server_id,
    isolated_factory,
    isolation,
    sandbox_factory,
)

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent
HANG_S = 30.0
"""Bound for things that take about a second: it only turns a hang into a failure (the machine is shared and
slow at times; speed is measured in bench/bench_docker.py)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def raw_exec(client: Any, sandbox: DockerSandbox | str, cmd: str) -> str:
    """Run a command through a plain `docker exec` in a sandbox (or container id), bypassing the driver."""
    result = client.containers.get(sandbox if isinstance(sandbox, str) else sandbox.id).exec_run(["bash", "-c", cmd])
    return result.output.decode()


TURN_SHELL = f"bash -c . {STATE_DIR}/turn.sh bash {STATE_DIR} "


def user_processes(client: Any, sandbox: DockerSandbox) -> list[str]:
    """Command lines of the sandbox user's processes but the turn shells control shells keep started ahead
    (a turn shell's forks, e.g. `( ... ) &` subshells, are the user's). Root's (init, the keepalive, control
    shells, and the `docker exec` that asks) are not the user's."""
    rows = [line.split(None, 3) for line in raw_exec(client, sandbox, "ps -eo pid=,ppid=,uid=,args=").splitlines()]
    controls = {pid for pid, _, uid, args in rows if uid == "0" and "mcp-sessions-control" in args}
    return [args for _, ppid, uid, args in rows if uid != "0" and not (ppid in controls and args.startswith(TURN_SHELL))]


async def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.05)


PROBE = "probe-"
"""Names of the containers `watch_caught_up` makes; the watch reports them as removed."""


def make_and_remove(client: Any, labels: dict[str, str]) -> None:
    """A container that never starts, removed: the engine's one event for it is `destroy`."""
    client.containers.create(IMAGE, labels=labels).remove(force=True)


async def watch_caught_up(client: Any, server_id: str, failures: list[tuple[str, str]]) -> None:
    """Until the driver's watch reports a probe container of this server removed: it is connected, and it has
    read every event the engine sent before the probe's (the engine sends its events in order).

    The watch reads live events only, so a test must know it is connected before it makes the event it
    expects; and an event that must not be reported is known not to be once a later one was."""
    with anyio.fail_after(30):
        while True:
            name = PROBE + secrets.token_hex(4)
            labels = {LABEL_SANDBOX: "1", LABEL_SERVER: server_id, LABEL_NAME: name}
            await anyio.to_thread.run_sync(make_and_remove, client, labels)
            with anyio.move_on_after(2):  # not heard: the stream was not connected yet; try a new probe
                while (name, "sandbox removed") not in failures:
                    await anyio.sleep(0.02)
                return


# -- the control shell -----------------------------------------------------------------------------


@pytest.mark.docker
async def test_an_image_with_another_python_compiles_the_control_shell_from_source(
    sandbox_factory: Any, docker_engine: Any
) -> None:
    """The server sends the control shell compiled by its own Python, tagged with that Python's bytecode
    magic, and the source. Here the magic and the compiled code are what another Python would not run:
    the control shell must start from the source and answer."""
    sb = await sandbox_factory()
    api = docker_engine.api
    conn = ControlClient(open_exec(api, sb.id, control_command(STATE_DIR, WORKSPACE), WORKSPACE))
    try:
        junk = b"not bytecode"
        await conn.send_raw(
            b"\x00\x00\r\n" + len(junk).to_bytes(4, "big") + junk + len(CONTROL_CODE).to_bytes(4, "big") + CONTROL_CODE
        )
        with anyio.fail_after(30):
            kind, hello = await conn.request({"op": "hello", "env": {}})
        assert kind == "J" and hello.get("ok") and hello["python"].startswith("3."), (hello, conn.stderr)
        assert hello["pid"] > 1
    finally:
        await conn.aclose()
    assert (await sb.exec("echo still fine")).output.strip() == "still fine"


# -- isolation and limits ------------------------------------------------------------------------


@pytest.mark.docker
async def test_hardened_container(isolated_factory: Any, docker_engine: Any, isolation: str) -> None:
    limits = Limits(memory_mb=256, cpus=0.5, pids=100, tmp_mb=32)
    sb = await isolated_factory(limits=limits, labels={"team": "qa"})
    r = await sb.exec(
        "id -u; awk -F: 'NR > 2 { printf $1 }' /proc/net/dev | tr -d ' '; echo; grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status; "
        "python3 -c 'import ctypes; print(\"no_new_privs\", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'; "
        "for p in /etc/x /usr/x /x /home/sandbox/x /var/x; do touch $p 2>/dev/null && echo WROTE $p; done; "
        "touch /tmp/ok /workspace/ok && echo tmp-and-workspace-ok; df -m /tmp | tail -1"
    )
    lines = r.output.splitlines()
    assert lines[0] == "1000"
    assert lines[1] == "lo"  # no interface but loopback
    for kind in ("Inh", "Prm", "Eff"):  # commands have no capabilities...
        assert f"Cap{kind}:\t0000000000000000" in r.output
    assert "CapAmb:" not in r.output or "CapAmb:\t0000000000000000" in r.output  # (gVisor does not show it)
    assert "no_new_privs 1" in r.output  # ...and cannot gain any
    assert "WROTE" not in r.output
    assert "tmp-and-workspace-ok" in r.output
    assert " 32 " in lines[-1]  # /tmp tmpfs sized by Limits.tmp_mb

    info = docker_engine.api.inspect_container(sb.id)
    hc = info["HostConfig"]
    assert hc["NetworkMode"] == "none"
    assert hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"]
    assert sorted(hc["CapAdd"]) == ["KILL", "SETGID", "SETUID"]  # for the control shell alone
    assert hc["Memory"] == hc["MemorySwap"] == 256 << 20
    assert hc["NanoCpus"] == 500_000_000
    assert hc["PidsLimit"] == host_pids(isolation == "gvisor", 100)
    assert hc["Runtime"] == RUNTIMES[isolation]
    assert hc["Init"] is True
    assert info["Config"]["User"] == "0:0"  # init, the keepalive and control shells; commands run as 1000
    labels = info["Config"]["Labels"]
    assert labels["mcp-sessions.sandbox"] == "1" and labels["mcp-sessions.name"] == sb.name
    assert labels["team"] == "qa"

    described = sb.describe()
    assert described["network"] == "none"
    assert described["limits"] == {"memory_mb": 256, "cpus": 0.5, "pids": 100, "tmp_mb": 32, "swap": "none"}
    assert (described["isolation"], described["runtime"]) == (isolation, RUNTIMES[isolation])
    assert described["read_only_root"] is True and described["user"] == "1000:1000"
    assert described["capabilities"] == "none for commands; the control shell keeps SETUID, SETGID, KILL"


@pytest.mark.docker
async def test_sandboxes_cannot_see_each_other(isolated_factory: Any) -> None:
    a = await isolated_factory()
    b = await isolated_factory()
    await a.write_file("secret.txt", b"only a")
    r = await a.exec("echo tmp-secret > /tmp/secret; sleep 30 & echo started")
    assert r.exit_code == 0
    count = "ps -eo args= | grep -c '^sleep 30$' || true"  # the pattern does not match grep's own line
    files = "shopt -s nullglob dotglob; echo files: /workspace/*"  # (not ls: gVisor's statx fails it)
    assert (await a.exec(f"{files}; {count}")).output == "files: /workspace/secret.txt\n1\n"  # a sees its own
    r = await b.exec(f"{files}; cat /tmp/secret 2>&1; {count}")
    assert r.output.splitlines()[0] == "files:"
    assert "No such file" in r.output
    assert r.output.splitlines()[-1] == "0"  # b does not
    with pytest.raises(FileNotFoundError):
        await b.read_file("secret.txt", 100)


@pytest.mark.docker
async def test_fork_bomb_stays_inside_its_process_limit(isolated_factory: Any, docker_engine: Any, isolation: str) -> None:
    """Under runc the cgroup holds the bomb to 64 processes; under gVisor RLIMIT_NPROC does, inside, and the
    cgroup (counting gVisor's own host tasks) keeps to its larger limit. A command that stays at the limit
    is stopped, its result saying why."""
    sb = await isolated_factory(limits=Limits(pids=64))
    container = docker_engine.containers.get(sb.id)
    peak_pids = peak_inside = 0
    host_runs: list[int] = []  # exit codes of processes the host started while the bomb ran

    async def watch_host() -> None:
        nonlocal peak_pids, peak_inside
        while True:
            await anyio.sleep(0.1)
            stats = await anyio.to_thread.run_sync(lambda: container.stats(stream=False, one_shot=True))
            peak_pids = max(peak_pids, stats.get("pids_stats", {}).get("current", 0))
            if isolation == "gvisor":  # the cgroup counts gVisor's host tasks: count the sandbox's own inside
                peak_inside = max(peak_inside, len(await anyio.to_thread.run_sync(user_processes, docker_engine, sb)))
            host_runs.append((await anyio.run_process(["true"], check=False)).returncode)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_host)
        with anyio.fail_after(30):
            r = await sb.exec("bomb() { bomb | bomb & }; bomb; sleep 100", timeout_s=4)
        tg.cancel_scope.cancel()
    assert not r.timed_out  # stopped a second after it reached the limit, saying so
    assert r.failure is not None and r.failure.startswith("process limit reached: the sandbox runs "), r.failure
    inside = peak_inside if isolation == "gvisor" else peak_pids
    assert inside > 32  # the bomb did run...
    assert inside <= 64  # ...and stayed inside the limit
    assert peak_pids <= host_pids(isolation == "gvisor", 64)
    assert host_runs and set(host_runs) == {0}  # the host kept starting processes (no timing: the machine is shared)
    r = await sb.exec("echo alive")
    assert r.output == "alive\n"


@pytest.mark.docker
async def test_a_memory_hog_is_stopped_at_the_memory_limit(
    docker_driver: DockerDriver, isolated_factory: Any, docker_engine: Any, isolation: str
) -> None:
    """Under runc the kernel kills the command's process and the command fails, the sandbox stays. Under
    gVisor the host's OOM killer takes gVisor's own kernel, which holds the sandbox's memory: the sandbox
    dies, and the driver reports it so (SECURITY.md says so)."""
    sb = await isolated_factory(limits=Limits(memory_mb=64))
    witness = await isolated_factory()
    failures: list[tuple[str, str]] = []

    async def on_failure(name: str, reason: str) -> None:
        failures.append((name, reason))

    async with anyio.create_task_group() as tg:
        tg.start_soon(docker_driver.watch, on_failure)
        await watch_caught_up(docker_engine, docker_driver.server_id, failures)
        hog = 'python3 -c \'b = bytearray(512 << 20); print("sur" + "vived")\''
        if isolation == "gvisor":  # the engine flags the OOM kill, or the reason names the memory limit
            with pytest.raises(SandboxError, match=r"oom killed|reaches its memory limit of 64 MiB"):
                await sb.exec(hog, timeout_s=60)
        else:
            r = await sb.exec(hog, timeout_s=60)
        # The engine reports events in order: once the witness's death is reported, so would the OOM have been.
        await anyio.to_thread.run_sync(lambda: docker_engine.containers.get(witness.id).kill())

        async def reported() -> bool:
            return any(name == witness.name for name, _ in failures)

        await wait_for(reported)
        tg.cancel_scope.cancel()
    reported_failures = [(name, why) for name, why in failures if not name.startswith(PROBE)]  # the probes are too
    if isolation == "gvisor":
        reasons = dict(reported_failures)
        assert set(reasons) == {sb.name, witness.name}
        assert reasons[sb.name] == "oom killed" or "memory limit of 64 MiB" in reasons[sb.name]
        assert reasons[witness.name].startswith("sandbox exited with code 137")  # killed, whatever its limit
        return
    assert r.exit_code == 137
    assert "survived" not in r.output
    assert r.failure == (
        "out of memory: the sandbox reached its memory limit of 64 MiB and the kernel killed a process while the command ran. "
        "Interrupt the session to kill the processes earlier commands left running, close it, or create a session with a "
        "larger limits.memory_mb"
    )
    assert [name for name, _ in reported_failures] == [witness.name]  # the sandbox itself did not fail
    assert (await sb.exec("echo still-here")).output == "still-here\n"
    assert (await sb.exec("true")).failure is None  # the next command counts its own kills


@pytest.mark.docker
async def test_watch_reports_removed_and_killed_containers_but_not_closed_ones(
    docker_driver: DockerDriver, sandbox_factory: Any, docker_engine: Any
) -> None:
    removed = await sandbox_factory()
    killed = await sandbox_factory()
    closed = await sandbox_factory()
    failures: list[tuple[str, str]] = []

    async def on_failure(name: str, reason: str) -> None:
        failures.append((name, reason))

    async with anyio.create_task_group() as tg:
        tg.start_soon(docker_driver.watch, on_failure)
        await watch_caught_up(docker_engine, docker_driver.server_id, failures)
        await closed.close()
        await anyio.to_thread.run_sync(lambda: docker_engine.containers.get(removed.id).remove(force=True))
        await anyio.to_thread.run_sync(lambda: docker_engine.containers.get(killed.id).kill())

        async def both_reported() -> bool:
            names = {n for n, _ in failures}
            return removed.name in names and killed.name in names

        await wait_for(both_reported, timeout=10)
        await watch_caught_up(docker_engine, docker_driver.server_id, failures)  # past the closed one's events too
        tg.cancel_scope.cancel()
    assert [r for n, r in failures if n == removed.name] == ["sandbox removed"]
    assert [r for n, r in failures if n == killed.name] == ["sandbox exited with code 137"]
    assert not [r for n, r in failures if n == closed.name]
    with pytest.raises(SandboxNotFound):
        await removed.exec("true")


# -- interrupts ----------------------------------------------------------------------------------

ESCAPING = "sleep 301 & setsid sleep 302 & trap '' INT; sleep 300"
"""A foreground sleep, a background job (ignores SIGINT) and a `setsid` escapee."""


async def _run_until_all_started(
    tg: anyio.abc.TaskGroup, sb: DockerSandbox, client: Any, script: str, results: list[ExecResult]
) -> None:
    """Start `script` (ESCAPING) in the background and return once its three sleeps run."""

    async def run() -> None:
        results.append(await sb.exec(script))

    tg.start_soon(run)

    async def all_started() -> bool:
        procs = await anyio.to_thread.run_sync(user_processes, client, sb)
        return all(any(f"sleep {n}" in p for p in procs) for n in (300, 301, 302))

    await wait_for(all_started)


@pytest.mark.docker
async def test_interrupt_stops_everything_the_command_started(isolated_factory: Any, docker_engine: Any) -> None:
    sb = await isolated_factory()
    results: list[ExecResult] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await _run_until_all_started(tg, sb, docker_engine, ESCAPING, results)
            with anyio.fail_after(HANG_S):
                assert await sb.interrupt() is True
    [r] = results
    assert r.interrupted and not r.timed_out
    assert r.exit_code in (130, 143, 137)
    assert user_processes(docker_engine, sb) == []
    assert await sb.interrupt() is False
    assert (await sb.exec("echo idle")).output == "idle\n"


@pytest.mark.docker
async def test_interrupt_from_another_server_process(sandbox_factory: Any, docker_engine: Any, docker_server_id: str) -> None:
    sb = await sandbox_factory()
    results: list[ExecResult] = []
    other = DockerDriver(image=IMAGE, server_id=docker_server_id)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await _run_until_all_started(tg, sb, docker_engine, ESCAPING, results)
                again = await other.attach(sb.id, SandboxSpec(name=sb.name))
                assert await again.interrupt() is True
    finally:
        await other.aclose()
    [r] = results
    assert r.interrupted
    assert user_processes(docker_engine, sb) == []


@pytest.mark.docker
async def test_cancelling_exec_stops_the_command(sandbox_factory: Any, docker_engine: Any) -> None:
    sb = await sandbox_factory()
    with anyio.fail_after(1 + HANG_S), anyio.move_on_after(1) as scope:  # the cancelled exec must not hang
        await sb.exec(ESCAPING)
    assert scope.cancelled_caught
    assert user_processes(docker_engine, sb) == []
    assert (await sb.exec("echo next")).output == "next\n"


@pytest.mark.docker
async def test_a_connection_lost_mid_command_is_survived(sandbox_factory: Any, docker_engine: Any) -> None:
    """The control shell whose connection ends sees its command to the end and records its exit code; the
    driver reconnects, and the new control shell hands that over."""
    sb = await sandbox_factory()
    streamed = anyio.Event()

    async def on_output(chunk: bytes) -> None:
        streamed.set()

    results: list[ExecResult] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                results.append(await sb.exec("echo before; cd /tmp; sleep 1; echo after; exit 3", on_output=on_output))

            tg.start_soon(run)
            await streamed.wait()
            old = sb._conn
            assert old is not None
            await old.aclose()  # as a broken stream would end it
    [r] = results
    assert (r.exit_code, r.output) == (3, "before\nafter\n")
    assert (await sb.exec("pwd")).output == "/tmp\n"  # the state the command left was kept

    async def one_control_shell() -> bool:
        ps = await anyio.to_thread.run_sync(raw_exec, docker_engine, sb, "ps -eo args=")
        return len([line for line in ps.splitlines() if "mcp-sessions-control" in line]) == 1

    await wait_for(one_control_shell)  # the old one went once it had recorded the result


@pytest.mark.docker
async def test_a_background_job_outlives_its_command_but_not_in_the_next_ones_job_table(sandbox_factory: Any) -> None:
    """Each command runs in a bash of its own (so nothing in the sandbox can forge its exit code): a job
    keeps running after its command, found by its pid, not by `jobs` or `%1`."""
    sb = await sandbox_factory()
    assert (await sb.exec("sleep 30 & echo $! > job.pid; jobs | wc -l")).output == "1\n"
    r = await sb.exec('jobs | wc -l; kill -0 "$(cat job.pid)" && echo running; kill "$(cat job.pid)" && echo killed')
    assert r.output == "0\nrunning\nkilled\n"


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.docker
async def test_written_files_belong_to_the_sandbox_user(isolated_factory: Any) -> None:
    """Files the server writes are the sandbox user's (not root's), so commands can run and change them."""
    sb = await isolated_factory()
    await sb.write_file("src/pkg/mod.py", b"print('hi')\n")
    owner = "import os; s = os.stat('src/pkg/mod.py'); print(s.st_uid, oct(s.st_mode)[-3:])"  # no statx (gVisor's)
    r = await sb.exec(f"python3 src/pkg/mod.py; python3 -c \"{owner}\"; echo 'print(2)' >> src/pkg/mod.py")
    assert (r.exit_code, r.output) == (0, "hi\n1000 644\n")
    assert await sb.read_file("src/pkg/mod.py", 100) == b"print('hi')\nprint(2)\n"


@pytest.mark.docker
async def test_a_big_write_cancelled_half_way_leaves_the_sandbox_working(sandbox_factory: Any) -> None:
    """A 32 MB write goes out over many sends; cancelled between two, the control shell must not take
    the next request for the rest of the file."""
    sb = await sandbox_factory()
    await sb.exec("true")
    with anyio.move_on_after(0.005) as scope:
        await sb.write_file("big.bin", b"x" * (32 << 20))
    assert scope.cancelled_caught, "the write finished before it could be cancelled"
    with anyio.fail_after(30):
        r = await sb.exec("echo still here; ls big.bin 2>/dev/null | wc -l")
    assert r.output.splitlines()[0] == "still here"
    await sb.write_file("small.txt", b"whole\n")
    assert await sb.read_file("small.txt", 100) == b"whole\n"


# -- recovery ------------------------------------------------------------------------------------

SERVER = """
import sys, anyio
from sandbox_backends.base import SandboxSpec
from sandbox_backends.docker.driver import DockerDriver

async def main():
    driver = DockerDriver(image=sys.argv[1], server_id=sys.argv[2])
    sandbox = await driver.create(SandboxSpec(name=sys.argv[3]))
    print("ID", sandbox.id, flush=True)
    async def out(chunk):
        print("OUT", chunk.decode().strip().replace("\\n", " "), flush=True)
    await sandbox.exec(sys.argv[4], on_output=out)

anyio.run(main)
"""


async def _server_dies_while_running(docker_server_id: str, script: str) -> tuple[str, str]:
    """Start a server process that runs `script`, SIGKILL it once output appears; return (sandbox id, name)."""
    name = "t-" + secrets.token_hex(5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, IMAGE, docker_server_id, name, script],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        sandbox_id = ""
        with anyio.fail_after(30):
            while True:
                line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
                assert line, "the server process ended early"
                if line.startswith("ID "):
                    sandbox_id = line.split()[1]
                if line.startswith("OUT "):
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return sandbox_id, name


@pytest.mark.docker
async def test_take_over_after_the_server_died(docker_server_id: str, docker_engine: Any) -> None:
    sandbox_id, name = await _server_dies_while_running(
        docker_server_id, "for i in $(seq 1 1000); do echo line$i; sleep 0.1; done"
    )

    async def five_lines_written() -> bool:  # the command keeps running without its server
        out = await anyio.to_thread.run_sync(raw_exec, docker_engine, sandbox_id, f"cat {STATE_DIR}/*.out | wc -l")
        return int(out) >= 5

    await wait_for(five_lines_written, timeout=30)
    driver = DockerDriver(image=IMAGE, server_id=docker_server_id)
    try:
        sb = await driver.attach(sandbox_id, SandboxSpec(name=name))
        with anyio.fail_after(HANG_S):
            r = await sb.take_over()
        assert r is not None
        assert r.interrupted
        assert r.exit_code == 130
        lines = r.output.split()
        assert lines[:3] == ["line1", "line2", "line3"] and len(lines) >= 5  # written while nobody listened
        assert user_processes(docker_engine, sb) == []
        assert await sb.take_over() is None  # handed over once
        assert (await sb.exec("echo mine")).output == "mine\n"
        await sb.close(delete=True)
    finally:
        await driver.aclose()


@pytest.mark.docker
async def test_take_over_of_a_command_that_finished_alone(docker_server_id: str, docker_engine: Any) -> None:
    sandbox_id, name = await _server_dies_while_running(
        docker_server_id, "echo started; sleep 1; cd /tmp; echo finished; (exit 7)"
    )

    async def finished() -> bool:  # the control shell left in the container has written the result: "EXIT_CODE ..."
        written = await anyio.to_thread.run_sync(raw_exec, docker_engine, sandbox_id, f"cat {STATE_DIR}/*.rc")
        return written.split()[:1] == ["7"]

    await wait_for(finished, timeout=30)
    driver = DockerDriver(image=IMAGE, server_id=docker_server_id)
    try:
        sb = await driver.attach(sandbox_id, SandboxSpec(name=name))
        r = await sb.take_over()
        assert r is not None
        assert (r.exit_code, r.interrupted, r.output) == (7, False, "started\nfinished\n")
        assert user_processes(docker_engine, sb) == []  # the old shell ended once it had nobody to tell
        assert (await sb.exec("pwd")).output == "/tmp\n"  # the shell state it left is kept
        await sb.close(delete=True)
    finally:
        await driver.aclose()


@pytest.mark.docker
async def test_a_container_whose_control_shell_would_not_be_root_is_refused_saying_why(
    docker_driver: DockerDriver, docker_engine: Any, docker_server_id: str
) -> None:
    """A container made as this driver made them before its control shell ran as root (commands' user, no
    capabilities, a state folder open to all) cannot keep commands apart from the control shell."""
    name = "t-" + secrets.token_hex(5)
    old = await anyio.to_thread.run_sync(
        lambda: docker_engine.containers.run(
            IMAGE,
            KEEPALIVE_CMD,
            detach=True,
            name=SESSION_PREFIX + name,
            user="1000:1000",
            init=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            network_mode="none",
            tmpfs={STATE_DIR: "rw,nosuid,nodev,noexec,mode=1777"},
            labels={"mcp-sessions.sandbox": "1", "mcp-sessions.server": docker_server_id, "mcp-sessions.name": name},
        )
    )
    with pytest.raises(SandboxError) as refused:
        await docker_driver.attach(old.id, SandboxSpec(name=name))
    assert str(refused.value) == (
        f"The sandbox container {old.id[:12]} cannot be used: its control shell runs without the privileges it needs "
        "(root with CAP_SETUID, CAP_SETGID and CAP_KILL). It was made by an older version of mcp-sessions or by hand; "
        "delete the session and create a new one."
    )


@pytest.mark.docker
async def test_attach_restarts_a_stopped_container_and_refuses_a_gone_one(
    sandbox_factory: Any, docker_engine: Any, docker_server_id: str
) -> None:
    sb = await sandbox_factory()
    await sb.write_file("keep.txt", b"kept")
    other = DockerDriver(image=IMAGE, server_id=docker_server_id)
    try:
        await anyio.to_thread.run_sync(lambda: docker_engine.containers.get(sb.id).stop(timeout=0))
        again = await other.attach(sb.id, SandboxSpec(name=sb.name))
        assert await again.read_file("keep.txt", 10) == b"kept"
        assert (await again.exec("echo back")).output == "back\n"
        with pytest.raises(SandboxNotFound):
            await other.attach(sb.id, SandboxSpec(name="someone-else"))
        await anyio.to_thread.run_sync(lambda: docker_engine.containers.get(sb.id).remove(force=True))
        with pytest.raises(SandboxNotFound):
            await other.attach(sb.id, SandboxSpec(name=sb.name))
    finally:
        await other.aclose()


@pytest.mark.docker
async def test_close_keeps_the_volume_unless_deleted(docker_driver: DockerDriver, docker_engine: Any) -> None:
    import docker.errors

    name = "t-" + secrets.token_hex(5)
    sb = await docker_driver.create(SandboxSpec(name=name))
    await sb.write_file("f.txt", b"x")
    volume = sb.volume
    assert volume
    await sb.close()
    await sb.close()  # idempotent
    with pytest.raises(docker.errors.NotFound):
        docker_engine.containers.get(sb.id)
    assert docker_engine.volumes.get(volume)
    with pytest.raises(SandboxNotFound):
        await docker_driver.attach(sb.id, SandboxSpec(name=name))
    await sb.close(delete=True)
    with pytest.raises(docker.errors.NotFound):
        docker_engine.volumes.get(volume)


# -- creation ------------------------------------------------------------------------------------


@pytest.mark.docker
async def test_create_reports_phases_and_actionable_errors(docker_driver: DockerDriver, sandbox_factory: Any) -> None:
    phases: list[str] = []

    async def on_phase(phase: str, detail: str) -> None:
        phases.append(phase)

    sb = await docker_driver.create(SandboxSpec(name="t-" + secrets.token_hex(5)), on_phase)
    await sb.close(delete=True)
    assert phases == ["creating_sandbox", "starting"]

    with pytest.raises(SandboxError, match=r"image not found: no-such-image:1\. Build it with scripts/build-sandbox-image\.sh"):
        await docker_driver.create(SandboxSpec(name="t-" + secrets.token_hex(5), image="no-such-image:1"))
    with pytest.raises(SandboxError, match="network"):
        await docker_driver.create(SandboxSpec(name="t-" + secrets.token_hex(5), network=True))
    unregistered = DockerDriver(image=IMAGE, server_id=docker_driver.server_id, gvisor_runtime="runsc-unregistered")
    with pytest.raises(SandboxError) as no_gvisor:
        await unregistered.create(SandboxSpec(name="t-" + secrets.token_hex(5), options={"isolation": "gvisor"}))
    assert str(no_gvisor.value) == (
        "gVisor is not available: this Docker engine has no runtime 'runsc-unregistered'. Run scripts/install-runsc.sh "
        "on the engine's machine (it installs runsc and registers it in /etc/docker/daemon.json), or use isolation='runc'."
    )
    capped = DockerDriver(image=IMAGE, server_id=docker_driver.server_id, max_limits=Limits(memory_mb=512))
    with pytest.raises(SandboxError, match="memory_mb=1024 is over this server's maximum of 512"):
        await capped.create(SandboxSpec(name="t-" + secrets.token_hex(5)))
    taken = await sandbox_factory()
    with pytest.raises(SandboxError, match="already exists"):
        await docker_driver.create(SandboxSpec(name=taken.name))


async def test_unreachable_engine_says_how_to_start_it(tmp_path: Path) -> None:
    driver = DockerDriver(base_url=f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(SandboxError, match=r"start-docker\.sh"):
        await driver.create(SandboxSpec(name="x"))


@pytest.mark.docker
async def test_warm_pool(docker_server_id: str, docker_engine: Any) -> None:
    driver = DockerDriver(image=IMAGE, server_id=docker_server_id, pool_size=1)
    made: list[DockerSandbox] = []

    async def on_failure(name: str, reason: str) -> None:
        raise AssertionError(f"unexpected failure of {name}: {reason}")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.watch, on_failure)

            async def pool_full() -> bool:
                return driver.pool_available == 1

            await wait_for(pool_full, timeout=30)
            name = "t-" + secrets.token_hex(5)
            sb = await driver.create(SandboxSpec(name=name, env={"WHO": "pooled"}))
            made.append(sb)
            assert sb.describe()["pooled"] is True
            assert docker_engine.containers.get(sb.id).name == SESSION_PREFIX + name
            r = await sb.exec("echo $WHO; id -u; pwd")
            assert r.output == "pooled\n1000\n/workspace\n"
            await sb.write_file("a.txt", b"A")
            await wait_for(pool_full, timeout=30)  # refilled in the background

            cold = await driver.create(SandboxSpec(name="t-" + secrets.token_hex(5), limits=Limits(pids=99)))
            made.append(cold)
            assert cold.describe()["pooled"] is False
            tg.cancel_scope.cancel()
        await driver.aclose()
        left = docker_engine.containers.list(all=True, filters={"label": f"mcp-sessions.server={docker_server_id}"})
        assert not [c for c in left if c.name.startswith(POOL_PREFIX)]  # unclaimed pool containers removed
        assert {c.id for c in made} <= {c.id for c in left}  # session containers kept
        assert await made[0].read_file("a.txt", 10) == b"A"
    finally:
        for sb in made:
            await sb.close(delete=True)
        await driver.aclose()


async def test_mounts_are_host_files_commands_see_read_only(sandbox_factory: Any, tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    sandbox = await sandbox_factory(mounts={"tool": str(tool)})
    ran = await sandbox.exec('"$MCP_SESSIONS_MOUNTS/tool"; echo more >> "$MCP_SESSIONS_MOUNTS/tool" || echo refused')
    assert ran.output.splitlines()[0] == "tool ran" and ran.output.splitlines()[-1] == "refused"
    assert tool.read_text() == "#!/bin/sh\necho tool ran\n"


@pytest.mark.docker
async def test_the_warm_pool_serves_specs_whose_mounts_it_has(docker_server_id: str, tmp_path: Path) -> None:
    """Pooled containers bind the pool's mounts, so a spec asking for some of them (a CLI's binary) is served
    warm and sees them read-only; a spec asking for another host file is made cold."""
    tool, other = tmp_path / "tool", tmp_path / "other"
    for path in (tool, other):
        path.write_text(f"#!/bin/sh\necho {path.name} ran\n")
        path.chmod(0o755)
    driver = DockerDriver(image=IMAGE, server_id=docker_server_id, pool_size=1, pool_mounts={"tool": str(tool)})
    made: list[DockerSandbox] = []

    async def pool_full() -> bool:
        return driver.pool_available == 1

    async def on_failure(name: str, reason: str) -> None:
        raise AssertionError(f"unexpected failure of {name}: {reason}")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.watch, on_failure)
            await wait_for(pool_full, timeout=30)
            warm = await driver.create(SandboxSpec(name="t-" + secrets.token_hex(5), mounts={"tool": str(tool)}))
            made.append(warm)
            assert warm.describe()["pooled"] is True
            ran = await warm.exec('"$MCP_SESSIONS_MOUNTS/tool"; echo more >> "$MCP_SESSIONS_MOUNTS/tool" || echo refused')
            assert ran.output.splitlines()[0] == "tool ran" and ran.output.splitlines()[-1] == "refused"
            await wait_for(pool_full, timeout=30)
            cold = await driver.create(SandboxSpec(name="t-" + secrets.token_hex(5), mounts={"tool": str(other)}))
            made.append(cold)
            assert cold.describe()["pooled"] is False
            assert (await cold.exec('"$MCP_SESSIONS_MOUNTS/tool"')).output == "other ran\n"
            tg.cancel_scope.cancel()
    finally:
        for sb in made:
            await sb.close(delete=True)
        await driver.aclose()
    assert tool.read_text() == "#!/bin/sh\necho tool ran\n"
