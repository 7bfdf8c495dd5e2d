"""The server reads every sandbox as hostile: a control shell that misbehaves, in a real container.

Each test runs a misbehaving program where the control shell would run (tests/hostile_control.py: an
image whose python3 runs /workspace/.control.py in its place), reached through the driver's own
`docker exec` transport, and checks what a user relies on: a clear error naming the problem, the
connection dropped and made again, the session usable afterwards, and the server's memory and event
loop out of the sandbox's reach.

No timing assertions beyond generous bounds that turn a hang or a starvation into a failure; the
figures are printed (run with -s to see them).
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

import base64
import logging
import re
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.app import server_id
from mcp_sessions.settings import Settings
from sandbox_backends.base import SandboxError, SandboxSpec
from sandbox_backends.docker.driver import DockerDriver
from sandbox_backends.docker.sandbox import DockerSandbox
from tests.conftest import call, new_session, stdio_params
from tests.docker_support import (  # noqa: F401  (fixtures are used by name)
    docker_driver,
    docker_engine,
    docker_server_id,
    remove_labelled,
    sandbox_factory,
)
from tests.hostile_control import PROGRAM_PATH, hostile_image, hostile_program  # noqa: F401
from tests.test_stdio import peak_rss_mb, server_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
HANG_S = 60.0
"""Bounds what takes a few seconds here (a reconnect, a liveness check): it only catches hangs."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def hostile_sandbox(make: Any, driver: DockerDriver, image: str, mode: str) -> tuple[DockerSandbox, DockerSandbox]:
    """A sandbox on the hostile image, and a second object for it whose control connection is `mode`'s
    program (the first keeps a real control shell, to take the program away again)."""
    sb = await make(image=image)
    await sb.write_file(PROGRAM_PATH, hostile_program(mode))
    return sb, await driver.attach(sb.id, SandboxSpec(name=sb.name))


async def restore(sb: DockerSandbox) -> None:
    """Take the misbehaving program away: the next control connection runs the real control shell."""
    assert (await sb.exec(f"rm /workspace/{PROGRAM_PATH} && echo removed")).output == "removed\n"


MALFORMED_RUN_ANSWERS = {
    "json-list": "a JSON frame that is a list, not an object",
    "json-string": "a JSON frame that is a string, not an object",
    "json-number": "a JSON frame that is a number, not an object",
    "json-invalid": "a JSON frame that is not valid JSON",
    "json-deep": "a JSON frame that is not valid JSON (RecursionError)",
    "req-not-text": "a JSON frame whose 'req' is a number",
    "req-not-in-flight": "an answer to 'q9999', which is no request in flight",
    "rc-not-a-number": "a JSON frame whose 'rc' is a string",
    "rc-huge": "a JSON frame whose 'rc' is out of range",
    "unknown-kind": "a frame of unknown kind 'Z'",
    "file-content-unasked": "file content when no file read is in flight",
    "output-too-big": "an output frame of 52428800 bytes, over the 1048832-byte limit",
    "giant-json": "a JSON frame of 60000002 bytes, over the 65536-byte limit",
}


