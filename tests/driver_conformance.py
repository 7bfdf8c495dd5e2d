"""What a driver whose sandboxes run commands must do: the suite every such driver passes, a new one included.

Each test runs on every driver in `COMMAND_DRIVERS` (local, docker, kubernetes against an emulated API
server with local pods (tests/kubernetes_cluster.py; scripts/k8s-e2e.sh runs it on a real cluster), and
the test plugin `memory`, which shows that a driver installed through its entry point is held to the
same contract), made through its plugin as the server makes it:
`registry.drivers()[name].make(settings, DriverContext(...))`. A new driver object on the same context
stands for a restarted or second server process. The shell semantics
checked are those listed at the top of `sandbox_backends/base.py`; the tests in `BASH_DRIVERS` need the
whole of bash (functions, aliases, options), which the memory driver's small shell does not claim, and
those in `JOB_TABLE_DRIVERS` a job table that carries from one command to the next, which docker gives
up so that nothing in its sandbox can forge a command's exit code (each command runs in a bash of its own;
kubernetes too, through the same control shell).
A new driver joins by its name in `COMMAND_DRIVERS` (and its server settings in `SETTINGS`).

Drivers whose sandboxes answer messages instead of running commands (`remote`, a `MessageSandbox`)
cannot run this suite; the remote driver has its own tests against real HTTP servers
(tests/test_remote*.py). Tests for what only one driver does (isolation and limits of docker, a local
runner outliving its server) stay in that driver's test module.

A background job is seen through a heartbeat: a loop that appends to a file every 0.05 s. It runs when
the file grows; it has stopped when the file stays the same size across a wait of many beats.

Docker cases need the engine: they carry the `docker` mark and skip without one, except under CI (tests/ci.py)
where they fail (tests/docker_support.py).
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import shlex
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandbox_backends import registry
from sandbox_backends.base import (
    Driver,
    ExecResult,
    Limits,
    ListsFiles,
    MeasuresDisk,
    OpensTerminal,
    PathNotAllowed,
    Sandbox,
    SandboxBusy,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from sandbox_backends.registry import DriverContext
from tests.ci import unavailable
from tests.docker_support import IMAGE, docker_engine, docker_server_id  # noqa: F401  (fixtures)
from tests.kubernetes_cluster import emulated, kubernetes_settings, real_cluster_settings

pytestmark = pytest.mark.anyio

COMMAND_DRIVERS = [
    pytest.param("local", id="local"),
    pytest.param("local+bwrap", id="local-bwrap"),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),
    pytest.param("memory", id="memory"),
    pytest.param("kubernetes", id="kubernetes"),
]
BASH_DRIVERS = [p for p in COMMAND_DRIVERS if p.values[0] != "memory"]
JOB_TABLE_DRIVERS = [p for p in BASH_DRIVERS if p.values[0] not in ("docker", "kubernetes")]


MESSAGE_DRIVERS = {"remote"}
SETTINGS: dict[str, dict[str, Any]] = {"docker": {"image": IMAGE}}
"""Server settings per driver, as the server would validate them from its flags."""

HANG_S = 60.0
"""Bound on waits for something that takes well under a second: it only turns a hang into a failure."""
BEAT_S = 0.05
QUIET_S = 0.5
"""A heartbeat that does not move across this wait (ten beats) has stopped."""


# -- drivers as the server makes them --------------------------------------------------------------


@dataclass
class Servers:
    """Drivers of one kind, each as a server process would make it from the same state folder."""

    name: str
    make: Callable[[], Driver]
    options: dict[str, Any] = field(default_factory=dict)
    """The driver's create options of every sandbox, e.g. {"isolation": "bwrap"}."""
    drivers: list[Driver] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    """Sandbox id -> the name it was made with (the session id, to a server)."""
    handles: dict[str, Sandbox] = field(default_factory=dict)
    """Sandbox id -> the handle of the newest server on it, which deletes it after the test."""

    def start(self) -> Driver:
        """A new driver object: another server process, or this one after a restart."""
        driver = self.make()
        self.drivers.append(driver)
        return driver

    async def sandbox(self, **spec: Any) -> Sandbox:
        """A new sandbox made by the first server, with a fresh name."""
        driver = self.drivers[0] if self.drivers else self.start()
        name = "t-" + secrets.token_hex(5)
        spec.setdefault("options", self.options)
        sandbox = await driver.create(SandboxSpec(name=name, **spec))
        self.names[sandbox.id] = name
        self.handles[sandbox.id] = sandbox
        return sandbox

    async def attach(self, sandbox: Sandbox, driver: Driver | None = None, **spec: Any) -> Sandbox:
        """The same sandbox as another server process sees it (by default a new one)."""
        spec.setdefault("options", self.options)
        handle = await (driver or self.start()).attach(sandbox.id, SandboxSpec(name=self.names[sandbox.id], **spec))
        self.handles[sandbox.id] = handle
        return handle

    async def restart(self) -> Driver:
        """Every server stops (their sandboxes keep running) and a new one starts."""
        for driver in self.drivers:
            await driver.aclose()
        return self.start()


