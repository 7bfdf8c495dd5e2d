"""Checkpoints through real clients, on the local driver and on the real Docker engine: a restore after a
destructive turn brings the files, the cwd and the exported variables back and marks the later turns undone;
the llm agent's conversation goes back with it (against the scripted model server); the size bound refuses
a checkpoint with a clear error and keeps nothing of it; deleting the session removes its checkpoints; and
the errors of what cannot be checkpointed or restored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error, new_session, start_turn
from .docker_support import docker_engine  # noqa: F401
from .fake_llm import FakeLLM, Reply
from .test_cli import cli_ok
from .test_llm_agent import llm, llm_settings  # noqa: F401
from .test_pause_fork import DRIVERS, SETUP

pytestmark = pytest.mark.anyio


@pytest.fixture(params=DRIVERS)
def driven(request: pytest.FixtureRequest, home: Path) -> Settings:
    if request.param == "docker":
        return request.getfixturevalue("docker_settings")  # type: ignore[no-any-return]
    return Settings(home=home, command_timeout_s=120)


async def listed(client: Client, sid: str) -> list[dict[str, Any]]:
    read = await client.read_resource(f"session://{sid}/checkpoints")
    return json.loads(read.contents[0].text)  # type: ignore[union-attr,no-any-return]


def checkpoint_copies(settings: Settings, session: dict[str, Any]) -> list[str]:
    """What holds the session's checkpoints, as a person would look: docker volumes, or local folders."""
    if session["driver"] == "docker":
        import docker

        engine = docker.from_env()
        try:
            return [v.name for v in engine.volumes.list() if v.name.startswith(f"mcp-ck-{session['id']}-")]
        finally:
            engine.close()
    folder = Path(session["workspace"]).parent / ".checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def test_a_restore_after_a_destructive_turn_brings_files_and_shell_back(driven: Settings) -> None:
    async with Client(create_server(driven)) as client:
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text=SETUP)
        saved = await call(client, "checkpoint_session", session_id=sid, name="before")
        assert (saved["name"], saved["turn"]) == ("before", 1) and saved["size_mb"] >= 0
        wrecked = await call(
            client, "send_message", session_id=sid, text="echo x > ../new; rm -rf ../src; cd /; export COLOR=gone"
        )
        assert wrecked["turn_status"] == "completed"

        session = await call(client, "restore_session", session_id=sid, name="before")
        assert session["status"] == "ready"
        reply = await call(
            client, "send_message", session_id=sid, text="pwd; echo $COLOR; cat note.txt; wc -l < deep/numbers; ls .."
        )
        workspace = session["workspace"]
        assert reply["turn"] == 3  # numbers go on: turn 2 keeps its number, undone
        assert reply["output"] == f"{workspace}/src\nteal\nkept\n3000\nsrc\n"  # `new` is gone with the restore
        transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text  # type: ignore[union-attr]
        assert "rm -rf ../src" in transcript and "(turn 2," in transcript and "undone by a restore" in transcript
        assert transcript.count("undone by a restore") == 2  # turn 2's message and its reply; not turn 1 or 3
        assert [c["name"] for c in await listed(client, sid)] == ["before"]

        copies = checkpoint_copies(driven, session)
        assert len(copies) == 1
        await call(client, "close_session", session_id=sid, delete=True)
        assert checkpoint_copies(driven, session) == []


async def test_a_restore_takes_the_llm_conversation_back(home: Path, llm: FakeLLM) -> None:  # noqa: F811
    async with Client(create_server(llm_settings(home, llm))) as client:
        sid = await new_session(client)
        llm.script(Reply(text="Noted: heron."))
        await call(client, "send_message", session_id=sid, text="The code word is heron.", wait_s=30)
        await call(client, "checkpoint_session", session_id=sid, name="heron")
        llm.script(Reply(text="Noted: crane."))
        await call(client, "send_message", session_id=sid, text="No, the code word is crane.", wait_s=30)
        await call(client, "restore_session", session_id=sid, name="heron")
        llm.script(Reply(text="It is heron."))
        await call(client, "send_message", session_id=sid, text="What is the code word?", wait_s=30)
        sent = [m["content"] for m in llm.requests[-1].body["messages"] if m["role"] in ("user", "assistant")]
        assert sent == ["The code word is heron.", "Noted: heron.", "What is the code word?"]


async def test_a_checkpoint_over_the_size_bound_is_refused_and_nothing_is_kept(home: Path) -> None:
    async with Client(create_server(Settings(home=home, max_checkpoint_mb=2))) as client:
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text="head -c 1500000 /dev/urandom > a")
        await call(client, "checkpoint_session", session_id=sid, name="small")
        await call(client, "send_message", session_id=sid, text="head -c 1500000 /dev/urandom > b")
        error = await call_error(client, "checkpoint_session", session_id=sid, name="large")
        assert "may hold 2 MiB together and hold 1 MiB already" in error and "Delete files" in error
        assert [c["name"] for c in await listed(client, sid)] == ["small"]
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert len(checkpoint_copies(Settings(home=home), session)) == 1


async def test_what_cannot_be_checkpointed_or_restored_is_refused_with_the_next_step(settings: Settings, home: Path) -> None:
    async with Client(create_server(settings)) as client:
        sid = await new_session(client)
        assert "name: String should match pattern" in await call_error(client, "checkpoint_session", session_id=sid, name="../x")
        await call(client, "checkpoint_session", session_id=sid, name="one")
        assert "already has a checkpoint named 'one'" in await call_error(
            client, "checkpoint_session", session_id=sid, name="one"
        )
        assert "it has: 'one'" in await call_error(client, "restore_session", session_id=sid, name="two")
        await start_turn(client, sid, "echo started; sleep 60", "started\n")
        assert "interrupt" in await call_error(client, "restore_session", session_id=sid, name="one")
        await call(client, "interrupt", session_id=sid)
        assert "list_sessions" in await call_error(client, "checkpoint_session", session_id="ses_" + "0" * 32, name="x")
    assert "holds" in await cli_ok(home, "checkpoint", sid, "two")
    assert "back at checkpoint 'two'" in await cli_ok(home, "restore", sid, "two")


async def test_a_driver_without_checkpoints_says_so(plugins_installed: Path, settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        sid = await new_session(client, driver="memory")
        assert "memory driver keeps no checkpoints" in await call_error(client, "checkpoint_session", session_id=sid, name="a")


async def test_a_fork_at_a_checkpointed_turn_starts_from_that_checkpoint(driven: Settings) -> None:
    async with Client(create_server(driven)) as client:
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text=SETUP)
        await call(client, "checkpoint_session", session_id=sid, name="one")
        await call(client, "send_message", session_id=sid, text="echo later > ../later; cd ..; export COLOR=red")
        assert "has no checkpoint of turn 2" in await call_error(client, "fork_session", session_id=sid, at_turn=2)
        fork = await call(client, "fork_session", session_id=sid, at_turn=1)
        assert fork["status"] == "ready" and fork["turns"] == 1, fork
        reply = await call(client, "send_message", session_id=fork["id"], text="pwd; echo $COLOR; ls ..")
        assert reply["turn"] == 2 and reply["output"] == f"{fork['workspace']}/src\nteal\nsrc\n"
        transcript = (await client.read_resource(f"session://{fork['id']}/transcript")).contents[0].text  # type: ignore[union-attr]
        assert "COLOR=teal" in transcript and "COLOR=red" not in transcript
