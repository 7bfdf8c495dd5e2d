"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real server under
uvicorn on 127.0.0.1 with two owners' tokens; sessions are made and driven through the MCP SDK client over
HTTP, as an orchestrator would, while a person watches the pages.

Screenshots of both pages go to .ci/artifacts/ (the README's images in docs/ are copies of them).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_sessions.settings import Settings

from .ci import unavailable
from .conftest import call
from .docker_support import docker_engine  # noqa: F401  (the docker_settings fixture needs it)
from .fake_llm import FakeLLM, Reply
from .test_http import ALICE, BOB, TOKENS, mcp_client, running
from .test_images import PNG_BLUE, image
from .test_llm_agent import llm, llm_settings  # noqa: F401  (the llm fixture is used by name)

pytestmark = pytest.mark.anyio

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / ".ci" / "artifacts"
HANG_S = 30
"""Only turns a hang into a failure."""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        unavailable("no chromium: bash scripts/install-chromium.sh")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[str]:
    async with running(settings, TOKENS) as (url, _):
        yield url


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def any_server(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[str]:
    """The server with sessions on the local driver, or on docker (a real engine)."""
    chosen = request.getfixturevalue("docker_settings") if request.param == "docker" else settings
    async with running(chosen, TOKENS) as (url, _):
        yield url


async def signed_in(browser: Any, base: str, token: str, width: int = 1100, height: int = 800, policy: bool = False) -> Any:
    """A browser page of its own (its own cookies), signed in with `token` through the login form. The pages'
    Content-Security-Policy holds only with `policy`: Playwright's waits for a condition evaluate it as a
    string, which the policy forbids, as it should."""
    context = await browser.new_context(viewport={"width": width, "height": height}, bypass_csp=not policy)
    page = await context.new_page()
    await page.goto(f"{base}/ui")
    assert "/ui/login" in page.url  # not signed in: the login page, not a JSON 401
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/ui")
    return page


async def row_ids(page: Any) -> list[str]:
    return await page.eval_on_selector_all("#sessions tbody tr", "rows => rows.map(r => r.dataset.session)")


async def test_the_list_shows_an_owners_sessions_made_through_mcp_and_never_anothers(server: str, browser: Any) -> None:
    async with mcp_client(server, ALICE) as alice, mcp_client(server, BOB) as bob:
        mine = [(await call(alice, "create_session", title=f"alice {i}", tags=["fix"]))["id"] for i in range(2)]
        theirs = (await call(bob, "create_session", title="bob's"))["id"]
        page = await signed_in(browser, server, ALICE)
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 2", timeout=HANG_S * 1000)
        assert sorted(await row_ids(page)) == sorted(mine)
        assert theirs not in await page.content()
        assert await page.inner_text("#summary") == "2 sessions"

        # it follows what MCP does: a session made now appears, a closed one shows its status
        third = (await call(alice, "create_session", title="alice late"))["id"]
        await call(alice, "close_session", session_id=mine[0])
        await page.wait_for_selector(f"tr[data-session='{third}']", timeout=HANG_S * 1000)
        await page.wait_for_selector(f"tr[data-session='{mine[0]}'] .status-dead", timeout=HANG_S * 1000)

        # filters go to the API: only the dead one
        await page.select_option("select[name=status]", "dead")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1", timeout=HANG_S * 1000)
        assert await row_ids(page) == [mine[0]]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.select_option("select[name=status]", "")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 3", timeout=HANG_S * 1000)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-sessions.png"), full_page=True)

        # another owner's session page shows the API's refusal, not the session
        await page.goto(f"{server}/ui/sessions/{theirs}")
        await page.wait_for_function("document.getElementById('state').textContent.includes('No session')")
        assert "bob's" not in await page.content()