@pytest.fixture(params=COMMAND_DRIVERS)
async def servers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Servers]:
    name, _, isolation = str(request.param).partition("+")  # "local+bwrap": the local driver, isolation="bwrap"
    if isolation == "bwrap" and shutil.which("bwrap") is None:
        unavailable("bwrap is not installed (scripts/install-bwrap.sh installs it)")
    server_id = "conformance-" + secrets.token_hex(4)
    if name == "docker":
        server_id = request.getfixturevalue("docker_server_id")  # no engine: skip, or fail under CI
    if name == "memory":
        request.getfixturevalue("plugins_installed")
    async with contextlib.AsyncExitStack() as stack:
        given = SETTINGS.get(name, {})
        if name == "kubernetes":  # an emulated API server and local pods (tests/kubernetes_cluster.py), or a real one
            given = real_cluster_settings() or kubernetes_settings(await stack.enter_async_context(emulated(tmp_path)))
        plugin = registry.drivers()[name]
        settings = plugin.settings.model_validate(given) if plugin.settings else None
        context = DriverContext(home=tmp_path / "home", server_id=server_id)
        made = Servers(name, lambda: plugin.make(settings, context), {"isolation": isolation} if isolation else {})
        yield made
        with anyio.CancelScope(shield=True):
            for handle in made.handles.values():
                await handle.close(delete=True)
            for driver in made.drivers:
                await driver.aclose()


# -- watching commands and jobs --------------------------------------------------------------------


def heartbeat(path: str) -> str:
    """A loop that appends to `path` every BEAT_S, for as long as it runs."""
    return f"while :; do echo x >> {shlex.quote(path)}; sleep {BEAT_S}; done"


async def size(sandbox: Sandbox, path: str) -> int:
    try:
        return len(await sandbox.read_file(path, 1 << 24))
    except FileNotFoundError:
        return 0


async def wait_beating(sandbox: Sandbox, *paths: str) -> None:
    """Until each heartbeat has beaten twice since it was first seen."""
    with anyio.fail_after(HANG_S):
        for path in paths:
            while (first := await size(sandbox, path)) == 0:
                await anyio.sleep(BEAT_S)
            while await size(sandbox, path) < first + 4:
                await anyio.sleep(BEAT_S)


async def assert_stopped(sandbox: Sandbox, *paths: str) -> None:
    """Each heartbeat stays still across QUIET_S; a beat already on its way may land once, not again and again."""
    for path in paths:
        sizes = [await size(sandbox, path)]
        for _ in range(5):
            await anyio.sleep(QUIET_S)
            sizes.append(await size(sandbox, path))
            if sizes[-1] == sizes[-2]:
                break
        else:
            raise AssertionError(f"the job writing {path} still runs: its heartbeat went {sizes}")


