"""What only the local driver does: a runner that outlives its killed server and hands its result over.

The shell semantics it shares with every driver are checked in tests/driver_conformance.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from sandbox_backends.base import SandboxSpec
from sandbox_backends.local import LocalDriver
from tests.conftest import processes_marked

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent


SERVER = """
import anyio, sys
from sandbox_backends.base import SandboxSpec
from sandbox_backends.local import LocalDriver

async def main():
    sb = await LocalDriver(sys.argv[1]).create(SandboxSpec(name="outlives"))
    await sb.exec("cd sub 2>/dev/null || mkdir sub && cd sub; export KEPT=1")
    async def out(chunk):
        print("OUT", chunk.decode().strip(), flush=True)
    await sb.exec(sys.argv[2], on_output=out)

anyio.run(main)
"""


async def test_a_command_outlives_its_killed_server_and_its_result_is_taken_over(tmp_path: Path) -> None:
    script = "echo begin; sleep 0.5; echo end > done.txt; (exit 7)"
    async with await anyio.open_process([sys.executable, "-c", SERVER, str(tmp_path), script], cwd=REPO) as server:
        assert server.stdout is not None
        with anyio.fail_after(30):  # a line at a time: print() writes its parts apart where stdout is unbuffered
            assert await BufferedByteReceiveStream(server.stdout).receive_until(b"\n", 1000) == b"OUT begin"
        server.kill()  # as `kill -9`: no cleanup of any kind
    with anyio.fail_after(10):  # the runner finishes its command, then sees its input gone and exits
        while processes_marked("outlives"):
            await anyio.sleep(0.05)
    assert (tmp_path / "outlives" / "workspace" / "sub" / "done.txt").read_text() == "end\n"
    driver = LocalDriver(tmp_path)
    try:
        later = await driver.attach("outlives", SandboxSpec(name="outlives"))
        result = await later.take_over()
        assert result is not None and (result.exit_code, result.output, result.interrupted) == (7, "begin\n", False)
        r = await later.exec("basename $PWD; echo KEPT=$KEPT")
        assert r.output == "sub\nKEPT=1\n"
    finally:
        await driver.aclose()
    assert processes_marked("outlives") == []