async def test_a_turn_shows_live_and_the_interrupt_button_stops_it(server: str, browser: Any, tmp_path: Path) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session", title="watched"))["id"]
        page = await signed_in(browser, server, ALICE)
        await page.goto(f"{server}/ui/sessions/{sid}")
        await page.wait_for_selector("#state .status-ready", timeout=HANG_S * 1000)
        assert await page.is_disabled("#interrupt")

        # Output shows while the command still runs: it waits for a file only this test makes.
        gate = tmp_path / "release"
        text = f"echo first-line; until [ -e {gate} ]; do sleep 0.05; done; echo second-line"
        running_turn = await call(alice, "send_message", session_id=sid, text=text, wait_s=0)
        assert running_turn["status"] == "busy"
        await page.wait_for_function("document.getElementById('live').textContent.includes('first-line')", timeout=HANG_S * 1000)
        assert (await call(alice, "get_session", session_id=sid))["session"]["status"] == "busy"  # still running
        await page.screenshot(path=str(ARTIFACTS / "dashboard-session.png"), full_page=True)
        gate.touch()
        await page.wait_for_function(
            "[...document.querySelectorAll('#transcript pre, #transcript .text')].some(n => n.textContent.includes('second-line'))",
            timeout=HANG_S * 1000,
        )

        assert (await call(alice, "get_session", session_id=sid, wait_s=HANG_S))["session"]["status"] == "ready"

        # The interrupt button stops a running sleep; the session stays usable.
        await call(alice, "send_message", session_id=sid, text="sleep 300", wait_s=0)
        await page.wait_for_selector("#interrupt:not([disabled])", timeout=HANG_S * 1000)
        await page.click("#interrupt")
        with anyio.fail_after(HANG_S):
            while (session := (await call(alice, "get_session", session_id=sid))["session"])["status"] != "ready":
                await anyio.sleep(0.1)
        assert session["last_turn"]["status"] == "interrupted"
        await page.wait_for_selector("#state .status-ready", timeout=HANG_S * 1000)

        # Each ended turn is a row: how it ended, with its exit code.
        await page.wait_for_selector("#turns tr[data-turn='2']", timeout=HANG_S * 1000)
        rows = await page.eval_on_selector_all(
            "#turns tbody tr", "rows => rows.map(r => [...r.children].slice(0, 3).map(c => c.textContent))"
        )
        assert rows == [["2", "interrupted", "\N{EN DASH}"], ["1", "completed", "0"]], rows

        # A message sent from the page runs as a turn.
        await page.fill("#send textarea", "echo from-the-page")
        await page.click("#send button")
        await page.wait_for_function(
            "[...document.querySelectorAll('#transcript pre, #transcript .text')].some(n => n.textContent.includes('from-the-page\\n') || n.textContent === 'from-the-page')",
            timeout=HANG_S * 1000,
        )


async def test_the_pause_and_fork_buttons_pause_a_session_and_open_its_fork(server: str, browser: Any) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session", title="to fork"))["id"]
        await call(alice, "send_message", session_id=sid, text="echo kept > notes.txt; mkdir sub; cd sub; export MOOD=calm")
        page = await signed_in(browser, server, ALICE)
        await page.goto(f"{server}/ui/sessions/{sid}")
        await page.wait_for_selector("#pause:not([disabled])", timeout=HANG_S * 1000)

        await page.click("#fork")  # the page moves to the fork's own page
        await page.wait_for_url(lambda url: "/ui/sessions/ses_" in url and sid not in url, timeout=HANG_S * 1000)
        fork_id = page.url.rsplit("/", 1)[1]
        assert fork_id != sid
        fork = (await call(alice, "get_session", session_id=fork_id))["session"]
        assert fork["parent_session_id"] == sid and fork["status"] == "ready"
        reply = await call(alice, "send_message", session_id=fork_id, text="cat ../notes.txt; basename $PWD; echo $MOOD")
        assert reply["output"] == "kept\nsub\ncalm\n"

        await page.goto(f"{server}/ui/sessions/{sid}")
        await page.wait_for_selector("#pause:not([disabled])", timeout=HANG_S * 1000)
        await page.click("#pause")
        await page.wait_for_selector("#state .status-paused", timeout=HANG_S * 1000)
        assert (await call(alice, "get_session", session_id=sid))["session"]["status"] == "paused"
        assert await page.is_disabled("#pause")
        reply = await call(alice, "send_message", session_id=sid, text="cat ../notes.txt")  # a message resumes it
        assert reply["output"] == "kept\n"