class Running:
    """A command running in a task of its own: what it streamed so far, and its result once it ends."""

    def __init__(self, sandbox: Sandbox, script: str, **options: Any) -> None:
        self.sandbox = sandbox
        self.script = script
        self.options = options
        self.streamed = b""
        self.result: ExecResult | None = None

    async def _on_output(self, chunk: bytes) -> None:
        self.streamed += chunk

    async def run(self) -> None:
        self.result = await self.sandbox.exec(self.script, on_output=self._on_output, **self.options)

    async def wait_streamed(self, text: bytes) -> None:
        """Until `text` has been streamed: the command is running past the point that printed it."""
        with anyio.fail_after(HANG_S):
            while text not in self.streamed:
                await anyio.sleep(0.02)


async def while_running(sandbox: Sandbox, script: str, then: Callable[[Running], Awaitable[None]], **options: Any) -> ExecResult:
    """Run `script`, call `then(running)` while it runs, and return its result once both are done."""
    running = Running(sandbox, script, **options)
    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(running.run)
            await then(running)
    assert running.result is not None
    return running.result


def workspace_file(sandbox: Sandbox, name: str) -> str:
    return posixpath.join(sandbox.workspace, name)


# -- shell state -----------------------------------------------------------------------------------


async def test_cd_and_exported_variables_carry_to_the_next_command(servers: Servers) -> None:
    sb = await servers.sandbox(env={"GREETING": "hi"})
    r = await sb.exec("mkdir -p proj/sub && cd proj && export FOO=bar")
    assert (r.exit_code, r.output) == (0, "")
    r = await sb.exec("pwd; echo $FOO $GREETING")
    assert r.output == f"{sb.workspace}/proj\nbar hi\n"
    await sb.exec("cd sub; export FOO=baz")
    assert (await sb.exec("pwd; echo $FOO")).output == f"{sb.workspace}/proj/sub\nbaz\n"


async def test_shell_state_survives_an_interrupted_command(servers: Servers) -> None:
    sb = await servers.sandbox()
    await sb.exec("mkdir -p kept && cd kept && export FOO=kept")

    async def interrupt(running: Running) -> None:
        await running.wait_streamed(b"begin")
        assert await sb.interrupt() is True

    r = await while_running(sb, "echo begin; sleep 300", interrupt)
    assert r.interrupted
    assert (await sb.exec("pwd; echo $FOO")).output == f"{sb.workspace}/kept\nkept\n"


async def test_two_servers_on_one_sandbox_share_the_shell_state(servers: Servers) -> None:
    a = await servers.sandbox()
    b = await servers.attach(a)
    await a.exec("mkdir -p one two && cd one && export WHO=a")
    r = await b.exec("pwd; echo WHO=$WHO; cd ../two && export WHO=b")
    assert r.output == f"{a.workspace}/one\nWHO=a\n"
    assert (await a.exec("pwd; echo WHO=$WHO; export WHO=a2")).output == f"{a.workspace}/two\nWHO=b\n"
    assert (await b.exec("echo WHO=$WHO")).output == "WHO=a2\n"


async def test_a_restarted_server_attaches_and_finds_files_and_shell_state(servers: Servers) -> None:
    sb = await servers.sandbox(env={"GREETING": "hi"})
    await sb.write_file("notes/kept.txt", b"kept\n")
    await sb.exec("mkdir -p sub && cd sub && export KEPT=1")
    later = await servers.attach(sb, await servers.restart(), env={"GREETING": "hi"})
    assert later.id == sb.id
    assert await later.read_file("notes/kept.txt", 100) == b"kept\n"
    assert await later.take_over() is None  # nothing was running
    assert (await later.exec("pwd; echo $KEPT $GREETING")).output == f"{sb.workspace}/sub\n1 hi\n"
    gone = "t-gone-" + secrets.token_hex(4)
    with pytest.raises(SandboxNotFound):
        await servers.drivers[-1].attach(gone, SandboxSpec(name=gone))


# -- exit codes and output -------------------------------------------------------------------------


