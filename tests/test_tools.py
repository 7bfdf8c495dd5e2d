"""The tools through a real MCP client, in both protocol eras, on the local driver."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client

from .conftest import call, call_error, new_session, processes_marked, stdio_params

pytestmark = pytest.mark.anyio

TOOLS = {
    "create_session",
    "send_message",
    "get_session",
    "list_sessions",
    "interrupt",
    "close_session",
    "pause_session",
    "fork_session",
    "expose_port",
    "checkpoint_session",
    "restore_session",
    "answer_approval",
}


async def test_tools_list_shows_every_tool_with_output_schemas_and_hints(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.output_schema and tool.output_schema.get("type") == "object", tool.name
        assert tool.description and len(tool.description) > 80, tool.name
    assert tools["get_session"].annotations.read_only_hint is True
    assert tools["list_sessions"].annotations.read_only_hint is True
    assert tools["close_session"].annotations.destructive_hint is True
    assert tools["close_session"].annotations.idempotent_hint is True
    assert tools["send_message"].annotations.read_only_hint is False
    assert tools["pause_session"].annotations.idempotent_hint is True
    assert tools["fork_session"].annotations.destructive_hint is False


async def test_create_session_returns_a_ready_session_with_a_workspace(client: Client) -> None:
    session = await call(client, "create_session", title="demo", tags=["a", "b"], metadata={"ticket": 7})
    assert session["status"] == "ready" and session["phase"] == "ready"
    assert session["id"].startswith("ses_") and len(session["id"]) == 36
    assert session["tags"] == ["a", "b"] and session["metadata"] == {"ticket": 7}
    assert session["workspace"]


async def test_cd_exports_and_functions_carry_between_messages(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text="cd /tmp && export X=1 && greet() { echo hello $1; }")
    reply = await call(client, "send_message", session_id=sid, text="pwd; echo $X; greet world")
    assert reply["output"].splitlines() == ["/tmp", "1", "hello world"]


async def test_reply_holds_output_exit_code_and_duration(client: Client) -> None:
    sid = await new_session(client)
    reply = await call(client, "send_message", session_id=sid, text="echo out; echo err >&2; sleep 0.2; exit 3")
    assert reply["turn_status"] == "completed" and reply["status"] == "ready"
    assert reply["output"] == "out\nerr\n"
    assert reply["exit_code"] == 3
    assert reply["duration_s"] >= 0.2


async def printed(client: Client, sid: str, text: str) -> bool:
    """Whether the running turn has printed `text` so far."""
    turn = (await call(client, "get_session", session_id=sid))["session"]["last_turn"]
    return bool(turn) and turn["output"] == text


async def test_interrupt_stops_the_command_and_everything_it_started(client: Client) -> None:
    sid = await new_session(client)
    replies = {}

    async def send() -> None:
        replies["send"] = await call(
            client, "send_message", session_id=sid, text="sleep 300 & setsid sleep 301 & echo started; sleep 302"
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        with anyio.fail_after(10):  # every process started, and the echo between them printed
            while len(processes_marked(sid)) < 4 or not await printed(client, sid, "started\n"):
                await anyio.sleep(0.05)
        stopped = await call(client, "interrupt", session_id=sid)  # says interrupted only once the turn ended
    assert stopped["interrupted"] is True and stopped["status"] == "ready"
    assert replies["send"]["turn_status"] == "interrupted"
    assert replies["send"]["output"] == "started\n"
    # the group (sleep 300, sleep 302, bash) is gone; the setsid escapee is cleaned up on close
    assert len(processes_marked(sid)) <= 1
    again = await call(client, "send_message", session_id=sid, text="echo still usable")
    assert again["output"] == "still usable\n"
    await call(client, "close_session", session_id=sid)
    assert processes_marked(sid) == []


async def test_interrupt_when_nothing_runs_says_so(client: Client) -> None:
    sid = await new_session(client)
    reply = await call(client, "interrupt", session_id=sid)
    assert reply["interrupted"] is False and "Nothing is running" in reply["message"]


async def test_a_second_message_while_busy_is_refused_naming_the_running_turn(client: Client) -> None:
    sid = await new_session(client)
    busy = await call(client, "send_message", session_id=sid, text="sleep 30", wait_s=0)
    assert busy["status"] == "busy" and busy["turn_status"] == "running" and busy["turn"] == 1
    assert "get_session" in busy["next_step"]
    error = await call_error(client, "send_message", session_id=sid, text="echo hi")
    assert "busy running turn 1" in error and "interrupt" in error
    await call(client, "interrupt", session_id=sid)


async def test_a_long_turn_is_followed_with_get_session(client: Client) -> None:
    sid = await new_session(client)
    busy = await call(client, "send_message", session_id=sid, text="for i in 1 2 3; do echo line $i; sleep 0.5; done", wait_s=0.2)
    assert busy["status"] == "busy"
    cursor = busy["events_cursor"]
    seen = busy["output"]
    for _ in range(20):
        detail = await call(client, "get_session", session_id=sid, wait_s=1, events_after=cursor)
        seen += "".join(e["data"].get("text", "") for e in detail["events"] if e["type"] == "tool.output")
        cursor = detail["events_cursor"]
        if detail["session"]["status"] != "busy":
            break
    assert detail["session"]["status"] == "ready"
    assert detail["session"]["last_turn"]["output"] == "line 1\nline 2\nline 3\n"
    assert seen == "line 1\nline 2\nline 3\n"
    assert "turn.completed" in {e["type"] for e in detail["events"]}


async def test_unknown_ids_get_an_error_that_says_what_to_do(client: Client) -> None:
    for tool, args in [
        ("get_session", {}),
        ("send_message", {"text": "true"}),
        ("interrupt", {}),
        ("close_session", {}),
    ]:
        error = await call_error(client, tool, session_id="ses_0000", **args)
        assert "No session 'ses_0000'. Call list_sessions to see existing sessions." in error, tool


async def test_wrong_types_are_tool_errors(client: Client) -> None:
    sid = await new_session(client)
    assert "text" in await call_error(client, "send_message", session_id=sid, text=123)
    assert "wait_s" in await call_error(client, "send_message", session_id=sid, text="true", wait_s="soon")
    assert "limit" in await call_error(client, "list_sessions", limit=0)
    assert "statuses" in await call_error(client, "list_sessions", statuses=["sleeping"])


async def test_an_unknown_argument_is_refused_naming_the_ones_the_tool_takes(client: Client) -> None:
    """A misspelled or invented option used to be dropped: create_session(runtime="firecracker") made an ordinary
    session and said nothing."""
    refused = await call_error(client, "create_session", driver="local", runtime="firecracker")
    assert refused.startswith("Unknown argument 'runtime' for create_session, which takes only: title, driver, agent,")
    assert (await call(client, "list_sessions"))["total"] == 0  # nothing was made
    sid = await new_session(client)
    refused = await call_error(client, "send_message", session_id=sid, txt="echo hi", wait=3)
    assert refused == (
        "Unknown arguments 'txt' (did you mean 'text'?), 'wait' (did you mean 'wait_s'?) for send_message, "
        "which takes only: session_id, text, wait_s, queue, images."
    )
    assert (await call(client, "get_session", session_id=sid))["session"]["turns"] == 0


async def test_empty_and_oversized_messages_are_refused(client: Client) -> None:
    sid = await new_session(client)
    assert "empty" in await call_error(client, "send_message", session_id=sid, text="  \n")
    error = await call_error(client, "send_message", session_id=sid, text="#" * 10_000_000)
    assert "10000000 bytes" in error and "limit" in error
    detail = await call(client, "get_session", session_id=sid)
    assert detail["session"]["turns"] == 0 and detail["session"]["status"] == "ready"


async def test_a_closed_session_takes_no_messages(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "close_session", session_id=sid)
    error = await call_error(client, "send_message", session_id=sid, text="true")
    assert "is closed" in error and "Create a new session" in error


async def test_close_twice_succeeds_both_times(client: Client) -> None:
    sid = await new_session(client)
    first = await call(client, "close_session", session_id=sid)
    second = await call(client, "close_session", session_id=sid)
    assert first["status"] == second["status"] == "dead"
    assert "already closed" in second["message"]


async def test_close_a_busy_session_stops_its_turn(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text="sleep 300", wait_s=0)
    closed = await call(client, "close_session", session_id=sid)
    assert closed["status"] == "dead"
    detail = await call(client, "get_session", session_id=sid)
    assert detail["session"]["last_turn"]["status"] == "interrupted"
    assert processes_marked(sid) == []


async def test_close_with_delete_forgets_the_session(client: Client) -> None:
    sid = await new_session(client)
    workspace = anyio.Path((await call(client, "get_session", session_id=sid))["session"]["workspace"])
    assert workspace.is_absolute() and await workspace.is_dir()
    await call(client, "close_session", session_id=sid, delete=True)
    assert "No session" in await call_error(client, "get_session", session_id=sid)
    assert not await workspace.exists()


async def test_huge_output_is_bounded_and_says_how_much_was_cut(client: Client) -> None:
    sid = await new_session(client)
    reply = await call(
        client, "send_message", session_id=sid, text="head -c 50000000 /dev/zero | tr '\\0' x; echo; echo END", wait_s=50
    )
    assert reply["output_bytes"] == 50_000_005
    assert reply["output_cut_bytes"] > 49_000_000
    assert len(reply["output"]) < 40_000
    assert "bytes cut from the middle" in reply["output"]
    assert reply["output"].endswith("END\n")


async def test_a_command_past_its_timeout_is_stopped(client: Client) -> None:
    sid = await new_session(client, command_timeout_s=0.5)
    reply = await call(client, "send_message", session_id=sid, text="echo before; sleep 30")
    assert reply["turn_status"] == "failed" and "timeout" in reply["reason"]
    assert reply["output"] == "before\n"
    assert processes_marked(sid) == []


async def test_list_sessions_filters_by_status(client: Client) -> None:
    live = await new_session(client, title="live")
    closed = await new_session(client, title="closed")
    await call(client, "close_session", session_id=closed)
    ready = await call(client, "list_sessions", statuses=["ready"])
    assert [s["id"] for s in ready["sessions"]] == [live] and ready["total"] == 1
    everything = await call(client, "list_sessions")
    assert [s["id"] for s in everything["sessions"]] == [closed, live]
    assert "last_response" not in everything["sessions"][0]


async def test_unknown_driver_or_agent_is_refused(client: Client) -> None:
    assert "Unknown driver 'nope'" in await call_error(client, "create_session", driver="nope")
    assert "Unknown agent 'robot'" in await call_error(client, "create_session", agent="robot")


SLOW_PRINTER = "for i in 1 2 3 4 5; do echo line $i; done; sleep 60"
PRINTED = "line 1\nline 2\nline 3\nline 4\nline 5\n"


async def wait_for_output(client: Client, sid: str) -> dict[str, object]:
    """get_session until the running turn shows its five lines (get_session waits at most 1 s a call)."""
    with anyio.fail_after(30):
        while True:
            turn = (await call(client, "get_session", session_id=sid, wait_s=1))["session"]["last_turn"]
            assert turn["status"] == "running"
            if turn["output"] == PRINTED:
                return turn


async def test_get_session_shows_a_running_turns_output_so_far(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text=SLOW_PRINTER, wait_s=0)
    turn = await wait_for_output(client, sid)
    assert turn["output_bytes"] == len(PRINTED) and turn["output_cut_bytes"] == 0
    await call(client, "interrupt", session_id=sid)


async def test_get_session_through_another_server_shows_the_output_so_far(home: Path) -> None:
    """The turn runs in one server process; a second one, on the same state folder, reads its output."""
    async with Client(stdio_params(home)) as runner, Client(stdio_params(home)) as reader:
        sid = await new_session(runner)
        await call(runner, "send_message", session_id=sid, text=SLOW_PRINTER, wait_s=0)
        turn = await wait_for_output(reader, sid)
        assert turn["output_bytes"] == len(PRINTED)
        await call(reader, "interrupt", session_id=sid)