async def test_the_transcript_is_read_once_then_from_its_last_turn_and_a_restore_shows_what_it_undid(
    server: str, browser: Any
) -> None:
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session", title="long"))["id"]
        await call(alice, "send_message", session_id=sid, text="echo turn-1")
        await call(alice, "checkpoint_session", session_id=sid, name="after-one")
        for n in (2, 3):
            await call(alice, "send_message", session_id=sid, text=f"echo turn-{n}")
        page = await signed_in(browser, server, ALICE)
        reads: list[str] = []
        page.on("request", lambda r: reads.append(r.url) if f"/api/v1/sessions/{sid}" in r.url.split("?")[0][-60:] else None)
        await page.goto(f"{server}/ui/sessions/{sid}")
        await page.wait_for_function("document.querySelectorAll('#transcript li.msg').length === 6", timeout=HANG_S * 1000)

        await call(alice, "send_message", session_id=sid, text="echo turn-4")
        await page.wait_for_function("document.querySelectorAll('#transcript li.msg').length === 8", timeout=HANG_S * 1000)
        shown = await page.eval_on_selector_all("#transcript li.msg", "lis => lis.map(li => li.dataset.turn)")
        assert shown == [str(t) for t in range(1, 5) for _ in ("user", "assistant")]  # each message once, in order
        session_reads = [u for u in reads if u.split("?")[0].endswith(sid)]
        assert "messages_from_turn" not in session_reads[0]
        assert session_reads[1:] and all("messages_from_turn=" in u for u in session_reads[1:]), session_reads

        # a restore to turn 1 marks turns 2-4 undone on the page, which reads the whole transcript again
        await call(alice, "restore_session", session_id=sid, name="after-one")
        await page.wait_for_function("document.querySelectorAll('#transcript li.msg.undone').length === 6", timeout=HANG_S * 1000)
        undone = await page.eval_on_selector_all("#transcript li.msg.undone", "lis => lis.map(li => li.dataset.turn)")
        assert undone == [str(t) for t in range(2, 5) for _ in ("user", "assistant")]
        assert await page.eval_on_selector_all("#transcript li.msg", "lis => lis.length") == 8
        assert "undone by a restore" in await page.inner_text("#transcript")


async def test_an_image_sent_with_a_message_shows_in_the_transcript_within_the_pages_policy(
    home: Path,
    llm: FakeLLM,  # noqa: F811
    browser: Any,
) -> None:
    llm.script(Reply(text="A blue bar."))
    async with running(llm_settings(home, llm), TOKENS) as (url, _), mcp_client(url, ALICE) as alice:
        sid = (await call(alice, "create_session", title="seen"))["id"]
        await call(alice, "send_message", session_id=sid, text="What is this?", images=[image(PNG_BLUE)], wait_s=HANG_S)
        page = await signed_in(browser, url, ALICE, policy=True)
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        await page.goto(f"{url}/ui")  # the list works under the policy too
        await page.wait_for_selector(f"tr[data-session='{sid}']", timeout=HANG_S * 1000)
        response = await page.goto(f"{url}/ui/sessions/{sid}")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        await page.wait_for_selector("#transcript img.image", timeout=HANG_S * 1000)
        with anyio.fail_after(HANG_S):
            while not await page.eval_on_selector("#transcript img.image", "img => img.complete"):
                await anyio.sleep(0.05)
        size = await page.eval_on_selector("#transcript img.image", "img => [img.naturalWidth, img.naturalHeight]")
        assert size == [3, 1]  # the image itself, decoded: the page's policy lets its data: URL through
        assert "A blue bar." in await page.inner_text("#transcript")
        assert refused == []  # nothing the page does is blocked by its own policy