async def test_the_exit_code_is_the_scripts(servers: Servers) -> None:
    sb = await servers.sandbox()
    assert (await sb.exec("true")).exit_code == 0
    assert (await sb.exec("echo a; false")).exit_code == 1
    assert (await sb.exec("echo a; exit 42; echo b")).exit_code == 42
    r = await sb.exec("false; echo $?")
    assert (r.exit_code, r.output) == (0, "1\n")
    r = await sb.exec("(exit 3); echo $?")  # `exit` in a subshell ends only the subshell
    assert (r.exit_code, r.output) == (0, "3\n")
    r = await sb.exec("cd nowhere && echo unreachable")
    assert r.exit_code == 1 and "unreachable" not in r.output and "nowhere" in r.output
    r = await sb.exec("no-such-command-here")
    assert r.exit_code == 127 and "no-such-command-here: command not found" in r.output


async def test_stdout_and_stderr_arrive_merged_in_order(servers: Servers) -> None:
    sb = await servers.sandbox()
    r = await sb.exec("echo out; echo err >&2; echo out2; echo err2 1>&2; exit 42")
    assert (r.exit_code, r.output) == (42, "out\nerr\nout2\nerr2\n")
    assert (r.output_bytes, r.cut_bytes) == (len(r.output), 0)


async def test_output_streams_while_the_command_runs(servers: Servers) -> None:
    sb = await servers.sandbox()
    streamed: list[bytes] = []

    async def interrupt(running: Running) -> None:
        await running.wait_streamed(b"begin\n")  # `sleep 300` still runs: the output came as it was written
        streamed.append(running.streamed)
        await sb.interrupt()

    r = await while_running(sb, "echo begin; sleep 300", interrupt)
    assert streamed == [b"begin\n"] and r.output == "begin\n"


async def test_output_is_bounded_keeping_head_and_tail(servers: Servers) -> None:
    sb = await servers.sandbox()
    whole = "".join(f"{n}\n" for n in range(1, 1_000_001))
    streamed = 0

    async def on_output(chunk: bytes) -> None:
        nonlocal streamed
        streamed += len(chunk)

    r = await sb.exec("seq 1 1000000", on_output=on_output, max_output_bytes=65536)
    assert r.exit_code == 0
    assert r.output_bytes == streamed == len(whole)
    assert r.cut_bytes == len(whole) - 65536
    assert r.output.startswith(whole[:32768]) and r.output.endswith(whole[-32768:])
    assert len(r.output) < 65536 + 200 and f"{r.cut_bytes} bytes cut" in r.output
    assert (await sb.exec("seq 1 3", max_output_bytes=65536)).output == "1\n2\n3\n"


async def test_a_command_that_exits_while_its_job_runs_returns(servers: Servers) -> None:
    """A job that lives on (holding the shell's output, in bash) does not keep the command from ending."""
    sb = await servers.sandbox()
    r = await sb.exec(f"( {heartbeat(workspace_file(sb, 'beat'))} ) & echo left; exit 3", timeout_s=HANG_S)
    assert (r.exit_code, r.output, r.timed_out) == (3, "left\n", False)


# -- stopping commands -----------------------------------------------------------------------------


def fg_and_bg(sandbox: Sandbox) -> tuple[str, str, str]:
    """A script with a background job and a foreground subshell, both beating; and their heartbeat files."""
    fg, bg = workspace_file(sandbox, "fg"), workspace_file(sandbox, "bg")
    return f"{heartbeat(bg)} & echo begin; ( {heartbeat(fg)} )", fg, bg


async def test_interrupt_stops_the_command_and_its_background_jobs(servers: Servers) -> None:
    sb = await servers.sandbox()
    script, fg, bg = fg_and_bg(sb)

    async def interrupt(running: Running) -> None:
        await wait_beating(sb, fg, bg)
        assert await sb.interrupt() is True

    r = await while_running(sb, script, interrupt)
    assert r.interrupted and not r.timed_out
    assert r.exit_code not in (0, None) and r.output == "begin\n"
    await assert_stopped(sb, fg, bg)
    assert await sb.interrupt() is False  # nothing runs any more
    assert (await sb.exec("echo idle")).output == "idle\n"


