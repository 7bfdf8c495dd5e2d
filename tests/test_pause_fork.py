"""Pause, resume and fork through real clients, on the local driver and on the real Docker engine: a session
paused by its idle timer (its sandbox really stopped) comes back at its next message with its cwd and
exported variables, also after the server is killed with SIGKILL; a fork of an idle and of a busy session
gets the workspace, the shell state and the conversation while the source's running turn goes on untouched;
the llm agent of a fork remembers what was said before (against the scripted model server); and the errors
of what cannot be paused or forked, over MCP, REST and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error, new_session, processes_marked, start_turn, stdio_params
from .docker_support import IMAGE, docker_engine  # noqa: F401
from .fake_llm import FakeLLM, Reply
from .test_cli import cli, cli_ok
from .test_docker_engine_restart import PrivateEngine, private_engine  # noqa: F401
from .test_http import running
from .test_llm_agent import llm, llm_settings  # noqa: F401
from .test_stdio import kill_server

pytestmark = pytest.mark.anyio

DRIVERS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
SETUP = "mkdir -p src/deep && cd src && export COLOR=teal && echo kept > note.txt && seq 1 3000 > deep/numbers"


@pytest.fixture(params=DRIVERS)
def driven(request: pytest.FixtureRequest, home: Path) -> Settings:
    """Settings of a server whose sessions run on the driver of this run."""
    if request.param == "docker":
        return request.getfixturevalue("docker_settings")  # type: ignore[no-any-return]
    return Settings(home=home, command_timeout_s=120)


async def paused_by_timer(client: Client, sid: str, within: float = 60) -> dict[str, Any]:
    """The session once its idle timer has paused it and its sandbox has stopped (phase "paused")."""
    with anyio.fail_after(within):
        while (session := (await call(client, "get_session", session_id=sid))["session"])["phase"] != "paused":
            await anyio.sleep(0.1)
    return session


def sandbox_stopped(settings: Settings, session: dict[str, Any]) -> bool:
    """What a person would check: the container is not running (docker); no process of it is left (local)."""
    if session["driver"] == "docker":
        import docker

        engine = docker.from_env()
        try:
            return not engine.api.inspect_container(session["sandbox"]["id"])["State"]["Running"]
        finally:
            engine.close()
    return not processes_marked(session["id"])


# -- pause and resume -----------------------------------------------------------------------------


async def test_an_idle_session_pauses_and_its_next_message_resumes_it_where_it_was(driven: Settings) -> None:
    async with Client(create_server(driven)) as client:
        sid = await new_session(client, idle_timeout_s=1, idle_action="pause")
        kept = await new_session(client, idle_timeout_s=0)  # never idles: neither paused nor listed as paused
        await call(client, "send_message", session_id=sid, text=SETUP + " && (sleep 600 &)")
        paused = await paused_by_timer(client, sid)
        assert paused["status"] == "paused" and paused["close_reason"] is None
        assert sandbox_stopped(driven, paused)
        page = await call(client, "list_sessions", statuses=["paused"])
        assert [s["id"] for s in page["sessions"]] == [sid] and kept not in str(page)
        assert "resumes it" in (await call(client, "get_session", session_id=sid))["next_step"]

        cursor = (await call(client, "get_session", session_id=sid))["events_cursor"]
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $COLOR; cat note.txt", wait_s=60)
        assert reply["turn_status"] == "completed" and reply["turn"] == 2
        assert reply["output"].split("\n")[:3] == [f"{paused['workspace']}/src", "teal", "kept"]
        events = (await call(client, "get_session", session_id=sid, events_after=cursor))["events"]
        phases = [e["data"]["phase"] for e in events if e["type"] == "phase"]
        assert phases == ["resuming", "ready"]

        # paused by hand, a file read resumes it too
        assert (await call(client, "pause_session", session_id=sid))["status"] == "paused"
        read = await client.read_resource(f"session://{sid}/files/src/note.txt")
        assert read.contents[0].text == "kept\n"  # type: ignore[union-attr]
        assert (await call(client, "get_session", session_id=sid))["session"]["status"] == "ready"


async def test_a_paused_session_survives_a_server_killed_with_sigkill(driven: Settings, home: Path) -> None:
    args = ["--driver", "docker", "--image", IMAGE] if driven.driver == "docker" else []
    async with Client(stdio_params(home, *args), mode="legacy") as client:
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text=SETUP)
        await call(client, "pause_session", session_id=sid)
        await kill_server(home)
    async with Client(stdio_params(home, *args), mode="legacy") as client:
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["status"] == "paused" and sandbox_stopped(driven, session)
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $COLOR; wc -l < deep/numbers", wait_s=60)
        assert reply["output"].split("\n")[:3] == [f"{session['workspace']}/src", "teal", "3000"]


async def test_what_cannot_be_paused_is_refused_with_the_next_step(settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        sid = await new_session(client)
        await start_turn(client, sid, "echo started; sleep 60", "started\n")
        assert "interrupt" in await call_error(client, "pause_session", session_id=sid)
        await call(client, "interrupt", session_id=sid)
        await call(client, "close_session", session_id=sid)
        assert "closed" in await call_error(client, "pause_session", session_id=sid)
        assert "list_sessions" in await call_error(client, "pause_session", session_id="ses_" + "0" * 32)


# -- fork -----------------------------------------------------------------------------------------


async def test_a_fork_copies_workspace_shell_state_and_transcript_and_leaves_the_source_alone(driven: Settings) -> None:
    async with Client(create_server(driven)) as client:
        source = await new_session(client, title="source")
        await call(client, "send_message", session_id=source, text=SETUP)
        fork = await call(client, "fork_session", session_id=source)
        assert fork["status"] == "ready", fork
        assert fork["parent_session_id"] == source and fork["title"] == "source (fork)" and fork["turns"] == 1
        reply = await call(
            client, "send_message", session_id=fork["id"], text="pwd; echo $COLOR; wc -l < deep/numbers; echo new > n"
        )
        assert reply["turn"] == 2
        assert reply["output"].split("\n")[:3] == [f"{fork['workspace']}/src", "teal", "3000"]
        tree = (await call(client, "get_session", session_id=source))["usage_with_children"]
        assert (tree["sessions"], tree["turns"]) == (2, 2)  # the copied turn is the source's, counted once
        transcript = (await client.read_resource(f"session://{fork['id']}/transcript")).contents[0].text  # type: ignore[union-attr]
        assert "export COLOR=teal" in transcript and "echo new" in transcript

        # the source is untouched: no file of the fork, its own turn count
        after = await call(client, "send_message", session_id=source, text="ls; echo $COLOR")
        assert after["turn"] == 2 and after["output"] == "deep\nnote.txt\nteal\n"


async def test_a_busy_session_forks_and_its_running_turn_goes_on_untouched(driven: Settings) -> None:
    async with Client(create_server(driven)) as client:
        source = await new_session(client)
        await call(client, "send_message", session_id=source, text=SETUP)
        await start_turn(client, source, "echo begun; read -t 3 < /dev/zero || sleep 3; echo done > finished", "begun\n")
        fork = await call(client, "fork_session", session_id=source)
        assert fork["status"] == "ready" and fork["turns"] == 1  # the running turn is not copied
        ended = await call(client, "get_session", session_id=source, wait_s=50)
        assert ended["session"]["last_turn"]["status"] == "completed"
        assert ended["session"]["last_turn"]["output"] == "begun\n"
        reply = await call(client, "send_message", session_id=fork["id"], text="pwd; echo $COLOR")
        assert reply["output"] == f"{fork['workspace']}/src\nteal\n"


async def test_a_fork_of_an_llm_session_remembers_the_conversation(home: Path, llm: FakeLLM) -> None:  # noqa: F811
    async with Client(create_server(llm_settings(home, llm))) as client:
        source = await new_session(client)
        llm.script(Reply(text="Noted: the code word is heron."))
        await call(client, "send_message", session_id=source, text="The code word is heron.", wait_s=30)
        fork = await call(client, "fork_session", session_id=source)
        llm.script(Reply(text="It is heron."))
        reply = await call(client, "send_message", session_id=fork["id"], text="What is the code word?", wait_s=30)
        assert reply["output"] == "It is heron."
        sent = [m for m in llm.requests[-1].body["messages"] if m["role"] in ("user", "assistant")]
        assert [m["content"] for m in sent][-3:] == [
            "The code word is heron.",
            "Noted: the code word is heron.",
            "What is the code word?",
        ]


async def test_forking_a_paused_session_resumes_it_first(settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        source = await new_session(client)
        await call(client, "send_message", session_id=source, text=SETUP)
        await call(client, "pause_session", session_id=source)
        fork = await call(client, "fork_session", session_id=source)
        assert (await call(client, "send_message", session_id=fork["id"], text="cat note.txt"))["output"] == "kept\n"
        assert (await call(client, "get_session", session_id=source))["session"]["status"] == "ready"


async def test_what_cannot_be_forked_is_refused_with_the_next_step(settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        assert "list_sessions" in await call_error(client, "fork_session", session_id="ses_" + "0" * 32)
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text="true")
        await call(client, "close_session", session_id=sid)
        assert "Create a new session" in await call_error(client, "fork_session", session_id=sid)


# -- REST and the command line --------------------------------------------------------------------


async def test_pause_and_fork_over_rest_and_the_command_line(settings: Settings, home: Path) -> None:
    async with running(settings) as (url, _), httpx.AsyncClient(base_url=url, timeout=60) as http:
        made = (await http.post("/api/v1/sessions", json={"title": "r"})).json()
        sid = made["id"]
        await http.post(f"/api/v1/sessions/{sid}/messages", json={"text": SETUP, "wait_s": 30})
        paused = await http.post("/api/v1/tools/pause_session", json={"session_id": sid})
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        forked = await http.post("/api/v1/tools/fork_session", json={"session_id": sid, "title": "over rest"})
        assert forked.status_code == 200 and forked.json()["title"] == "over rest"
        missing = await http.post("/api/v1/tools/fork_session", json={"session_id": "ses_" + "0" * 32})
        assert missing.status_code == 404 and "list_sessions" in missing.text
    fork_id = (await cli_ok(home, "fork", sid, "--title", "by hand")).strip()
    assert fork_id.startswith("ses_")
    assert "paused" in await cli_ok(home, "pause", fork_id)
    shown = await cli_ok(home, "show", fork_id)
    assert "by hand" in shown and "paused" in shown
    refused = await cli(home, "fork", "ses_" + "0" * 32)
    assert refused.returncode != 0 and "mcp-sessions ls" in refused.stderr


@pytest.mark.docker
async def test_a_paused_docker_session_survives_a_restart_of_the_engine_and_of_the_server(
    home: Path,
    private_engine: PrivateEngine,  # noqa: F811
) -> None:
    """On a dockerd of this test's own (test_docker_engine_restart.py), so the shared engine is left alone."""
    params = stdio_params(home, "--driver", "docker", "--image", IMAGE)
    params.env = {**(params.env or {}), "DOCKER_HOST": private_engine.url}
    async with Client(params, mode="legacy") as client:
        sid = await new_session(client)
        await call(client, "send_message", session_id=sid, text=SETUP)
        await call(client, "pause_session", session_id=sid)
        await anyio.to_thread.run_sync(private_engine.stop)
        await anyio.to_thread.run_sync(private_engine.start)
        session = (await call(client, "get_session", session_id=sid))["session"]
        assert session["status"] == "paused"  # what the engine did to the stopped container is no failure
        await kill_server(home)
    async with Client(params, mode="legacy") as client:
        reply = await call(client, "send_message", session_id=sid, text="pwd; echo $COLOR; wc -l < deep/numbers", wait_s=60)
        assert reply["output"] == "/workspace/src\nteal\n3000\n"
        await call(client, "close_session", session_id=sid, delete=True)


async def test_a_driver_that_cannot_pause_or_fork_says_so_and_its_idle_timer_closes(
    plugins_installed: Path, settings: Settings
) -> None:
    """The memory driver (a test plugin) has neither `Pauses` nor `Forks`, like the remote platforms."""
    async with Client(create_server(settings)) as client:
        sid = await new_session(client, driver="memory")
        assert "memory driver cannot pause" in await call_error(client, "pause_session", session_id=sid)
        assert "memory driver cannot be forked" in await call_error(client, "fork_session", session_id=sid)
        idle = await new_session(client, driver="memory", idle_timeout_s=1, idle_action="pause")
        with anyio.fail_after(30):
            while (session := (await call(client, "get_session", session_id=idle))["session"])["status"] != "dead":
                await anyio.sleep(0.1)
        assert session["close_reason"] == "idle timeout"
