"""The local driver with isolation="bwrap": what bubblewrap keeps a command from, on the real bwrap.

The shell semantics it shares with every driver run in tests/driver_conformance.py (as `local-bwrap`).
Without bwrap these tests skip, and fail under CI=true (scripts/install-bwrap.sh installs it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from sandbox_backends.base import SandboxError, SandboxSpec
from sandbox_backends.local import LocalDriver, LocalSandbox
from tests.ci import unavailable

pytestmark = pytest.mark.anyio
BWRAP = {"isolation": "bwrap"}


@pytest.fixture
def home() -> Iterator[Path]:
    """A state folder outside /tmp (which a bwrap sandbox replaces with its own, hiding what is there anyway)."""
    folder = Path(tempfile.mkdtemp(prefix="mcp-bwrap-test-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def driver(home: Path) -> AsyncIterator[LocalDriver]:
    if shutil.which("bwrap") is None:
        unavailable("bwrap is not installed (scripts/install-bwrap.sh installs it)")
    (home / "sessions.db").write_text("every transcript")  # the server's state folder holds its database
    made = LocalDriver(home / "workspaces", hidden=home)
    yield made
    await made.aclose()


async def sandbox(driver: LocalDriver, **options: str) -> LocalSandbox:
    return await driver.create(SandboxSpec(name="t-" + secrets.token_hex(4), options={**BWRAP, **options}))


async def test_a_command_has_no_network_and_writes_only_its_folder(driver: LocalDriver) -> None:
    sb = await sandbox(driver)
    outside = Path("/var/tmp") / f"outside-{secrets.token_hex(4)}"  # the server's user may write there; not under /tmp
    r = await sb.exec(
        "awk -F: 'NR > 2 { printf $1 }' /proc/net/dev | tr -d ' '; echo; "
        "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 9), 1)' 2>&1 | tail -1; "
        f"for p in /etc/x /usr/x {outside}; do touch $p 2>/dev/null && echo WROTE $p; done; "
        "touch /tmp/mine in-workspace && echo tmp-and-workspace-ok"
    )
    lines = r.output.splitlines()
    assert lines[0] == "lo"  # no interface but loopback
    assert "Connection refused" in lines[1]  # loopback is its own: nothing listens there
    assert "WROTE" not in r.output and not outside.exists()
    assert lines[-1] == "tmp-and-workspace-ok"
    assert (Path(sb.workspace) / "in-workspace").exists()
    assert sb.describe()["isolation"] == "bwrap" and sb.describe()["network"] == "none (only lo)"


async def test_sandboxes_have_their_own_tmp_processes_and_files(driver: LocalDriver, home: Path) -> None:
    a = await sandbox(driver)
    b = await sandbox(driver)
    await a.write_file("secret.txt", b"only a")
    peek = await b.exec(f"cat {a.workspace}/secret.txt {home}/sessions.db 2>&1; ls {home}/workspaces")
    assert "only a" not in peek.output and "every transcript" not in peek.output, peek.output
    assert peek.output.count("No such file") == 2 and peek.output.split()[-1] == b.id  # only its own folder
    assert (await a.exec("echo a-secret > /tmp/secret; sleep 30 & echo started")).output == "started\n"
    r = await b.exec("cat /tmp/secret 2>&1; ps -eo args= | grep -c '^sleep 30$' || true; echo $$")
    assert "No such file" in r.output
    count, own_pid = r.output.splitlines()[-2:]
    assert count == "0"  # b sees neither a's processes nor the host's
    assert int(own_pid) < 10  # a pid namespace of its own: its shell is one of the first processes in it
    assert (await a.exec("cat /tmp/secret")).output == "a-secret\n"  # a's /tmp is kept between commands
    assert not Path("/tmp/secret").exists()  # and is not the host's


async def test_interrupt_kills_a_setsid_escapee(driver: LocalDriver) -> None:
    sb = await sandbox(driver)
    started = anyio.Event()

    async def seen(chunk: bytes) -> None:
        if b"begin" in chunk:
            started.set()

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            r = await sb.exec("setsid sleep 301 & echo begin; sleep 300", on_output=seen)
            assert r.interrupted

        tg.start_soon(run)
        with anyio.fail_after(30):
            await started.wait()
        assert await sb.interrupt() is True
    marker = f"MCP_SESSIONS_SANDBOX={sb.id}".encode()

    def left() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.append(pid)
            except OSError:
                continue
        return found

    with anyio.fail_after(10):
        while left():
            await anyio.sleep(0.05)
    assert (await sb.exec("echo next")).output == "next\n"


async def test_without_bwrap_the_error_names_the_package(driver: LocalDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # where the server looks for bwrap
    spec = SandboxSpec(name="t-" + secrets.token_hex(4), options=BWRAP)
    with pytest.raises(ValueError, match="install the Debian package 'bubblewrap'"):
        driver.check(spec)
    with pytest.raises(SandboxError, match=r"scripts/install-bwrap\.sh does\), or use isolation='plain'"):
        await (await driver.create(spec)).exec("true")


def test_each_driver_refuses_the_other_drivers_isolation() -> None:
    """`isolation` is one create option for both drivers that take it; each names what it takes."""
    from mcp_sessions.errors import InvalidInput
    from mcp_sessions.plugins import catalog

    with pytest.raises(InvalidInput, match="the local driver takes isolation 'plain' or 'bwrap', not 'gvisor'"):
        catalog().split_options("local", "shell", {"isolation": "gvisor"})
    with pytest.raises(InvalidInput, match="the docker driver takes isolation 'runc' or 'gvisor', not 'bwrap'"):
        catalog().split_options("docker", "shell", {"isolation": "bwrap"})
    assert catalog().split_options("local", "shell", {"isolation": "bwrap"}) == ({"isolation": "bwrap"}, {})