async def test_interrupt_stops_jobs_left_by_earlier_commands(servers: Servers) -> None:
    sb = await servers.sandbox()
    bg = workspace_file(sb, "bg")
    assert (await sb.exec(f"{heartbeat(bg)} & echo left")).output == "left\n"
    await wait_beating(sb, bg)

    async def interrupt(running: Running) -> None:
        await running.wait_streamed(b"begin")
        assert await sb.interrupt() is True

    assert (await while_running(sb, "echo begin; sleep 300", interrupt)).interrupted
    await assert_stopped(sb, bg)


async def test_interrupt_with_nothing_running_stops_jobs_left_by_earlier_commands(servers: Servers) -> None:
    """What an earlier command left running may hold the sandbox's limits (a fork bomb at the process limit):
    an interrupt with nothing running is the way to stop it."""
    sb = await servers.sandbox()
    bg = workspace_file(sb, "bg")
    assert (await sb.exec(f"{heartbeat(bg)} & echo left")).output == "left\n"
    await wait_beating(sb, bg)
    assert await sb.interrupt() is False  # no command ran
    await assert_stopped(sb, bg)
    assert (await sb.exec("echo next")).output == "next\n"


async def test_interrupt_from_another_server_stops_the_command(servers: Servers) -> None:
    sb = await servers.sandbox()
    script, fg, bg = fg_and_bg(sb)

    async def interrupt(running: Running) -> None:
        await wait_beating(sb, fg, bg)
        assert await (await servers.attach(sb)).interrupt() is True

    assert (await while_running(sb, script, interrupt)).interrupted
    await assert_stopped(sb, fg, bg)


async def test_timeout_stops_the_command_and_its_jobs(servers: Servers) -> None:
    sb = await servers.sandbox()
    script, fg, bg = fg_and_bg(sb)
    with anyio.fail_after(HANG_S):
        r = await sb.exec(script, timeout_s=2)
    assert r.timed_out and not r.interrupted and r.output == "begin\n"
    assert await size(sb, fg) > 0 and await size(sb, bg) > 0  # both ran before the timeout...
    await assert_stopped(sb, fg, bg)  # ...and neither runs after it
    assert (await sb.exec("echo next")).output == "next\n"


async def test_cancelling_exec_stops_the_command_and_its_jobs(servers: Servers) -> None:
    sb = await servers.sandbox()
    script, fg, bg = fg_and_bg(sb)
    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sb.exec, script)
            await wait_beating(sb, fg, bg)
            tg.cancel_scope.cancel()  # the caller gives up
    await assert_stopped(sb, fg, bg)
    assert (await sb.exec("echo next")).output == "next\n"


async def test_a_second_concurrent_exec_is_refused_as_busy(servers: Servers) -> None:
    sb = await servers.sandbox()
    other = await servers.attach(sb)

    async def try_another(running: Running) -> None:
        await running.wait_streamed(b"begin")
        with pytest.raises(SandboxBusy):
            await sb.exec("echo second")
        with pytest.raises(SandboxBusy):  # from another server process too
            await other.exec("echo second")
        await sb.interrupt()

    r = await while_running(sb, "echo begin; sleep 300", try_another)
    assert r.output == "begin\n"  # the refused commands did not run
    assert (await other.exec("echo free")).output == "free\n"


# -- files -----------------------------------------------------------------------------------------


async def test_files_written_are_read_back_and_seen_by_commands(servers: Servers) -> None:
    sb = await servers.sandbox()
    data = bytes(range(256)) * 4
    await sb.write_file("src/pkg/data.bin", data)  # the folders are made
    assert await sb.read_file("src/pkg/data.bin", 1024) == data
    assert await sb.read_file(workspace_file(sb, "src/pkg/data.bin"), 1024) == data  # absolute, inside
    await sb.write_file("notes.txt", b"a longer first version\n")
    await sb.write_file("notes.txt", b"hello\n")  # replaced, not appended to
    r = await sb.exec("cat notes.txt; cd src/pkg && printf 'made by a command' > made.txt")
    assert (r.exit_code, r.output) == (0, "hello\n")
    assert await sb.read_file("src/pkg/made.txt", 100) == b"made by a command"
    assert (await sb.exec(f"cd {shlex.quote(sb.workspace)} && ln -s src inner")).exit_code == 0
    assert await sb.read_file("inner/pkg/made.txt", 100) == b"made by a command"  # a symlink inside is fine


