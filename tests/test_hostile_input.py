"""Hostile arguments to every tool and REST route: random types, sizes, unicode, NUL bytes, huge numbers,
`..` and absolute paths. The server must answer each with a clear error (a tool error, or a 4xx with an
error body) or a normal result, never crash, never answer 500, and never touch anything outside the
session's own workspace: a canary file next to the state folder must stay as it was, and its secret
must never come back in a reply.

The server runs in a background event loop (a blocking portal) so hypothesis can drive it from plain
functions, one server for all the examples of a test.
"""

from __future__ import annotations

import json
import shlex
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .test_http import ALICE, TOKENS, bearer, running

SECRET = "canary-secret-7f3a9c"
EXAMPLES = hsettings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# -- strategies ---------------------------------------------------------------------------------------

HUGE = st.sampled_from([2**63, -(2**63) - 1, 10**100, float("inf"), float("-inf"), float("nan"), 1e308, -1.0, 0])
TEXT = st.text(max_size=60) | st.sampled_from(["", "\0", "a\0b", "é漢字🙂\u202e", "\ud7ff", " " * 5, "x" * 5000])
SCALAR = st.none() | st.booleans() | st.integers() | HUGE | TEXT
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=10)


def bad_paths(outside: Path) -> st.SearchStrategy[str]:
    return (
        st.sampled_from(
            [
                "../canary.txt",
                "../../canary.txt",
                "../" * 12 + "etc/passwd",
                str(outside / "canary.txt"),
                str(outside / "written.txt"),
                "/etc/passwd",
                "a/../../canary.txt",
                "./../canary.txt",
                "a/b/../../../canary.txt",
                "..",
                ".",
                "",
                "/",
                "a\0b",
                "%2e%2e/canary.txt",
                "..\\canary.txt",
                "a//b",
                "ok.txt",
            ]
        )
        | TEXT
    )


def ids() -> st.SearchStrategy[Any]:
    return st.sampled_from(["ses_" + "0" * 32, "ses_", "../ses_x", "ses_" + "a" * 10_000, "\0"]) | JSON


# -- the server, driven from plain functions -------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """The folder that holds the state folder, with a canary in it; checked unchanged after the test."""
    canary = tmp_path / "canary.txt"
    canary.write_text(SECRET)
    (tmp_path / "home").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.iterdir())
    yield tmp_path
    assert canary.read_text() == SECRET
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.iterdir()) == before


@pytest.fixture
def mcp(outside: Path) -> Iterator[tuple[anyio.from_thread.BlockingPortal, Client, str]]:
    settings = Settings(home=outside / "home", command_timeout_s=30, idle_timeout_s=0)
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(Client(create_server(settings), mode="legacy")) as client:
            made = portal.call(client.call_tool, "create_session", {"files": {"inside.txt": "hello"}})
            assert not made.is_error
            yield portal, client, made.structured_content["id"]


def check_tool(portal: anyio.from_thread.BlockingPortal, client: Client, tool: str, args: Any) -> Any:
    """Call a tool with any arguments: a normal result, or an error that says something."""
    try:
        result = portal.call(client.call_tool, tool, args)
    except MCPError as e:  # a protocol-level refusal (invalid params) is a clear error too
        assert e.error.message, e
        return None
    text = " ".join(getattr(c, "text", "") for c in result.content)
    event(f"{tool}: {'error' if result.is_error else 'ok'}")
    assert SECRET not in text
    if result.is_error:
        assert text.strip(), f"{tool} failed without saying why"
        assert "Traceback" not in text and "internal error" not in text.lower(), text
    return result


@EXAMPLES
@given(data=st.data())
def test_every_tool_answers_hostile_arguments_clearly(mcp: Any, outside: Path, data: st.DataObject) -> None:
    portal, client, sid = mcp
    session_id = data.draw(st.just(sid) | ids())
    schemas = {t.name: t.input_schema for t in portal.call(client.list_tools).tools}
    tool = data.draw(st.sampled_from(sorted(schemas)))
    if tool == "create_session":
        args = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "title": JSON,
                    "driver": JSON,
                    "agent": st.sampled_from(["shell", "llm"]) | JSON,
                    "image": JSON,
                    "tags": JSON,
                    "metadata": JSON,
                    "files": st.dictionaries(bad_paths(outside), TEXT, max_size=3) | JSON,
                    "env": st.dictionaries(TEXT, TEXT, max_size=3) | JSON,
                    "limits": st.dictionaries(st.sampled_from(["memory_mb", "cpus", "pids", "tmp_mb", "x"]), SCALAR) | JSON,
                    "command_timeout_s": SCALAR,
                    "idle_timeout_s": SCALAR,
                    "wait_s": st.sampled_from([0, 0.5, -1, 1e308, float("nan")]),
                    "max_steps": SCALAR,
                    "provider": JSON,
                },
            )
        )
        result = check_tool(portal, client, tool, args)
        if result is not None and not result.is_error:  # made one: it must not outlive the example
            check_tool(portal, client, "close_session", {"session_id": result.structured_content["id"], "delete": True})
    elif tool == "send_message":
        # text that a shell runs harmlessly whatever it holds, or any other type
        text = data.draw(TEXT.map(lambda t: "printf %s " + shlex.quote(t) + " | wc -c") | JSON)
        args = {"session_id": session_id, "text": text, "wait_s": data.draw(st.sampled_from([0, 5]) | SCALAR)}
        args |= data.draw(st.fixed_dictionaries({}, optional={"queue": JSON, "extra": JSON}))
        check_tool(portal, client, tool, args)
    elif tool == "get_session":
        check_tool(
            portal,
            client,
            tool,
            {
                "session_id": session_id,
                "wait_s": data.draw(st.sampled_from([0, 0.1]) | SCALAR),
                "events_after": data.draw(SCALAR),
            },
        )
    elif tool == "list_sessions":
        args = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    k: JSON for k in ("statuses", "tags", "driver", "agent", "created_after", "created_before", "limit", "cursor")
                },
            )
        )
        check_tool(portal, client, tool, args)
    elif tool == "interrupt":
        check_tool(portal, client, tool, {"session_id": session_id})
    elif tool == "close_session":
        if session_id != sid:  # the shared session stays open for the others
            check_tool(portal, client, tool, {"session_id": session_id, "delete": data.draw(JSON)})
    else:  # every other tool, present or added later: its own parameters, holding anything
        others = [name for name in schemas[tool].get("properties", {}) if name != "session_id"]
        args = {"session_id": session_id} | data.draw(st.fixed_dictionaries({}, optional=dict.fromkeys(others, JSON)))
        result = check_tool(portal, client, tool, args)
        made = (result.structured_content or {}).get("id") if result is not None and not result.is_error else None
        if isinstance(made, str) and made != sid:  # a fork: it must not outlive the example
            check_tool(portal, client, "close_session", {"session_id": made, "delete": True})


