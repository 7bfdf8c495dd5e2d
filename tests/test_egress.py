"""Egress by allow-list: a session reaches the hosts it was allowed through the server's proxy, and only those.

Real parts: the MCP SDK client in memory, a real Docker engine (the sandbox has no network interface),
and two HTTP servers on the host's 127.0.0.1 as the allowed and the refused host. Inside, python3's urllib
and a raw CONNECT go through the proxy the sandbox's HTTP_PROXY names.
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .ci import unavailable
from .conftest import call, call_error, new_session
from .docker_support import docker_engine  # noqa: F401

pytestmark = pytest.mark.anyio


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.server_address[1]} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hosts() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on 127.0.0.1: the one sessions are allowed, and one they are not."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Hello) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for s in servers:
        s.shutdown()
        s.server_close()


FETCH = """
import os, sys, urllib.request, urllib.error
proxy = os.environ["HTTP_PROXY"]
os.environ["no_proxy"] = os.environ["NO_PROXY"] = ""  # the test's hosts are on 127.0.0.1, which NO_PROXY keeps out
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
try:
    print(opener.open(sys.argv[1], timeout=20).read().decode(), end="")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode(), end="")
"""
CONNECT = """
import os, socket, sys
host, port = os.environ["HTTPS_PROXY"].rsplit(":", 1)
s = socket.create_connection((host.split("//")[1], int(port)))
s.sendall(("CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (sys.argv[1], sys.argv[1])).encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(1)
print(head.split(b"\\r\\n")[0].decode())
s.sendall(b"GET /tunnel HTTP/1.0\\r\\n\\r\\n")
print(b"".join(iter(lambda: s.recv(65536), b"")).decode().split("\\r\\n\\r\\n")[1], end="")
"""


def egress_events(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["data"] for e in detail["events"] if e["type"] == "egress"]


@pytest.mark.docker
async def test_a_session_reaches_its_allowed_host_and_no_other(home: Path, docker_engine: Any, hosts: tuple[int, int]) -> None:
    from mcp_sessions.app import server_id

    from .docker_support import IMAGE, remove_labelled

    allowed, refused = hosts
    settings = Settings(home=home, driver="docker", image=IMAGE, egress_allow=f"127.0.0.1:{allowed},127.0.0.1:{refused}")
    try:
        async with Client(create_server(settings), mode="legacy") as client:
            sid = await new_session(
                client, network={"allow": [f"127.0.0.1:{allowed}"]}, files={"fetch.py": FETCH, "connect.py": CONNECT}
            )
            env = await call(client, "send_message", session_id=sid, text="echo $HTTP_PROXY $https_proxy; ls /sys/class/net")
            proxy, same, interfaces = env["output"].split()
            assert proxy.startswith("http://127.0.0.1:") and same == proxy and interfaces == "lo"

            got = await call(client, "send_message", session_id=sid, text=f"python3 fetch.py http://127.0.0.1:{allowed}/x")
            assert got["output"] == f"hello from {allowed} /x\n"
            tunnel = await call(client, "send_message", session_id=sid, text=f"python3 connect.py 127.0.0.1:{allowed}")
            assert tunnel["output"] == f"HTTP/1.1 200 Connection established\nhello from {allowed} /tunnel\n"

            no = await call(client, "send_message", session_id=sid, text=f"python3 fetch.py http://127.0.0.1:{refused}/y")
            assert no["output"] == f"403 127.0.0.1:{refused} is not in this session's egress allow-list.\n"
            no_tunnel = await call(client, "send_message", session_id=sid, text=f"python3 connect.py 127.0.0.1:{refused}")
            assert no_tunnel["output"].startswith("HTTP/1.1 403 Forbidden\n")

            events = egress_events(await call(client, "get_session", session_id=sid, events_after=0))
            assert [(e["port"], e["allowed"]) for e in events] == [
                (allowed, True),
                (allowed, True),
                (refused, False),
                (refused, False),
            ]
            assert all(e["host"] == "127.0.0.1" for e in events)
            assert events[0]["bytes_in"] > len(f"hello from {allowed} /x\n") and events[0]["bytes_out"] > 0
            assert events[2]["bytes_in"] == events[2]["bytes_out"] == 0
    finally:
        remove_labelled(docker_engine, server_id(settings))


async def test_egress_outside_the_servers_list_is_refused_at_create(home: Path) -> None:
    settings = Settings(home=home, egress_allow="pypi.org:443")
    async with Client(create_server(settings), mode="legacy") as client:
        text = await call_error(client, "create_session", network={"allow": ["example.org:443"]})
        assert "network.allow 'example.org:443' is not in this server's egress allow-list, which has pypi.org:443." in text
        text = await call_error(client, "create_session", network={"allow": ["pypi.org"]})
        assert "network.allow entry 'pypi.org' is not host:port" in text
    async with Client(create_server(Settings(home=home)), mode="legacy") as client:
        text = await call_error(client, "create_session", network={"allow": ["pypi.org:443"]})
        assert "which has nothing (start it with --egress-allow host:port,...)" in text


async def test_a_malformed_allow_list_stops_the_server_at_start(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    command = [sys.executable, "-m", "mcp_sessions", "--home", str(home), "--egress-allow", "pypi.org:443,pypi.org", "serve"]
    done = await anyio.run_process(command, env=env, check=False)
    assert done.returncode != 0
    assert "--egress-allow entry 'pypi.org' is not host:port (e.g. pypi.org:443)." in done.stderr.decode(), done.stderr


async def test_a_local_session_gets_the_proxy_on_the_hosts_loopback(home: Path, hosts: tuple[int, int]) -> None:
    """The local driver shares the host's network: the proxy listens on the host's 127.0.0.1 (the variables
    name it) and keeps to the allow-list for whoever uses it."""
    allowed, refused = hosts
    settings = Settings(home=home, egress_allow=f"127.0.0.1:{allowed}")
    async with Client(create_server(settings), mode="legacy") as client:
        sid = await new_session(client, network={"allow": [f"127.0.0.1:{allowed}"]}, files={"fetch.py": FETCH})
        got = await call(client, "send_message", session_id=sid, text=f"python3 fetch.py http://127.0.0.1:{allowed}/l")
        assert got["output"] == f"hello from {allowed} /l\n"
        no = await call(client, "send_message", session_id=sid, text=f"python3 fetch.py http://127.0.0.1:{refused}/l")
        assert no["output"].startswith("403 ")
        events = egress_events(await call(client, "get_session", session_id=sid, events_after=0))
        assert [(e["port"], e["allowed"]) for e in events] == [(allowed, True), (refused, False)]


async def test_a_bwrap_session_that_asks_for_egress_fails_at_create_saying_why(home: Path) -> None:
    """A bubblewrap sandbox has a network of its own the server cannot reach: no proxy can be served there."""
    if shutil.which("bwrap") is None:
        unavailable("bwrap is not installed (scripts/install-bwrap.sh installs it)")
    settings = Settings(home=home, egress_allow="pypi.org:443")
    async with Client(create_server(settings), mode="legacy") as client:
        session = await call(client, "create_session", isolation="bwrap", network={"allow": ["pypi.org:443"]})
        assert session["status"] == "failed"
        assert session["failure_reason"].startswith("The egress proxy could not start: A local sandbox with isolation='bwrap'")