async def test_reading_a_file_over_the_limit_is_refused(servers: Servers) -> None:
    sb = await servers.sandbox()
    await sb.write_file("ten.txt", b"0123456789")
    await sb.exec("mkdir -p folder")
    assert await sb.read_file("ten.txt", 10) == b"0123456789"
    with pytest.raises(SandboxError) as refused:
        await sb.read_file("ten.txt", 9)
    assert not isinstance(refused.value, PathNotAllowed)
    with pytest.raises(FileNotFoundError):
        await sb.read_file("missing.txt", 10)
    with pytest.raises(IsADirectoryError):
        await sb.read_file("folder", 10)


@pytest.mark.parametrize("servers", BASH_DRIVERS, indirect=True)
async def test_a_fifo_is_refused_not_waited_on(servers: Servers) -> None:
    """A command can leave a FIFO where a file is expected, one fed without end or with no writer at all:
    reading or writing it must not wait on the sandbox, nor take more than the size limit."""
    sb = await servers.sandbox()
    r = await sb.exec("mkfifo idle fed && { (while :; do echo more; done > fed) & } && echo made")
    assert r.output == "made\n", r.output
    for path in ["idle", "fed"]:
        with anyio.fail_after(20):
            with pytest.raises(SandboxError, match=f"'{path}' is a FIFO \\(named pipe\\): only regular files"):
                await sb.read_file(path, 1000)
            with pytest.raises(SandboxError, match=f"'{path}' is a FIFO \\(named pipe\\)"):
                await sb.write_file(path, b"no")
    await sb.interrupt()
    assert (await sb.exec("echo still answers")).output == "still answers\n"


async def test_paths_outside_the_workspace_are_refused(servers: Servers) -> None:
    sb = await servers.sandbox()
    parent = posixpath.dirname(sb.workspace)
    tmp_name = "/tmp/outside-" + secrets.token_hex(4)
    r = await sb.exec(f"ln -s /etc etc-link; ln -s /etc/passwd pw; ln -s .. up; ln -s /tmp tmp-link; echo s > {tmp_name}")
    assert r.exit_code == 0, r.output
    for path in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        f"{sb.workspace}/../x",
        tmp_name,
        "x\0y",
        "etc-link/passwd",
        "pw",
        "up/x",
        f"tmp-link/{posixpath.basename(tmp_name)}",
    ]:
        with pytest.raises(PathNotAllowed):
            await sb.read_file(path, 10_000)
    evil = "evil-" + secrets.token_hex(4)
    for path in [f"../{evil}", f"{parent}/{evil}-abs", f"up/{evil}-up", f"tmp-link/{evil}", "pw"]:
        with pytest.raises(PathNotAllowed):
            await sb.write_file(path, b"no")
    for path in [f"{parent}/{evil}", f"{parent}/{evil}-abs", f"{parent}/{evil}-up", f"/tmp/{evil}"]:
        assert (await sb.exec(f"cat {path}")).exit_code != 0, f"{path} was written"
    assert (await sb.exec(f"cat {tmp_name}; rm -f {tmp_name}")).output == "s\n"