@EXAMPLES
@given(data=st.data())
def test_file_resources_never_reach_outside_the_workspace(mcp: Any, outside: Path, data: st.DataObject) -> None:
    portal, client, sid = mcp
    path = data.draw(bad_paths(outside))
    try:
        result = portal.call(client.read_resource, f"session://{sid}/files/{path}")
    except MCPError as e:
        assert e.error.message
        assert SECRET not in e.error.message
        return
    for content in result.contents:
        assert SECRET not in (getattr(content, "text", None) or "")
        assert "root:x:0:0" not in (getattr(content, "text", None) or "")


# -- REST through the real HTTP app -------------------------------------------------------------------


@pytest.fixture
def rest(outside: Path) -> Iterator[tuple[httpx.Client, str]]:
    settings = Settings(home=outside / "home", command_timeout_s=30, idle_timeout_s=0, rate_limit_per_s=0)
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(running(settings, TOKENS)) as (base, _):
            with httpx.Client(base_url=base, headers=bearer(ALICE), timeout=60) as client:
                made = client.post("/api/v1/sessions", json={"files": {"inside.txt": "hello"}})
                assert made.status_code == 201, made.text
                yield client, made.json()["id"]


def check_response(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert SECRET not in response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"], response.text


def body(draw: Any, outside: Path) -> bytes:
    value = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "title": JSON,
                "files": st.dictionaries(bad_paths(outside), TEXT, max_size=3) | JSON,
                "env": JSON,
                "limits": JSON,
                "tags": JSON,
                "text": TEXT.map(lambda t: "printf %s " + shlex.quote(t) + " | wc -c") | JSON,
                "queue": JSON,
                "wait_s": SCALAR,
                "idle_timeout_s": SCALAR,
            },
        )
        | JSON
    )
    raw = draw(st.sampled_from(["json", "raw", "broken"]))
    if raw == "raw":
        return draw(st.binary(max_size=200))
    encoded = json.dumps(value, allow_nan=True).encode()
    return encoded[: len(encoded) // 2] if raw == "broken" else encoded


@EXAMPLES
@given(data=st.data())
def test_every_route_answers_hostile_input_with_a_4xx_and_an_error_body(rest: Any, outside: Path, data: st.DataObject) -> None:
    client, sid = rest
    session_id = data.draw(st.just(sid) | ids().map(lambda v: v if isinstance(v, str) else json.dumps(v)))
    quoted = "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="")
    params = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "wait_s",
                        "events_after",
                        "limit",
                        "status",
                        "tag",
                        "cursor",
                        "delete",
                        "created_after",
                        "last_event_id",
                        "x",
                    ]
                ),
                TEXT,
            ),
            max_size=4,
        )
    )
    params = [(k, v.replace("\0", "")) for k, v in params if k != "wait_s" or v.strip() in ("", "0")]  # no long waits
    route = data.draw(st.sampled_from(["create", "list", "get", "message", "interrupt", "close"]))
    if route == "create":
        response = client.post("/api/v1/sessions", content=body(data.draw, outside), params=[*params, ("wait_s", "0")])
        if response.status_code == 201:
            client.post(f"/api/v1/sessions/{response.json()['id']}/close", params={"delete": "true"})
    elif route == "list":
        response = client.get("/api/v1/sessions", params=params)
    elif route == "get":
        response = client.get(quoted, params=params)
    elif route == "message":
        response = client.post(quoted + "/messages", content=body(data.draw, outside), params=params)
    elif route == "interrupt":
        response = client.post(quoted + "/interrupt", content=body(data.draw, outside))
    else:
        if session_id == sid:
            return
        response = client.post(quoted + "/close", params=params)
    check_response(response)
