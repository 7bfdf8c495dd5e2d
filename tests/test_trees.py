"""Session trees through real clients: children made under a parent, listed by parent, closed and deleted
with it; usage rolled up over a tree; budgets set on an ancestor stopping a descendant's turn (the llm agent
against the scripted model server, the shell agent on the local driver); and the errors of bad requests,
over MCP, REST with two owners' tokens, and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error, new_session, processes_marked
from .fake_llm import FakeLLM, Reply, ToolCall
from .test_cli import cli_json, cli_ok, table_ids
from .test_http import ALICE, BOB, TOKENS, bearer, running
from .test_llm_agent import llm, llm_settings  # noqa: F401

pytestmark = pytest.mark.anyio

API = "/api/v1"


async def detail(client: Client, sid: str) -> dict[str, Any]:
    return await call(client, "get_session", session_id=sid)


async def child_of(client: Client, parent: str, **args: Any) -> str:
    return await new_session(client, parent_session_id=parent, **args)


# -- children -------------------------------------------------------------------------------------


async def test_children_are_listed_by_parent_and_counted(client: Client) -> None:
    root = await new_session(client, title="root")
    a = await child_of(client, root, title="a")
    b = await child_of(client, root, title="b")
    grandchild = await child_of(client, a, title="a1")
    await new_session(client, title="unrelated")

    page = await call(client, "list_sessions", parent=root)
    assert [s["id"] for s in page["sessions"]] == [b, a] and page["total"] == 2  # children only, newest first
    assert {s["parent_session_id"] for s in page["sessions"]} == {root}
    assert [s["id"] for s in (await call(client, "list_sessions", parent=a))["sessions"]] == [grandchild]
    assert (await call(client, "list_sessions", parent=grandchild))["total"] == 0
    # a filter like the others: it combines with them, and pages
    assert (await call(client, "list_sessions", parent=root, tags=["none"]))["total"] == 0
    first = await call(client, "list_sessions", parent=root, limit=1)
    second = await call(client, "list_sessions", parent=root, limit=1, cursor=first["next_cursor"])
    assert [first["sessions"][0]["id"], second["sessions"][0]["id"]] == [b, a] and second["next_cursor"] is None

    got = await detail(client, root)
    assert got["children"] == 2 and got["session"]["parent_session_id"] is None
    assert (await detail(client, a))["session"]["parent_session_id"] == root
    assert (await detail(client, grandchild))["children"] == 0


async def test_closing_a_parent_closes_its_whole_tree_and_stops_what_runs_there(client: Client) -> None:
    root = await new_session(client)
    a = await child_of(client, root)
    b = await child_of(client, root)
    grandchild = await child_of(client, a)
    busy = await call(client, "send_message", session_id=grandchild, text="echo started; sleep 300", wait_s=0.5)
    assert busy["status"] == "busy"
    assert processes_marked(grandchild)

    reply = await call(client, "close_session", session_id=root)
    assert reply["closed_descendants"] == 3 and "3 descendant" in reply["message"]
    for sid in (root, a, b, grandchild):
        assert (await detail(client, sid))["session"]["status"] == "dead", sid
    last = (await detail(client, grandchild))["session"]["last_turn"]
    assert last["status"] == "interrupted" and last["output"] == "started\n"
    assert processes_marked(grandchild) == []
    closed = [
        e for e in (await call(client, "get_session", session_id=b, events_after=0))["events"] if e["type"] == "session.closed"
    ]
    assert closed[0]["data"]["closed_with"] == root
    # closing it again closes nothing more
    assert (await call(client, "close_session", session_id=root))["closed_descendants"] == 0


async def test_keep_children_leaves_the_tree_open_and_a_later_close_takes_it(client: Client) -> None:
    root = await new_session(client)
    child = await child_of(client, root)
    reply = await call(client, "close_session", session_id=root, keep_children=True)
    assert reply["closed_descendants"] == 0
    assert (await detail(client, child))["session"]["status"] == "ready"
    assert (await call(client, "send_message", session_id=child, text="echo alive"))["output"] == "alive\n"
    # a closed parent takes no new children
    error = await call_error(client, "create_session", parent_session_id=root)
    assert f"parent session '{root}' is closed" in error and "without parent_session_id" in error
    # closing the closed parent again, without keep_children, closes what it kept
    assert (await call(client, "close_session", session_id=root))["closed_descendants"] == 1
    assert (await detail(client, child))["session"]["status"] == "dead"


async def test_deleting_a_parent_deletes_its_tree_unless_the_children_are_kept(client: Client) -> None:
    root = await new_session(client)
    child = await child_of(client, root)
    grandchild = await child_of(client, child)
    kept_root = await new_session(client)
    kept = await child_of(client, kept_root)

    reply = await call(client, "close_session", session_id=root, delete=True)
    assert reply["deleted"] and reply["closed_descendants"] == 2
    for sid in (root, child, grandchild):
        assert "No session" in await call_error(client, "get_session", session_id=sid)

    await call(client, "close_session", session_id=kept_root, delete=True, keep_children=True)
    assert "No session" in await call_error(client, "get_session", session_id=kept_root)
    assert (await detail(client, kept))["session"]["status"] == "ready"
    assert [s["id"] for s in (await call(client, "list_sessions", parent=kept_root))["sessions"]] == [kept]


# -- bad requests ---------------------------------------------------------------------------------


async def test_bad_parents_and_budgets_are_refused_with_what_to_do(client: Client) -> None:
    missing = "ses_" + "0" * 32
    error = await call_error(client, "create_session", parent_session_id=missing)
    assert f"parent_session_id '{missing}' is not a session of yours" in error and "list_sessions" in error
    error = await call_error(client, "create_session", max_cost_usd=-1)
    assert "max_cost_usd: must be a finite number greater than 0 and at most 1000000" in error
    error = await call_error(client, "create_session", max_turns=0)
    assert "max_turns: must be a whole number between 1 and 1000000" in error
    error = await call_error(client, "create_session", max_duration_s=-5)
    assert "max_duration_s: must be a finite number greater than 0" in error
    assert (await call(client, "list_sessions"))["total"] == 0  # nothing was made


async def test_over_http_a_parent_must_be_the_callers_own(settings: Settings) -> None:
    async with (
        running(settings, TOKENS) as (base, _),
        httpx.AsyncClient(base_url=base, headers=bearer(ALICE), timeout=60) as alice,
        httpx.AsyncClient(base_url=base, headers=bearer(BOB), timeout=60) as bob,
    ):
        root = (await alice.post(f"{API}/sessions", json={"max_turns": 5})).json()["id"]
        r = await bob.post(f"{API}/sessions", json={"parent_session_id": root})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        assert f"parent_session_id '{root}' is not a session of yours" in r.json()["error"]["message"]
        assert (await bob.get(f"{API}/sessions")).json()["total"] == 0

        r = await alice.post(f"{API}/sessions", json={"parent_session_id": root, "max_tokens": 10})
        assert r.status_code == 201 and r.json()["parent_session_id"] == root and r.json()["budget"]["max_tokens"] == 10
        child = r.json()["id"]
        assert [s["id"] for s in (await alice.get(f"{API}/sessions", params={"parent": root})).json()["sessions"]] == [child]
        assert (await bob.get(f"{API}/sessions", params={"parent": root})).json()["total"] == 0
        r = await alice.post(f"{API}/sessions", json={"max_cost_usd": -1})
        assert r.status_code == 400 and "max_cost_usd" in r.json()["error"]["message"]

        r = await alice.post(f"{API}/sessions/{root}/close", params={"keep_children": "true"})
        assert r.json()["closed_descendants"] == 0
        assert (await alice.get(f"{API}/sessions/{child}")).json()["session"]["status"] == "ready"
        r = await alice.post(f"{API}/sessions/{root}/close")
        assert r.json()["closed_descendants"] == 1
        assert (await alice.get(f"{API}/sessions/{child}")).json()["session"]["status"] == "dead"


# -- budgets --------------------------------------------------------------------------------------


async def test_a_token_budget_on_a_parent_stops_a_grandchilds_llm_turn_after_the_model_step_that_reaches_it(
    home: Path,
    llm: FakeLLM,  # noqa: F811
) -> None:
    async with Client(create_server(llm_settings(home, llm))) as client:
        root = await new_session(client, agent="shell", max_tokens=300)
        child = await child_of(client, root, agent="llm", max_tokens=10**9)  # a larger budget: allowed, root's binds
        grandchild = await child_of(client, child, agent="llm")

        llm.script(Reply(text="First answer."))  # 120 tokens
        first = await call(client, "send_message", session_id=grandchild, text="one", wait_s=30)
        assert first["turn_status"] == "completed"

        llm.script(
            Reply(tool_calls=[ToolCall("bash", {"command": "echo step"})]),  # 240: under 300, its tool runs
            Reply(tool_calls=[ToolCall("bash", {"command": "touch never-run"})]),  # 360: the step that reaches it
            Reply(text="never asked for"),
        )
        second = await call(client, "send_message", session_id=grandchild, text="two", wait_s=30)
        assert second["turn_status"] == "failed"
        assert second["reason"].startswith(f"budget max_tokens=300 of session {root} reached: its tree has used 360 tokens")
        assert len(llm.requests) == 3 and llm.pending == 1  # no model call after the budget was reached
        session = (await detail(client, grandchild))["session"]
        assert session["usage"]["total_tokens"] == 360  # what the stopped turn used is kept
        assert not Path(session["workspace"], "never-run").exists()  # the tool call of that step did not run

        # the next turn anywhere under root fails at its start, naming the same budget and what was used
        refused = await call(client, "send_message", session_id=child, text="three", wait_s=30)
        assert refused["turn_status"] == "failed"
        assert refused["reason"].startswith(f"budget max_tokens=300 of session {root} reached: its tree has used 360 tokens")
        assert len(llm.requests) == 3

        tree = await detail(client, root)
        assert tree["children"] == 1 and tree["session"]["usage"]["total_tokens"] == 0
        rolled = tree["usage_with_children"]
        assert rolled["sessions"] == 3 and rolled["total_tokens"] == 360 and rolled["turns"] == 3
        assert rolled["input_tokens"] == 300 and rolled["output_tokens"] == 60
        assert (await detail(client, child))["usage_with_children"]["total_tokens"] == 360


async def test_a_turn_budget_counts_the_turns_of_the_whole_tree(client: Client) -> None:
    root = await new_session(client, max_turns=2)
    child = await child_of(client, root)
    assert (await call(client, "send_message", session_id=root, text="echo 1"))["turn_status"] == "completed"
    assert (await call(client, "send_message", session_id=child, text="echo 2"))["turn_status"] == "completed"
    third = await call(client, "send_message", session_id=child, text="echo 3 > ran")
    assert third["turn_status"] == "failed" and third["output"] == ""
    assert third["reason"].startswith(f"budget max_turns=2 of session {root} reached: its tree has used 2 turns")
    assert "outside the tree" in third["next_step"]  # not "send the next message": it would fail the same way
    assert "No such file" in await call_error_resource(client, child, "ran")
    # a sibling's own, tighter budget binds it first
    tight = await child_of(client, await new_session(client, max_turns=10), max_turns=1)
    assert (await call(client, "send_message", session_id=tight, text="true"))["turn_status"] == "completed"
    refused = await call(client, "send_message", session_id=tight, text="true")
    assert f"max_turns=1 of session {tight} reached" in refused["reason"]


async def call_error_resource(client: Client, sid: str, path: str) -> str:
    with pytest.raises(MCPError) as raised:
        await client.read_resource(f"session://{sid}/files/{path}")
    return str(raised.value)


async def test_a_duration_budget_stops_a_shell_turn_that_runs_past_it_and_refuses_the_next(client: Client) -> None:
    root = await new_session(client, max_duration_s=1.5)
    child = await child_of(client, root)
    reply = await call(client, "send_message", session_id=child, text="echo started; sleep 300", wait_s=50)
    assert reply["turn_status"] == "failed" and reply["output"] == "started\n"
    assert reply["reason"].startswith(f"budget max_duration_s=1.5 of session {root} reached: its tree has used")
    assert processes_marked(child) == []
    assert (await detail(client, child))["session"]["status"] == "ready"  # a budget fails turns, not the session

    refused = await call(client, "send_message", session_id=root, text="echo no")
    assert refused["turn_status"] == "failed" and f"max_duration_s=1.5 of session {root}" in refused["reason"]
    rolled = (await detail(client, root))["usage_with_children"]
    assert rolled["turn_time_s"] >= 1.5 and rolled["turns"] == 2


# -- the command line -----------------------------------------------------------------------------


async def test_the_command_line_lists_by_parent_shows_the_tree_and_closes_it_or_keeps_children(home: Path) -> None:
    settings = Settings(home=home)
    async with Client(create_server(settings)) as client:
        root = await new_session(client, title="root", max_cost_usd=2.5)
        child = await child_of(client, root)
        other = await new_session(client)
        await call(client, "send_message", session_id=child, text="true")
        assert table_ids(await cli_ok(home, "ls", "--parent", root)) == [child]
        assert (await cli_json(home, "ls", "--parent", other))["total"] == 0
        shown = state_rows(await cli_ok(home, "show", root))
        assert shown["children"] == "1; with all descendants: 2 sessions, 1 turns"
        assert shown["budget"] == "max_cost_usd=2.5 (with descendants)"
        assert state_rows(await cli_ok(home, "show", child))["parent"] == root
        as_json = await cli_json(home, "show", root)
        assert as_json["children"] == 1 and as_json["usage_with_children"]["turns"] == 1
        assert "descendant" not in await cli_ok(home, "close", root, "--keep-children")
        assert (await detail(client, child))["session"]["status"] == "ready"
        assert "Its 1 descendant session(s) are closed too." in await cli_ok(home, "close", root)
        assert (await detail(client, child))["session"]["status"] == "dead"


def state_rows(shown: str) -> dict[str, str]:
    """The state block `show` prints first, as {name: value}."""
    rows = {}
    for line in shown.split("\n\n")[0].splitlines():
        name, _, value = line.partition("  ")
        rows[name] = value.strip()
    return rows
