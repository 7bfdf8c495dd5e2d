"""The command line for people, run as a real subprocess next to a real stdio server on the same state folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from .conftest import call, call_error, new_session, processes_marked, start_turn, stdio_params
from .test_stdio import kill_server

pytestmark = pytest.mark.anyio


def cli_env(home: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    if home is not None:
        env["MCP_SESSIONS_HOME"] = str(home)
    return env


async def cli(home: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `mcp-sessions ARGS` to its end; `home` goes in MCP_SESSIONS_HOME unless None."""
    done = await anyio.run_process([sys.executable, "-m", "mcp_sessions", *args], env=cli_env(home), check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def cli_ok(home: Path | None, *args: str) -> str:
    done = await cli(home, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


async def cli_json(home: Path, *args: str) -> dict:
    return json.loads(await cli_ok(home, *args, "--json"))


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr


def table_ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line.startswith("ses_")]


async def test_ls_shows_the_sessions_matching_each_filter_newest_first(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        first = await new_session(client, title="first", tags=["red", "big"])
        second = await new_session(client, title="second", tags=["red"])
        third = await new_session(client, tags=["blue"])
        await call(client, "send_message", session_id=third, text="echo the third one")
        await call(client, "close_session", session_id=second)

        out = await cli_ok(home, "ls")
        assert table_ids(out) == [third, second, first]
        assert "> echo the third one" in out and "first" in out and "local/shell" in out
        assert "3 of 3" in out

        assert table_ids(await cli_ok(home, "ls", "--status", "dead")) == [second]
        assert table_ids(await cli_ok(home, "ls", "--status", "dead", "--status", "ready")) == [third, second, first]
        assert table_ids(await cli_ok(home, "ls", "--tag", "red")) == [second, first]
        assert table_ids(await cli_ok(home, "ls", "--tag", "red", "--tag", "big")) == [first]
        assert table_ids(await cli_ok(home, "ls", "--driver", "local", "--agent", "shell")) == [third, second, first]
        assert table_ids(await cli_ok(home, "ls", "--driver", "docker")) == []
        assert table_ids(await cli_ok(home, "ls", "--agent", "llm")) == []

        page = await cli_json(home, "ls", "--status", "ready")
        assert [s["id"] for s in page["sessions"]] == [third, first] and page["total"] == 2
        assert page["sessions"][0]["turns"] == 1 and page["next_cursor"] is None

        created = {s["id"]: s["created_at"] for s in (await cli_json(home, "ls"))["sessions"]}
        at_second = created[second]
        assert [s["id"] for s in (await cli_json(home, "ls", "--created-after", at_second))["sessions"]] == [third, second]
        assert [s["id"] for s in (await cli_json(home, "ls", "--created-before", at_second))["sessions"]] == [second, first]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await cli_json(home, "ls", "--created-after", later))["total"] == 0


async def test_ls_pages_with_the_cursor_it_prints(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        made = [await new_session(client, title=f"s{i}") for i in range(3)]
        seen: list[str] = []
        args = ["ls", "--limit", "2"]
        while True:
            out = await cli_ok(home, *args)
            seen += table_ids(out)
            assert "of 3" in out
            if "--cursor" not in out:
                break
            args = ["ls", "--limit", "2", "--cursor", out.rsplit("--cursor ", 1)[1].strip()]
        assert seen == made[::-1]


async def test_show_prints_the_state_and_the_whole_transcript(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client, title="shown", tags=["t1"])
        await call(client, "send_message", session_id=sid, text="echo first answer")
        await call(client, "send_message", session_id=sid, text="echo second answer; exit 7")

        out = await cli_ok(home, "show", sid)
        assert sid in out and "'shown'" in out
        assert "status     ready" in out
        assert "turn 2 completed, exit code 7" in out and "tokens" in out
        for text in ("echo first answer", "first answer\n", "echo second answer; exit 7", "second answer\n"):
            assert text in out
        assert out.index("echo first answer") < out.index("echo second answer")

        shown = await cli_json(home, "show", sid)
        assert shown["session"]["id"] == sid and shown["session"]["last_turn"]["exit_code"] == 7
        assert "second answer" in shown["transcript"]


async def test_show_names_why_a_closed_session_ended(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        await call(client, "close_session", session_id=sid)
        out = await cli_ok(home, "show", sid)
        assert "status     dead" in out and "closed: closed" in out


async def test_events_follow_prints_a_turn_that_runs_meanwhile_and_ends_when_the_session_closes(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        command = [sys.executable, "-m", "mcp_sessions", "events", sid, "--follow"]
        lines: list[str] = []
        async with await anyio.open_process(command, env=cli_env(home)) as follower:
            assert follower.stdout is not None

            async def read_until(needle: str) -> None:
                buffer = ""
                while not any(needle in line for line in lines):
                    chunk = await follower.stdout.receive()
                    buffer += chunk.decode()
                    *complete, buffer = buffer.split("\n")
                    lines.extend(complete)

            with anyio.fail_after(60):
                await read_until('status {"status":"ready"}')
                # The follower is now past the events that were there when it started.
                await call(client, "send_message", session_id=sid, text="echo made meanwhile")
                await call(client, "close_session", session_id=sid)
                try:
                    await read_until('status {"status":"dead"}')
                except anyio.EndOfStream:
                    pass
                assert await follower.wait() == 0

        types = [line.split(" ", 3)[2] for line in lines]
        seqs = [int(line.split(" ", 1)[0]) for line in lines]
        assert seqs == list(range(1, len(lines) + 1))
        assert types[0] == "session.created" and types[-1] == "status" and lines[-1].endswith('{"status":"dead"}')
        for expected in ("turn.started", "tool.output", "turn.completed", "session.closed"):
            assert expected in types
        output = [json.loads(line.split(" ", 3)[3]) for line in lines if " tool.output " in line]
        assert "".join(o["text"] for o in output) == "made meanwhile\n"


async def test_events_prints_one_line_per_event_after_a_cursor(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="printf 'a\\nb\\n'")
        every = (await cli_ok(home, "events", sid)).splitlines()
        assert len(every) == reply["events_cursor"]
        assert all(len(line.split(" ", 3)) == 4 for line in every)
        later = (await cli_ok(home, "events", sid, "--after", "5")).splitlines()
        assert later == every[5:]
        as_json = [json.loads(line) for line in (await cli_ok(home, "events", sid, "--json")).splitlines()]
        assert [e["seq"] for e in as_json] == list(range(1, len(every) + 1))
        # a cursor the store cannot hold is refused with the range, and the events stay readable
        for huge in (str(10**30), "-1", "1e30"):
            assert_one_line_error(await cli(home, "events", sid, "--after", huge), "--after", "between 0 and 9223372036854775807")
        assert (await cli_ok(home, "events", sid)).splitlines() == every


async def test_close_makes_the_session_dead_for_the_running_server(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        out = await cli_ok(home, "close", sid)
        assert "closed" in out
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["status"] == "dead" and session["close_reason"] == "closed"
        assert "closed" in await call_error(client, "send_message", session_id=sid, text="true")
        assert "already closed" in await cli_ok(home, "close", sid)


async def test_close_stops_a_turn_the_server_is_running(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        busy = await call(client, "send_message", session_id=sid, text="echo started; sleep 300", wait_s=0.5)
        assert busy["status"] == "busy"
        await cli_ok(home, "close", sid)
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["status"] == "dead"
        assert session["last_turn"]["status"] == "interrupted" and session["last_turn"]["output"] == "started\n"
        assert processes_marked(sid) == []


async def test_close_delete_removes_the_session_for_the_running_server(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        assert "deleted" in await cli_ok(home, "close", sid, "--delete")
        assert "No session" in await call_error(client, "get_session", session_id=sid)
        assert table_ids(await cli_ok(home, "ls")) == []


async def test_an_unknown_session_is_one_line_on_stderr(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        await new_session(client)
        for command in (["show"], ["events"], ["events", "--follow"], ["close"], ["close", "--delete"]):
            done = await cli(home, command[0], "ses_00000000000000000000000000000000", *command[1:])
            assert_one_line_error(done, "no session 'ses_00000000000000000000000000000000'", "mcp-sessions ls")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--status", "sleeping"], ["--status", "sleeping"]),
        (["--created-after", "yesterday"], ["--created-after", "ISO 8601"]),
        (["--created-before", "2026-13-45"], ["--created-before"]),
        (["--limit", "0"], ["--limit", "1 and 200"]),
        (["--limit", "201"], ["--limit", "1 and 200"]),
        (["--limit", "many"], ["--limit"]),
        (["--cursor", "not-a-cursor"], ["--cursor"]),
    ],
)
async def test_a_bad_filter_is_one_line_on_stderr(home: Path, args: list[str], words: list[str]) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        await new_session(client)
    assert_one_line_error(await cli(home, "ls", *args), *words)


async def test_an_unreadable_database_is_one_line_on_stderr_and_left_untouched(home: Path) -> None:
    home.mkdir(parents=True)
    db = home / "sessions.db"
    db.write_bytes(b"this is not a database" * 100)
    for command in (["ls"], ["show", "ses_00000000000000000000000000000000"], ["close", "ses_x"]):
        assert_one_line_error(await cli(home, *command), "cannot be read", str(db))
    assert db.read_bytes() == b"this is not a database" * 100


async def test_a_missing_database_is_reported_not_created(home: Path) -> None:
    assert_one_line_error(await cli(home, "ls"), "no state database", str(home / "sessions.db"))
    assert not home.exists()


async def test_home_may_come_before_or_after_the_command(home: Path, tmp_path: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
    assert table_ids(await cli_ok(None, "--home", str(home), "ls")) == [sid]
    assert table_ids(await cli_ok(None, "ls", "--home", str(home))) == [sid]
    assert sid in await cli_ok(None, "show", sid, "--home", str(home))
    # A flag wins over the variable, wherever it stands.
    assert table_ids(await cli_ok(tmp_path / "elsewhere", "ls", "--home", str(home))) == [sid]


async def test_serve_is_the_stdio_server_with_every_option(home: Path) -> None:
    help_text = await cli_ok(None, "serve", "--help")
    for flag in (
        "--home",
        "--driver",
        "--agent",
        "--image",
        "--docker-pool",
        "--command-timeout",
        "--max-command-timeout",
        "--max-output-bytes",
        "--max-message-bytes",
        "--max-file-bytes",
        "--create-timeout",
        "--log-level",
    ):
        assert flag in help_text
    for command in ("serve", "ls", "show", "events", "close"):
        assert command in await cli_ok(None, "--help")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_sessions", "serve", "--home", str(home)], env=cli_env(None)
    )
    async with Client(params, mode="legacy") as client:
        sid = await new_session(client)
        reply = await call(client, "send_message", session_id=sid, text="echo served")
        assert reply["output"] == "served\n"
    assert (home / "sessions.db").exists()


async def test_started_by_hand_in_a_terminal_it_says_what_it_is_and_how_to_quit(home: Path) -> None:
    """On a terminal the stdio server would seem to hang: it says on stderr what it waits for and how to
    quit, and Ctrl-D ends it. Started by a client, on pipes, it says nothing of the kind."""
    import pty

    master, slave = pty.openpty()
    command = [sys.executable, "-m", "mcp_sessions"]
    with subprocess.Popen(command, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home)) as proc:
        os.close(slave)
        assert proc.stderr is not None
        said = b""
        with anyio.fail_after(30):  # only turns a hang into a failure
            while b"Quit with Ctrl-C or Ctrl-D." not in said:
                chunk = await anyio.to_thread.run_sync(proc.stderr.read1, 4096, abandon_on_cancel=True)
                assert chunk, f"stderr ended first: {said!r}"
                said += chunk
        text = said.decode()
        assert "an MCP server, now waiting for an MCP client on stdin and stdout" in text
        assert "serve --http" in text and "http://127.0.0.1:8765/mcp" in text
        os.write(master, b"\x04")  # Ctrl-D: end of input
        with anyio.fail_after(30):
            code = await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        assert code == 0
        assert proc.stdout is not None and proc.stdout.read() == b""  # nothing but the protocol on stdout
    os.close(master)

    piped = await anyio.run_process(command, input=b"", env=cli_env(home), check=False)
    assert piped.returncode == 0 and b"waiting for an MCP client" not in piped.stderr


async def test_events_follow_stopped_with_ctrl_c_exits_130(home: Path) -> None:
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        command = [sys.executable, "-m", "mcp_sessions", "events", sid, "--follow"]
        # As from a terminal, SIGINT at its default in the command: a test run started in the background ignores
        # SIGINT, which a child would inherit, while a handler set here is reset to the default in the child.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            follower = await anyio.open_process(command, env=cli_env(home))
        finally:
            signal.signal(signal.SIGINT, previous)
        async with follower:
            assert follower.stdout is not None and follower.stderr is not None
            printed = b""
            with anyio.fail_after(60):
                while b'status {"status":"ready"}' not in printed:  # following now, past what was there
                    printed += await follower.stdout.receive()
                follower.send_signal(signal.SIGINT)  # Ctrl-C
                code = await follower.wait()
            stderr = b"".join([chunk async for chunk in follower.stderr]).decode()
    assert code == 130, stderr
    assert "Traceback" not in stderr


async def test_the_command_line_finishes_a_turn_left_by_a_server_that_died(home: Path) -> None:
    """A server is killed while a turn runs; with no server left, `show` finishes the turn first: interrupted,
    "server restarted", its output kept, and nothing it started still running."""
    async with Client(stdio_params(home), mode="legacy") as client:
        sid = await new_session(client)
        await start_turn(client, sid, "echo partial; sleep 300", shown="partial\n")
        await kill_server(home)
    assert processes_marked(sid)  # the turn's command outlived its server
    shown = await cli_json(home, "show", sid)
    turn = shown["session"]["last_turn"]
    assert (turn["status"], turn["reason"], turn["output"]) == ("interrupted", "server restarted", "partial\n"), turn
    assert shown["session"]["status"] == "ready"
    assert processes_marked(sid) == []
    assert table_ids(await cli_ok(home, "ls", "--status", "ready")) == [sid]
