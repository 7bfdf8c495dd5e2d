"""`mcp-sessions attach` as a person uses it: the real command in a real terminal (tmux: keys sent, the screen
read), against the real server under uvicorn on 127.0.0.1 with tokens, on the local driver and on docker.
A session's turns are driven through the MCP SDK client, as an agent's would be.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from mcp_sessions.attach import HUMAN_TURN, readable
from mcp_sessions.settings import Settings

from .ci import unavailable
from .conftest import call, call_error
from .docker_support import docker_engine  # noqa: F401  (the docker_settings fixture needs it)
from .test_http import ALICE, BOB, TOKENS, mcp_client, running

pytestmark = pytest.mark.anyio

COMMAND = Path(sys.executable).with_name("mcp-sessions")
HANG_S = 30
"""Only turns a hang into a failure."""


@dataclass
class Screen:
    """A tmux session on a socket of this test's own, running one command in a 120x30 terminal."""

    socket: str
    name: str = "attach"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True)
        return done.stdout

    def start(self, command: str) -> None:
        # The shell stays after the command so that its last words and exit status can be read.
        self.tmux("new-session", "-d", "-s", self.name, "-x", "120", "-y", "30", f"{command}; echo ATTACH-EXIT=$?; sleep 600")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", self.name)

    async def shows(self, wanted: str, times: int = 1) -> str:
        """The screen once `wanted` is on it (`times` times)."""
        with anyio.fail_after(HANG_S):
            while (screen := self.text()).count(wanted) < times:
                await anyio.sleep(0.05)
        return screen