async def test_sign_in_refuses_a_wrong_token_and_the_cookie_needs_the_dashboards_header_to_change_anything(
    server: str, browser: Any
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{server}/ui/login")
    await page.fill("input[name=token]", "not-a-token-at-all-0000")
    await page.click("button[type=submit]")
    assert "Unknown token" in await page.inner_text(".error")

    page = await signed_in(browser, server, ALICE)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "mcp_sessions_token")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # scripts on the page cannot read the token

    async with httpx.AsyncClient(base_url=server, cookies={"mcp_sessions_token": ALICE}) as as_browser:
        listed = await as_browser.get("/api/v1/sessions")
        assert listed.status_code == 200  # reading with the cookie is fine
        forged = await as_browser.post("/api/v1/sessions", json={})  # what a form on another site could send
        assert forged.status_code == 403 and "x-mcp-sessions-ui" in forged.json()["error"]["message"]
        made = await as_browser.post("/api/v1/sessions", json={}, headers={"X-MCP-Sessions-UI": "1"})
        assert made.status_code == 201, made.text
        assert made.json()["id"] in (await as_browser.get("/api/v1/sessions")).text

    # signing out forgets the cookie: the next page is the login page again
    await page.click("header .logout button")
    await page.wait_for_url(f"{server}/ui/login")
    await page.goto(f"{server}/ui")
    assert "/ui/login" in page.url


async def test_without_tokens_the_dashboard_needs_no_sign_in(browser: Any, settings: Settings) -> None:
    async with running(settings) as (base, _):
        page = await browser.new_page()
        await page.goto(f"{base}/ui/login")
        await page.wait_for_url(f"{base}/ui")
        await page.wait_for_function("document.getElementById('summary').textContent === '0 sessions'")
        assert await page.query_selector("header .logout") is None


async def test_the_workspace_is_browsed_and_a_file_made_by_a_command_downloaded(any_server: str, browser: Any) -> None:
    server = any_server
    async with mcp_client(server, ALICE) as alice:
        sid = (await call(alice, "create_session", title="files"))["id"]
        made = "mkdir -p out/deep && printf 'made by a command' > out/deep/result.txt && mkfifo out/pipe && echo ok"
        assert (await call(alice, "send_message", session_id=sid, text=made, wait_s=HANG_S))["output"] == "ok\n"
        page = await signed_in(browser, server, ALICE)
        await page.goto(f"{server}/ui/sessions/{sid}")

        await page.click("#files tr[data-path='out'] button", timeout=HANG_S * 1000)
        await page.wait_for_selector("#files tr[data-path='out/pipe']", timeout=HANG_S * 1000)
        assert "FIFO" in await page.inner_text("#files tr[data-path='out/pipe']")
        assert await page.query_selector("#files tr[data-path='out/pipe'] a") is None  # nothing to download
        if "docker" in await page.inner_text("#facts"):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.locator("#workspace").screenshot(path=str(ARTIFACTS / "dashboard-files.png"))
        await page.click("#files tr[data-path='out/deep'] button")
        row = "#files tr[data-path='out/deep/result.txt']"
        await page.wait_for_selector(row, timeout=HANG_S * 1000)
        assert "17 B" in await page.inner_text(row)
        assert await page.eval_on_selector_all("#crumbs button", "bs => bs.map(b => b.textContent)") == [
            "workspace",
            "out",
            "deep",
        ]
        async with page.expect_download(timeout=HANG_S * 1000) as downloading:
            await page.click(f"{row} a")
        download = await downloading.value
        assert download.suggested_filename == "result.txt"
        assert Path(await download.path()).read_bytes() == b"made by a command"

        # a file made later shows when its turn ends, in the folder open
        await call(alice, "send_message", session_id=sid, text="echo later > out/deep/later.txt", wait_s=HANG_S)
        await page.wait_for_selector("#files tr[data-path='out/deep/later.txt']", timeout=HANG_S * 1000)
        await page.click("#crumbs button[data-folder='']")
        await page.wait_for_selector("#files tr[data-path='out']", timeout=HANG_S * 1000)

    api = f"/api/v1/sessions/{sid}/files"
    async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {ALICE}"}) as as_alice:
        for path, status, said in [
            ("..", 400, "outside the workspace"),
            ("/etc", 400, "outside the workspace"),
            ("out/pipe", 400, "'out/pipe' is a FIFO (named pipe), not a folder"),
            ("out/deep/result.txt", 400, "is a file, not a folder"),
            ("missing", 404, "No such folder in the workspace: 'missing'"),
        ]:
            answer = await as_alice.get(api, params={"path": path})
            assert (answer.status_code, said in answer.json()["error"]["message"]) == (status, True), (path, answer.text)
        for path, status, said in [
            ("../etc/passwd", 400, "outside the workspace"),
            ("out/pipe", 400, "'out/pipe' is a FIFO (named pipe): only regular files"),
            ("out", 400, "is a folder, not a file"),
            ("out/missing.txt", 404, "No such file in the workspace"),
        ]:
            answer = await as_alice.get(api + "/download", params={"path": path})
            assert (answer.status_code, said in answer.json()["error"]["message"]) == (status, True), (path, answer.text)
    async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {BOB}"}) as as_bob:
        for route in (api, api + "/download"):  # another owner learns nothing, not even that the session exists
            answer = await as_bob.get(route, params={"path": "out/deep/result.txt"})
            assert answer.status_code == 404 and "No session" in answer.json()["error"]["message"]


