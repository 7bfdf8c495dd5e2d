"""Who may call the HTTP server, as the README says: `serve --http` run as a real process with tokens from a file
and from MCP_SESSIONS_TOKENS, and the event stream's `?access_token=` for browsers. (Rate limits: test_http.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from .conftest import call, stdio_params
from .test_http import ALICE, API, BOB, base, http, mcp_client, read_stream  # noqa: F401  (base: a fixture)

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def http_server_process(home: Path, *args: str, env: dict[str, str]) -> AsyncIterator[str]:
    """`mcp-sessions serve --http ARGS` on a free port; yields its URL once it listens, stops it with SIGTERM."""
    inherited = stdio_params(home).env or {}
    command = [sys.executable, "-m", "mcp_sessions", "serve", "--http", "--port", "0", "--log-level", "INFO", *args]
    async with await anyio.open_process(command, env={**inherited, **env}, stdout=subprocess.DEVNULL) as server:
        assert server.stderr is not None
        log = BufferedByteReceiveStream(server.stderr)
        with anyio.fail_after(60):
            while not (
                found := re.search(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)", await log.receive_until(b"\n", 1 << 16))
            ):
                pass

        async def drain() -> None:  # it logs every request: a full pipe would stop it
            async for _ in log:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            try:
                yield found[1].decode()
            finally:
                server.terminate()
                with anyio.CancelScope(shield=True), anyio.fail_after(30):
                    await server.wait()


async def test_serve_http_takes_tokens_from_a_file_and_from_the_environment(home: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one owner:token a line\nalice:{ALICE}\n")
    async with http_server_process(home, "--tokens-file", str(tokens), env={"MCP_SESSIONS_TOKENS": f"bob:{BOB}"}) as url:
        async with http(url, ALICE) as alice, http(url, BOB) as bob, http(url, "wrong-token-0123456789") as wrong:
            made = await alice.post(f"{API}/sessions", json={"title": "alice's"})
            assert made.status_code == 201 and made.json()["owner"] == "alice", made.text
            sid = made.json()["id"]
            r = await bob.post(f"{API}/sessions", json={"title": "bob's"})
            assert r.status_code == 201 and r.json()["owner"] == "bob", r.text
            assert (await bob.get(f"{API}/sessions/{sid}")).status_code == 404
            r = await wrong.get(f"{API}/sessions")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        async with mcp_client(url, BOB) as client:
            assert [s["title"] for s in (await call(client, "list_sessions"))["sessions"]] == ["bob's"]


async def test_the_event_stream_also_takes_the_token_in_its_query(base: str) -> None:  # noqa: F811
    """A browser's EventSource cannot set headers: the stream, and only the stream, takes `?access_token=`."""
    async with http(base, ALICE) as alice:
        sid = (await alice.post(f"{API}/sessions", json={})).json()["id"]
    async with http(base, None) as browser:
        events = await read_stream(browser, sid, "status", params={"access_token": ALICE, "last_event_id": "0"})
        assert events[0]["event"] == "session.created" and events[-1]["event"] == "status"
        r = await browser.get(f"{API}/sessions/{sid}/stream", params={"access_token": "wrong-token-0123456789"})
        assert r.status_code == 401
        r = await browser.get(f"{API}/sessions/{sid}/stream", params={"access_token": BOB})  # another owner's
        assert r.status_code == 404
        r = await browser.get(f"{API}/sessions/{sid}", params={"access_token": ALICE})
        assert r.status_code == 401, "only the event stream takes a token in the query"