@pytest.mark.parametrize("servers", BASH_DRIVERS, indirect=True)
async def test_a_folder_is_listed_without_following_symlinks_out_of_the_workspace(servers: Servers) -> None:
    sb = await servers.sandbox()
    assert isinstance(sb, ListsFiles)
    r = await sb.exec(
        "mkdir -p src/pkg many && printf 12345 > src/pkg/five.txt && ln -s /etc etc-link && ln -s src inner && "
        "mkfifo pipe && for i in $(seq 10 39); do : > many/f$i; done && echo made"
    )
    assert r.output == "made\n", r.output
    top = await sb.list_files("")
    assert (top.path, top.more) == ("", 0)
    assert [(e.name, e.kind) for e in top.entries] == [
        ("etc-link", "symlink"),
        ("inner", "symlink"),
        ("many", "folder"),
        ("pipe", "other"),
        ("src", "folder"),
    ]
    pkg = await sb.list_files("src/pkg")
    assert [(e.name, e.kind, e.size) for e in pkg.entries] == [("five.txt", "file", 5)]
    assert pkg.entries[0].mtime > 1_600_000_000
    assert (await sb.list_files(workspace_file(sb, "inner/pkg"))).path == "src/pkg"  # a symlink inside is fine
    some = await sb.list_files("many", max_entries=10)
    assert [e.name for e in some.entries] == [f"f{i}" for i in range(10, 20)]
    assert (some.more, some.more_exact) == (20, True)

    for path in ["..", "../x", "/etc", "etc-link", f"{sb.workspace}/..", "inner/../../x"]:
        with pytest.raises(PathNotAllowed):
            await sb.list_files(path)
    with anyio.fail_after(20), pytest.raises(NotADirectoryError, match="'pipe' is a FIFO \\(named pipe\\), not a folder"):
        await sb.list_files("pipe")  # named, never opened: nothing waits on it
    with pytest.raises(NotADirectoryError, match=r"'src/pkg/five.txt' is a file, not a folder"):
        await sb.list_files("src/pkg/five.txt")
    with pytest.raises(FileNotFoundError, match="No such folder in the workspace: 'nowhere'"):
        await sb.list_files("nowhere")


@pytest.mark.parametrize("servers", BASH_DRIVERS, indirect=True)
async def test_a_terminal_starts_from_the_shell_state_and_saves_its_own(servers: Servers) -> None:
    sb = await servers.sandbox()
    assert isinstance(sb, OpensTerminal)
    assert (await sb.exec("mkdir -p sub && cd sub && export FOO=from-a-command && f() { echo fn; }")).exit_code == 0
    async with sb.open_terminal(24, 80) as terminal:
        with pytest.raises(SandboxBusy):  # commands wait for the person to leave
            await sb.exec("echo no")
        await terminal.write(b'echo "[$PWD $FOO $(f)]"; touch made; export BAR=by-hand; exit 3\n')
        shown = b""
        with anyio.fail_after(HANG_S):
            while chunk := await terminal.read():
                shown += chunk
    assert f"[{sb.workspace}/sub from-a-command fn]".encode() in shown, shown
    assert (terminal.exit_code, terminal.state_saved) == (3, True)
    after = await sb.exec('pwd; ls; echo "$BAR"')
    assert after.output == f"{sb.workspace}/sub\nmade\nby-hand\n", after.output

    async def refused(running: Running) -> None:
        await running.wait_streamed(b"started")
        with pytest.raises(SandboxBusy):
            async with sb.open_terminal(24, 80):
                pass
        await sb.interrupt()

    await while_running(sb, "echo started; sleep 30", refused)


# -- life ------------------------------------------------------------------------------------------


async def test_close_is_idempotent_and_delete_removes_the_sandbox(servers: Servers) -> None:
    sb = await servers.sandbox()
    await sb.write_file("f.txt", b"x")
    await sb.close()
    await sb.close()
    await sb.close(delete=True)
    await sb.close(delete=True)
    with pytest.raises(SandboxNotFound):
        await servers.attach(sb)
    with pytest.raises(SandboxNotFound):
        await sb.exec("true")


# -- the whole of bash -----------------------------------------------------------------------------


