"""Port previews: a web server in a docker session, opened through the HTTP server's gateway.

Real parts: uvicorn on 127.0.0.1 with two owners' tokens, the MCP SDK client over streamable HTTP, httpx,
a websocket client (wsproto over a TCP connection to the gateway), and a real Docker engine whose sandbox
has no network interface: the gateway reaches the port inside through the control shell.
"""
# ruff: noqa: F811  (the fixtures imported from tests.docker_support are used by name)

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

from mcp_sessions.settings import Settings

from .conftest import call, call_error
from .docker_support import IMAGE, docker_engine, remove_labelled  # noqa: F401
from .test_http import ALICE, BOB, TOKENS, bearer, mcp_client, running

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
HANG_S = 60.0

WS_ECHO = r"""
import base64, hashlib, socket, struct
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8765))
srv.listen()
while True:
    c, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(4096)
        if not chunk:  # a readiness check connects and closes
            break
        head += chunk
    if b"\r\n\r\n" not in head:
        c.close()
        continue
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    f = c.makefile("rb")
    while True:
        b0, b1 = f.read(2)
        n = b1 & 127
        if n == 126:
            n = struct.unpack(">H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4)
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(f.read(n)))
        if b0 & 15 == 8:
            c.sendall(b"\x88\x02" + data[:2])
            break
        reply = b"echo: " + data
        c.sendall(bytes([0x80 | (b0 & 15), len(reply)]) + reply)  # short messages only
    c.close()
"""


async def websocket_echo(base: str, path: str, token: str, text: str) -> str:
    """Open a websocket to the gateway with `token`, send `text`, and return the first message back."""
    host, port = base.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    conn = WSConnection(ConnectionType.CLIENT)
    async with stream:
        await stream.send(
            conn.send(
                ws.Request(host=f"{host}:{port}", target=path, extra_headers=[(b"authorization", f"Bearer {token}".encode())])
            )
        )
        while True:
            conn.receive_data(await stream.receive())
            for event in conn.events():
                if isinstance(event, ws.AcceptConnection):
                    await stream.send(conn.send(ws.Message(data=text)))
                elif isinstance(event, ws.TextMessage):
                    await stream.send(conn.send(ws.CloseConnection(code=1000)))
                    return event.data
                elif isinstance(event, (ws.RejectConnection, ws.CloseConnection)):
                    return f"refused: {type(event).__name__}"


async def test_a_web_server_in_a_session_answers_through_the_gateway_until_it_closes(home: Any, docker_engine: Any) -> None:
    from mcp_sessions.app import server_id

    settings = Settings(home=home, driver="docker", image=IMAGE, command_timeout_s=120)
    try:
        async with running(settings, TOKENS) as (base, _), mcp_client(base, ALICE) as alice:
            session = await call(alice, "create_session", files={"hello.txt": "hello from the sandbox\n", "ws.py": WS_ECHO})
            sid = session["id"]
            started = await call(
                alice,
                "send_message",
                session_id=sid,
                text="nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & nohup python3 ws.py >/dev/null 2>&1 & "
                'for i in $(seq 100); do python3 -c \'import socket; socket.create_connection(("127.0.0.1", 8000)); '
                'socket.create_connection(("127.0.0.1", 8765))\' 2>/dev/null && echo up && break; sleep 0.1; done',
            )
            assert started["output"] == "up\n"
            preview = await call(alice, "expose_port", session_id=sid, port=8000)
            path = f"/preview/{sid}/8000/"
            assert preview["url"].endswith(path)
            async with httpx.AsyncClient(base_url=base, timeout=HANG_S) as http:
                page = await http.get(path + "hello.txt", headers=bearer(ALICE))
                assert page.status_code == 200 and page.text == "hello from the sandbox\n"
                listing = await http.get(path, headers=bearer(ALICE))
                assert listing.status_code == 200 and 'href="hello.txt"' in listing.text
                assert (await http.get(path[:-1], headers=bearer(ALICE))).headers["location"] == path
                # another owner sees no such session, by the tool or through the gateway
                assert (await http.get(path + "hello.txt", headers=bearer(BOB))).status_code == 404
                rest = await http.post(
                    f"{base}/api/v1/tools/expose_port", json={"session_id": sid, "port": 8000}, headers=bearer(BOB)
                )
                assert rest.status_code == 404
                rest = await http.post(
                    f"{base}/api/v1/tools/expose_port", json={"session_id": sid, "port": 8000}, headers=bearer(ALICE)
                )
                assert rest.status_code == 200 and rest.json()["url"] == preview["url"]
                closed_port = await http.get(f"/preview/{sid}/8001/", headers=bearer(ALICE))
                assert closed_port.status_code == 502 and "Nothing listens on port 8001" in closed_port.text

                with anyio.fail_after(HANG_S):
                    assert await websocket_echo(base, f"/preview/{sid}/8765/", ALICE, "hi there") == "echo: hi there"
                    assert (await websocket_echo(base, f"/preview/{sid}/8765/", BOB, "hi")).startswith("refused")

                await call(alice, "close_session", session_id=sid)
                gone = await http.get(path + "hello.txt", headers=bearer(ALICE))
                assert gone.status_code == 404 and "only a ready or busy session has ports to preview" in gone.text
            async with mcp_client(base, BOB) as bob:
                assert "No session" in await call_error(bob, "expose_port", session_id=sid, port=8000)
    finally:
        remove_labelled(docker_engine, server_id(settings))