@pytest.mark.parametrize("mode", list(MALFORMED_RUN_ANSWERS))
async def test_a_malformed_answer_to_a_command_is_a_clear_error_and_the_session_recovers(
    sandbox_factory: Any, docker_driver: DockerDriver, hostile_image: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    sb, hostile = await hostile_sandbox(sandbox_factory, docker_driver, hostile_image, mode)
    with anyio.fail_after(HANG_S), pytest.raises(SandboxError) as failed, caplog.at_level(logging.WARNING):
        await hostile.exec("echo hi")
    # Each new control shell misbehaved the same way: after the second the command fails, naming why.
    assert "misbehaved twice in a row" in str(failed.value) and MALFORMED_RUN_ANSWERS[mode] in str(failed.value)
    assert any(
        MALFORMED_RUN_ANSWERS[mode] in r.getMessage() and "dropped the control connection" in r.getMessage()
        for r in caplog.records
    )
    await restore(sb)
    with anyio.fail_after(HANG_S):
        assert (await hostile.exec("echo recovered > out.txt; cat out.txt")).output == "recovered\n"
        assert await hostile.read_file("out.txt", 100) == b"recovered\n"


MALFORMED_READ_ANSWERS = {
    "output-for-a-read": "output for a 'read' request",
    "file-over-its-max": "101 bytes of file content for a read of at most 100",
    "json-list": "a JSON frame that is a list, not an object",
}


@pytest.mark.parametrize("mode", list(MALFORMED_READ_ANSWERS))
async def test_a_malformed_answer_to_a_file_read_is_a_clear_error_and_the_session_recovers(
    sandbox_factory: Any, docker_driver: DockerDriver, hostile_image: str, mode: str
) -> None:
    sb, hostile = await hostile_sandbox(sandbox_factory, docker_driver, hostile_image, mode)
    await sb.write_file("notes.txt", b"the real content")
    with anyio.fail_after(HANG_S), pytest.raises(SandboxError) as failed:
        await hostile.read_file("notes.txt", 100)
    assert "misbehaved twice in a row" in str(failed.value) and MALFORMED_READ_ANSWERS[mode] in str(failed.value)
    await restore(sb)
    with anyio.fail_after(HANG_S):
        assert await hostile.read_file("notes.txt", 100) == b"the real content"


async def test_a_large_read_does_not_raise_the_frame_limit_for_what_follows(
    sandbox_factory: Any, docker_driver: DockerDriver, hostile_image: str
) -> None:
    """A read may bring back as much as it asked for, that read only: a JSON answer of 80 MB after a
    read of up to 100 MB is refused at its header, as it would be on a new connection."""
    sb, hostile = await hostile_sandbox(sandbox_factory, docker_driver, hostile_image, "read-then-big-json")
    with anyio.fail_after(HANG_S):
        assert await hostile.read_file("big.bin", 100_000_000) == b"a small file"
        with pytest.raises(SandboxError, match="a JSON frame of 80000002 bytes, over the 65536-byte limit"):
            await hostile.exec("echo hi")
    await restore(sb)


async def test_a_stuck_frame_header_is_a_clear_error_within_seconds(
    sandbox_factory: Any, docker_driver: DockerDriver, hostile_image: str
) -> None:
    """A header promising a frame that never comes: the connection stops answering pings and is dropped."""
    sb, hostile = await hostile_sandbox(sandbox_factory, docker_driver, hostile_image, "stuck-header")
    started = time.monotonic()
    with anyio.fail_after(HANG_S), pytest.raises(SandboxError) as failed:
        await hostile.read_file("notes.txt", 100)
    print(f"\nstuck header: the read failed after {time.monotonic() - started:.1f} s: {failed.value}")
    assert "did not answer a ping within 5 s; a frame of 60000 bytes stopped after 10" in str(failed.value)
    await restore(sb)
    with anyio.fail_after(HANG_S):
        assert (await hostile.exec("echo usable")).output == "usable\n"


async def test_a_control_shell_that_stops_answering_is_replaced_and_the_command_runs(
    sandbox_factory: Any, docker_driver: DockerDriver, hostile_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A command may be silent for hours, its control shell may not: unanswered pings drop it in
    seconds, and the command goes to the next control shell (the real one here)."""
    sb, hostile = await hostile_sandbox(sandbox_factory, docker_driver, hostile_image, "silent")
    await restore(sb)  # only the connection already open is the silent program
    started = time.monotonic()
    with anyio.fail_after(HANG_S), caplog.at_level(logging.WARNING):
        r = await hostile.exec("echo ran on the next one")
    print(f"\nsilent control shell: replaced, the command done after {time.monotonic() - started:.1f} s")
    assert (r.exit_code, r.output) == (0, "ran on the next one\n")
    assert any("did not answer a ping within 5 s" in rec.getMessage() for rec in caplog.records)
    with anyio.fail_after(HANG_S):  # a silent command is not a silent control shell
        assert (await hostile.exec("sleep 8; echo slept")).output == "slept\n"


def figures(times: list[float]) -> str:
    ordered = sorted(times)
    return (
        f"median {statistics.median(ordered) * 1e3:.2f} ms, p90 {ordered[int(len(ordered) * 0.9)] * 1e3:.2f} ms, "
        f"max {ordered[-1] * 1e3:.2f} ms"
    )


async def test_a_sandbox_flooding_its_control_stream_does_not_slow_another_session(
    sandbox_factory: Any, docker_driver: DockerDriver, hostile_image: str
) -> None:
    calm = await sandbox_factory()
    _sb, flooder = await hostile_sandbox(sandbox_factory, docker_driver, hostile_image, "flood")

    async def round_trips(n: int) -> list[float]:
        """`n` echoes 15 ms apart: 3 s, through the flood's first burst and then its paced part."""
        times = []
        for _ in range(n):
            await anyio.sleep(0.015)
            t0 = time.perf_counter()
            assert (await calm.exec("echo hi")).output == "hi\n"
            times.append(time.perf_counter() - t0)
        return times

    await round_trips(5)
    idle = await round_trips(200)
    received = 0
    flowing = anyio.Event()

    async def on_output(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        flowing.set()

    async def flood() -> None:
        with pytest.raises(SandboxError):  # until the sandbox is closed under it
            await flooder.exec("flood", on_output=on_output)

    async with anyio.create_task_group() as tg:
        tg.start_soon(flood)
        with anyio.fail_after(HANG_S):
            await flowing.wait()
        before = received
        # Starved, these would wait for the flood to end: the bound turns that into a failure.
        with anyio.fail_after(20):
            during = await round_trips(200)
        flooded = received - before
        print(
            f"\nanother session's echo: idle {figures(idle)}; during the flood {figures(during)}, median "
            f"{statistics.median(during) / statistics.median(idle):.2f}x idle; the flood's frames taken meanwhile: {flooded}"
        )
        await flooder.close()
    assert flooded > 0  # the flood went on while the other session was served


async def test_a_giant_frame_costs_the_server_no_memory(home: Path, docker_engine: Any, hostile_image: str) -> None:
    """One JSON frame of 20 million empty objects once took a server from 84 MB to 1.77 GB."""
    params = stdio_params(home, "--driver", "docker", "--image", hostile_image)
    program = base64.b64encode(hostile_program("giant-json")).decode()
    try:
        async with Client(params, mode="legacy") as first:
            calm = await new_session(first)
            target = await new_session(first)
            written = f"echo {program} | base64 -d > /workspace/{PROGRAM_PATH} && echo armed"
            assert (await call(first, "send_message", session_id=target, text=written))["output"] == "armed\n"
        # A new server process attaches a new control shell on first use: the program, this time.
        async with Client(params, mode="legacy") as second:
            (pid,) = server_pids(home)
            assert (await call(second, "send_message", session_id=calm, text="echo warm"))["output"] == "warm\n"
            before = peak_rss_mb(pid)
            with anyio.fail_after(HANG_S):
                reply = await call(second, "send_message", session_id=target, text="echo hi", wait_s=50)
            grown = peak_rss_mb(pid) - before
            print(f"\ngiant frame: server peak memory {before:.0f} MB before, grew by {grown:.1f} MB")
            assert grown < 50, f"the server's peak memory grew by {grown:.0f} MB"
            assert reply["turn_status"] == "failed"
            assert "a JSON frame of 60000002 bytes, over the 65536-byte limit" in reply["reason"]
            assert (await call(second, "send_message", session_id=calm, text="echo fine"))["output"] == "fine\n"
    finally:
        remove_labelled(docker_engine, server_id(Settings(home=home)))


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        ("x", "'entries' is a string"),
        ([["a", "file", 1]], "not [name, kind, size, mtime]"),
        ([["../up", "file", 1, 0]], "not one path part"),
        ([["..", "folder", 1, 0]], "not one path part"),
        ([["a", "device", 1, 0]], "unknown entry kind"),
        ([["a", "file", "1", 0]], "not an integer in range"),
        ([["a", "file", 1 << 60, 0]], "not an integer in range"),
    ],
)
def test_a_folder_listing_the_driver_would_misread_costs_the_connection(entries: Any, said: str) -> None:
    """A control shell can say anything: a listing is read only in the shape the driver relies on."""
    import json

    from sandbox_backends.control.frames import ProtocolError, parse_answer

    with pytest.raises(ProtocolError, match=re.escape(said)):
        parse_answer(json.dumps({"req": "r1", "ok": True, "entries": entries}).encode())
    assert parse_answer(json.dumps({"req": "r1", "entries": [["a b", "symlink", 3, -5]]}).encode())["entries"]
