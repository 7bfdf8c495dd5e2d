"""Session resources: state, transcript, events, workspace files, and the live list."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from .conftest import call, new_session

pytestmark = pytest.mark.anyio


async def read_text(client: Client, uri: str) -> str:
    result = await client.read_resource(uri)
    return result.contents[0].text


async def test_transcript_shows_the_whole_conversation(client: Client) -> None:
    sid = await new_session(client, title="talk")
    await call(client, "send_message", session_id=sid, text="echo one")
    await call(client, "send_message", session_id=sid, text="echo two; exit 4")
    text = await read_text(client, f"session://{sid}/transcript")
    assert text.index("echo one") < text.index("\none\n") < text.index("echo two") < text.index("\ntwo\n")
    assert "[turn 1 completed, exit code 0" in text and "[turn 2 completed, exit code 4" in text
    assert "'talk'" in text


async def test_state_resource_is_the_session_as_json(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text="echo hi")
    state = json.loads(await read_text(client, f"session://{sid}"))
    assert state["id"] == sid and state["status"] == "ready" and state["turns"] == 1
    assert state["last_turn"]["output"] == "hi\n"


async def test_events_resource_numbers_every_event_in_order(client: Client) -> None:
    sid = await new_session(client)
    await call(client, "send_message", session_id=sid, text="echo hi")
    events = json.loads(await read_text(client, f"session://{sid}/events"))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "session.created"
    for expected in ("turn.started", "tool.started", "tool.output", "tool.completed", "turn.completed"):
        assert expected in types
    assert types.index("turn.started") < types.index("tool.output") < types.index("turn.completed")


async def test_files_resource_reads_workspace_files_and_refuses_escapes(client: Client) -> None:
    sid = await new_session(client, files={"src/app.py": "print('hi')\n"})
    assert await read_text(client, f"session://{sid}/files/src/app.py") == "print('hi')\n"
    await call(
        client, "send_message", session_id=sid, text="mkdir -p out && echo made > out/result.txt && ln -s /etc/passwd leak"
    )
    assert await read_text(client, f"session://{sid}/files/out/result.txt") == "made\n"
    for bad in ("../../../etc/passwd", "%2Fetc%2Fpasswd", "src/../../x"):  # the URI template takes none of these
        with pytest.raises(MCPError, match="Unknown resource"):
            await client.read_resource(f"session://{sid}/files/{bad}")
    with pytest.raises(MCPError, match="'leak' is outside the workspace"):  # the driver refuses where a link leads
        await client.read_resource(f"session://{sid}/files/leak")
    with pytest.raises(MCPError, match="No such file"):
        await client.read_resource(f"session://{sid}/files/missing.txt")


async def test_create_refuses_file_paths_outside_the_workspace(client: Client) -> None:
    result = await client.call_tool("create_session", {"files": {"../escape.txt": "x"}})
    assert result.is_error and "relative to the workspace" in result.content[0].text


async def test_unknown_session_resource_is_not_found(client: Client) -> None:
    with pytest.raises(MCPError, match="No session 'ses_missing'"):
        await client.read_resource("session://ses_missing/transcript")


async def test_resource_list_shows_live_sessions_only(client: Client) -> None:
    live = await new_session(client, title="live one")
    gone = await new_session(client)
    await call(client, "close_session", session_id=gone)
    uris = {r.uri for r in (await client.list_resources()).resources}
    assert f"session://{live}" in uris and f"session://{live}/transcript" in uris
    assert not any(gone in uri for uri in uris)


async def test_folders_resources_list_the_workspace_without_following_links_out(client: Client) -> None:
    sid = await new_session(client, files={"src/app.py": "print('hi')\n"})
    await call(client, "send_message", session_id=sid, text="ln -s /etc etc-link && mkfifo pipe")
    top = json.loads(await read_text(client, f"session://{sid}/folders"))
    assert [(e["name"], e["kind"]) for e in top["entries"]] == [("etc-link", "symlink"), ("pipe", "other"), ("src", "folder")]
    src = json.loads(await read_text(client, f"session://{sid}/folders/src"))
    assert [(e["path"], e["size"]) for e in src["entries"]] == [("src/app.py", 12)]
    with pytest.raises(MCPError, match="outside the workspace"):
        await client.read_resource(f"session://{sid}/folders/etc-link")
    with pytest.raises(MCPError, match="'pipe' is a FIFO \\(named pipe\\), not a folder"):
        await client.read_resource(f"session://{sid}/folders/pipe")
    with pytest.raises(MCPError, match="No such folder in the workspace: 'nowhere'"):
        await client.read_resource(f"session://{sid}/folders/nowhere")
