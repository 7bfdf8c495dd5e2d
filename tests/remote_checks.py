"""Checks every remote dialect's tests make the same way."""

from __future__ import annotations

from collections.abc import Callable

from mcp import Client

from .conftest import call


async def check_lost_session_fails(client: Client, remote: str, forget: Callable[[str], object], dialect: str) -> None:
    """A session whose remote side disappears (`forget(remote session id)`): the next message fails, and so does
    the local session, with a reason that names the platform."""
    s = await call(client, "create_session", driver="remote", remote=remote)
    forget(s["sandbox"]["remote_session_id"])
    r = await call(client, "send_message", session_id=s["id"], text="hi", wait_s=30)
    assert r["turn_status"] == "failed"
    got = await call(client, "get_session", session_id=s["id"])
    assert got["session"]["status"] == "failed"
    assert "gone" in got["session"]["failure_reason"] and dialect in got["session"]["failure_reason"]