@pytest.mark.parametrize("servers", BASH_DRIVERS, indirect=True)
async def test_functions_aliases_and_options_carry_like_a_terminal(servers: Servers) -> None:
    """State carries like a terminal; when the shell ends, the next one restores the saved part."""
    sb = await servers.sandbox(env={"GREETING": "hi"})
    r = await sb.exec(
        'mkdir -p proj && cd proj && export FOO=bar && plain=kept && greet() { echo "$GREETING $1"; } && '
        "alias ll='ls -la'; echo started"
    )
    assert (r.exit_code, r.output) == (0, "started\n")
    r = await sb.exec("basename $PWD; echo FOO=$FOO plain=$plain; greet world; type ll | head -1; set -e")
    assert r.output.splitlines() == ["proj", "FOO=bar plain=kept", "hi world", "ll is aliased to `ls -la'"]

    # Options carry too: `set -e` ends the shell at the next failure, with that failure's exit code...
    r = await sb.exec("echo before; false; echo after")
    assert (r.exit_code, r.output) == (1, "before\n")
    # ...and the next command runs in a new shell with the saved cwd, exports, functions and aliases.
    r = await sb.exec("basename $PWD; echo FOO=$FOO plain=$plain; greet again; type ll | head -1; false; echo 'set -e is gone'")
    assert r.output.splitlines() == ["proj", "FOO=bar plain=", "hi again", "ll is aliased to `ls -la'", "set -e is gone"]
    # Another server process's shell restores them too.
    r = await (await servers.attach(sb)).exec("basename $PWD; greet there")
    assert r.output == "proj\nhi there\n"


@pytest.mark.parametrize("servers", JOB_TABLE_DRIVERS, indirect=True)
async def test_background_jobs_stay_in_the_job_table(servers: Servers) -> None:
    sb = await servers.sandbox()
    assert (await sb.exec("sleep 30 & echo started")).output == "started\n"
    assert (await sb.exec("jobs | grep -c 'sleep 30'")).output == "1\n"
    assert (await sb.exec("kill %1; wait %1; echo $?")).output == "143\n"  # the job of an earlier command


@pytest.mark.parametrize("servers", BASH_DRIVERS, indirect=True)
async def test_a_command_cannot_derail_the_shell(servers: Servers) -> None:
    """Loop control, a user `read` or `echo`, a closed stdout: the next command runs as usual."""
    sb = await servers.sandbox()
    await sb.exec("export FOO=bar")
    assert (await sb.exec("echo a; continue; echo b")).output == "a\n"
    assert (await sb.exec("echo c; break 9; echo d")).output == "c\n"
    assert (await sb.exec("read() { return 1; }; echo() { :; }; exec >&-; printf x")).exit_code == 1
    r = await sb.exec("unset -f read echo; echo FOO=$FOO; cat; echo stdin was empty")
    assert (r.exit_code, r.output) == (0, "FOO=bar\nstdin was empty\n")


@pytest.mark.parametrize("servers", BASH_DRIVERS, indirect=True)
async def test_a_workspace_past_its_size_is_refused_or_measured(servers: Servers) -> None:
    """`limits.disk_mb` is the workspace's size: a write past it fails (a filesystem of its own, mode "hard"), or
    the sandbox is a `MeasuresDisk` that reports the use over the limit (mode "measured"); `describe()` says which."""
    sb = await servers.sandbox(limits=Limits(disk_mb=32))
    disk = sb.describe()["disk"]
    assert isinstance(disk, dict) and disk["limit_mb"] == 32 and disk["mode"] in ("hard", "measured"), disk
    r = await sb.exec("dd if=/dev/zero of=fill bs=1M count=48 2>&1; echo rc=$?")
    if disk["mode"] == "hard":
        assert "No space left on device" in r.output and r.output.endswith("rc=1\n"), r.output
    else:
        assert isinstance(sb, MeasuresDisk), "a measured workspace must be measurable"
        use = await sb.disk_use()
        assert use is not None and use.used_mb >= 48 and use.over() is not None, use
    assert (await sb.exec("rm fill && echo ok")).output == "ok\n"


def test_every_built_in_driver_that_runs_commands_is_in_this_suite() -> None:
    suite = {p.values[0] for p in COMMAND_DRIVERS}
    assert set(registry.BUILTIN) - suite == MESSAGE_DRIVERS