@pytest.fixture
def screen() -> Iterator[Screen]:
    if shutil.which("tmux") is None:
        unavailable("tmux is not installed (apt-get install tmux)")
    made = Screen("mcp-sessions-test-" + secrets.token_hex(4))
    yield made
    subprocess.run(["tmux", "-L", made.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def server(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[str]:
    chosen = request.getfixturevalue("docker_settings") if request.param == "docker" else settings
    async with running(chosen, TOKENS) as (url, _):
        yield url


def attach_command(server: str, sid: str, token: str = ALICE) -> str:
    return f"env MCP_SESSIONS_TOKEN={token} {shlex.quote(str(COMMAND))} attach {sid} --url {server}"


async def test_a_person_attaches_in_the_sessions_cwd_and_environment_and_the_next_turn_sees_their_work(
    server: str, screen: Screen
) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session", title="by hand"))["id"]
        setup = "mkdir -p work && cd work && export GREETING=hello-from-a-turn && echo ready"
        first = await call(alice, "send_message", session_id=sid, text=setup, wait_s=HANG_S)
        assert first["output"] == "ready\n", first
        workspace = (await call(alice, "get_session", session_id=sid))["session"]["workspace"]

        screen.start(attach_command(server, sid))
        await screen.shows("(sandbox)")
        screen.keys("pwd", "Enter")
        await screen.shows(f"\n{workspace}/work\n")
        screen.keys('echo "G=$GREETING"', "Enter")
        await screen.shows("G=hello-from-a-turn")

        # while the person has the keyboard, an agent's message is refused with the reason (or queued if it asks)
        refused = await call_error(alice, "send_message", session_id=sid, text="echo too-early")
        assert f"Session '{sid}' is busy: a person's terminal is open in it (mcp-sessions attach, turn 2" in refused
        assert "once that terminal exits" in refused and f"interrupt(session_id='{sid}')" in refused, refused
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {ALICE}"}) as rest:
            busy = await rest.post(f"/api/v1/sessions/{sid}/messages", json={"text": "echo too-early", "queue": False})
            assert busy.status_code == 409 and "a person's terminal is open" in busy.json()["error"]["message"], busy.text
        other = Screen(screen.socket, name="other")  # a second terminal is told the first is open
        other.start(attach_command(server, sid))
        assert "a person's terminal is open in it" in (await other.shows("ATTACH-EXIT=1")).replace("\n", "")

        screen.keys("touch by-hand.txt; export AFTER=set-by-hand; cd ..; cd work", "Enter")
        screen.keys("exit", "Enter")
        await screen.shows("ATTACH-EXIT=0")
        assert f"Detached from {sid}" in screen.text()

        after = await call(alice, "send_message", session_id=sid, text='ls by-hand.txt; echo "$AFTER"; pwd', wait_s=HANG_S)
        assert after["turn"] == 3
        assert after["output"] == f"by-hand.txt\nset-by-hand\n{workspace}/work\n", after

        # the transcript has the human turn: what was typed and what the terminal showed
        transcript = (await alice.read_resource(f"session://{sid}/transcript")).contents[0].text  # type: ignore[union-attr]
        human = transcript[transcript.index(HUMAN_TURN) : transcript.index("ls by-hand.txt")]
        assert "typed in the terminal:" in human and "touch by-hand.txt; export AFTER=set-by-hand" in human, human
        assert "G=hello-from-a-turn" in human and "\x1b" not in human, human
        assert "[turn 2 completed, exit code 0" in transcript, transcript


async def test_attach_is_refused_while_a_turn_runs_and_for_another_owners_session(server: str, screen: Screen) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session"))["id"]
        running_turn = await call(alice, "send_message", session_id=sid, text="sleep 120", wait_s=0)
        assert running_turn["status"] == "busy"

        screen.start(attach_command(server, sid))
        text = await screen.shows("ATTACH-EXIT=1")
        assert f"Session '{sid}' is busy running turn 1" in text.replace("\n", ""), text

        await call(alice, "interrupt", session_id=sid)
        session = (await call(alice, "get_session", session_id=sid, wait_s=HANG_S))["session"]
        assert session["status"] == "ready" and session["turns"] == 1  # the refusal took no turn

    screen.name = "bob"
    screen.start(attach_command(server, sid, token=BOB))
    text = await screen.shows("ATTACH-EXIT=1")
    assert f"No session '{sid}'" in text.replace("\n", ""), text


def test_what_a_terminal_shows_is_recorded_as_text() -> None:
    raw = b"\x1b[?2004h(sandbox) ~$ ecoh\x7f\x7fho hi\r\n\x1b[01;32mhi\x1b[0m\r\n\x1b]0;title\x07done"
    assert readable(raw) == "(sandbox) ~$ echo hi\nhi\ndone"


async def test_attach_needs_a_token_the_server_knows(server: str, screen: Screen, tmp_path: Path) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session"))["id"]
    screen.start(attach_command(server, sid, token="not-a-token-of-this-server"))
    text = await screen.shows("ATTACH-EXIT=1")
    assert "the server refused to attach (HTTP 403)" in text.replace("\n", ""), text


async def test_a_terminal_whose_client_goes_away_is_hung_up_and_an_interrupt_ends_one(server: str, screen: Screen) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session"))["id"]
        screen.start(attach_command(server, sid))
        await screen.shows("(sandbox)")
        screen.keys("export LEFT=by-a-closed-window; echo exported", "Enter")
        await screen.shows("exported", 2)  # the echo of the line, then its output
        screen.tmux("kill-server")  # the window closes: the client dies without a word
        with anyio.fail_after(HANG_S):
            while (await call(alice, "get_session", session_id=sid))["session"]["status"] != "ready":
                await anyio.sleep(0.05)
        after = await call(alice, "send_message", session_id=sid, text='echo "$LEFT"', wait_s=HANG_S)
        assert after["output"] == "by-a-closed-window\n", after  # hung up, the shell saved its state

        screen.socket += "-2"
        screen.start(attach_command(server, sid))
        await screen.shows("(sandbox)")
        stopped = await call(alice, "interrupt", session_id=sid)
        assert stopped["interrupted"] is True, stopped
        await screen.shows("ATTACH-EXIT=")
        last = (await call(alice, "get_session", session_id=sid))["session"]["last_turn"]
        assert (last["turn"], last["status"]) == (3, "interrupted"), last