CAROL = "carol-token-admin-000000"


async def test_an_admin_filters_by_owner_and_nobody_else_sees_anothers_sessions(settings: Settings, browser: Any) -> None:
    overseen = settings.model_copy(update={"admins": "carol"})
    async with running(overseen, {**TOKENS, CAROL: "carol"}) as (server, _):
        async with mcp_client(server, ALICE) as alice, mcp_client(server, BOB) as bob:
            hers = (await call(alice, "create_session", title="alice's"))["id"]
            his = (await call(bob, "create_session", title="bob's"))["id"]

        page = await signed_in(browser, server, CAROL)
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 2", timeout=HANG_S * 1000)
        owners = await page.eval_on_selector_all("#sessions tbody tr", "rows => rows.map(r => r.lastChild.textContent)")
        assert sorted(owners) == ["alice", "bob"]
        await page.fill("input[name=owner]", "bob")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1", timeout=HANG_S * 1000)
        assert await row_ids(page) == [his]
        await page.goto(f"{server}/ui/sessions/{his}")  # an admin reads another's session...
        await page.wait_for_selector("#state .status-ready", timeout=HANG_S * 1000)

        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {CAROL}"}) as as_carol:
            closing = await as_carol.post(f"/api/v1/sessions/{his}/close")  # ...but changes only its own
            assert closing.status_code == 404, closing.text

        page = await signed_in(browser, server, ALICE)
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1", timeout=HANG_S * 1000)
        assert await row_ids(page) == [hers]
        assert await page.query_selector("input[name=owner]") is None
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {ALICE}"}) as as_alice:
            asked = await as_alice.get("/api/v1/sessions", params={"owner": "bob"})
            assert asked.status_code == 403 and "use an admin's token" in asked.json()["error"]["message"]
            own = await as_alice.get("/api/v1/sessions", params={"owner": "alice"})
            assert [s["id"] for s in own.json()["sessions"]] == [hers]
            assert (await as_alice.get(f"/api/v1/sessions/{his}")).status_code == 404


def test_an_admin_without_a_token_is_refused_at_start(settings: Settings) -> None:
    from mcp_sessions.auth import ConfigError
    from mcp_sessions.http import build_app

    with pytest.raises(ConfigError, match="--admins names 'carl', who has no token"):
        build_app(settings.model_copy(update={"admins": "carl"}), TOKENS)


def test_the_session_page_follows_every_event_type_the_server_sends() -> None:
    """An EventSource hears only the types it listens for: one missing from the page's list never shows."""
    import re
    import typing

    from mcp_sessions.models import EventType

    script = (Path(__file__).parents[1] / "mcp_sessions/ui/static/dashboard.js").read_text()
    listed = re.search(r"const EVENT_TYPES = \[(.*?)\];", script, re.S)
    assert listed, "dashboard.js has no EVENT_TYPES list"
    assert sorted(re.findall(r'"([^"]+)"', listed[1])) == sorted(typing.get_args(EventType))
