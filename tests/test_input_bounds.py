"""Every number a caller sends is bounded: in the published schemas (the tools' input schemas, the OpenAPI
document), and by the server, which refuses a number out of range with an error that says the range,
logs no traceback, and loses nothing.

The schema walks below find every integer and number a caller can send, so a parameter added later is
covered without touching this file: it fails the first test if it has no bounds, the second and third if
the server does not refuse a number past them with the range in its answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from mcp_sessions.inputs import MAX_INT
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call, call_error, new_session
from .test_http import ALICE, TOKENS, bearer, running

pytestmark = pytest.mark.anyio

API = "/api/v1"
SEQ_RANGE = f"between 0 and {MAX_INT}"


# -- the schemas ------------------------------------------------------------------------------------


def numbers(
    schema: Any, root: dict[str, Any], path: tuple[str, ...] = (), seen: frozenset[str] = frozenset()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path of field names, schema) of every integer or number a value of `schema` can hold; `*` stands
    for any key of a map, `0` for any item of a list. `$ref`s resolve against `root`."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in seen:
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        yield from numbers(target, root, path, seen | {ref})
    types = schema.get("type", [])
    if {"integer", "number"} & set([types] if isinstance(types, str) else types):
        yield path, schema
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key, []):
            yield from numbers(sub, root, path, seen)
    for name, sub in schema.get("properties", {}).items():
        yield from numbers(sub, root, (*path, name), seen)
    yield from numbers(schema.get("additionalProperties"), root, (*path, "*"), seen)
    yield from numbers(schema.get("items"), root, (*path, "0"), seen)


def unbounded(found: list[tuple[str, tuple[str, ...], dict[str, Any]]]) -> list[str]:
    return [
        f"{where}: {'.'.join(path)}"
        for where, path, schema in found
        if not ({"maximum", "exclusiveMaximum"} & schema.keys() and {"minimum", "exclusiveMinimum"} & schema.keys())
    ]


async def tool_numbers(client: Client) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """Every number of every tool's input, as (tool, path, schema)."""
    found = []
    for tool in (await client.list_tools()).tools:
        found += [(tool.name, path, schema) for path, schema in numbers(tool.input_schema, tool.input_schema)]
    return found


def openapi_numbers(doc: dict[str, Any]) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """Every number a request can carry, as ("METHOD path", (where, name, ...), schema): parameters of any
    kind (query, header, path) and bodies."""
    found = []
    for route, operations in doc["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {route}"
            for parameter in op.get("parameters", []):
                found += [(where, (parameter["in"], parameter["name"], *p), s) for p, s in numbers(parameter["schema"], doc)]
            for content in op.get("requestBody", {}).get("content", {}).values():
                found += [(where, ("body", *p), s) for p, s in numbers(content["schema"], doc)]
    return found


async def test_every_number_in_the_published_schemas_has_both_bounds(plugins_installed: Path, settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        tools = await tool_numbers(client)
    async with running(settings, TOKENS) as (base, _), httpx.AsyncClient(base_url=base) as http:
        rest = openapi_numbers((await http.get(f"{API}/openapi.json")).json())
    # the walks find the numbers there are: a walk that finds none would pass whatever the schemas say
    assert ("get_session", ("events_after",)) in {(t, p) for t, p, _ in tools}
    assert ("create_session", ("limits", "memory_mb")) in {(t, p) for t, p, _ in tools}
    assert ("create_session", ("metadata", "*")) in {(t, p) for t, p, _ in tools}
    assert ("GET /api/v1/sessions/{session_id}/stream", ("header", "Last-Event-ID")) in {(w, p) for w, p, _ in rest}
    assert ("POST /api/v1/sessions", ("body", "max_turn_cost_usd")) in {(w, p) for w, p, _ in rest}
    assert unbounded(tools) == []
    assert unbounded(rest) == []


def past(schema: dict[str, Any], side: str) -> int | float:
    """A number just past one end of the schema's range."""
    if side == "high":
        return schema["exclusiveMaximum"] if "exclusiveMaximum" in schema else schema["maximum"] + 1
    return schema["exclusiveMinimum"] if "exclusiveMinimum" in schema else schema["minimum"] - 1


def at(path: tuple[str, ...], value: Any) -> Any:
    """`value` at `path` in a new argument tree: {"limits": {"pids": value}}, {"metadata": {"k": value}}."""
    for part in reversed(path):
        value = [value] if part == "0" else {("k" if part == "*" else part): value}
    return value


def says_range(text: str, path: tuple[str, ...], schema: dict[str, Any]) -> bool:
    """Whether an error names the field and both ends of its range, written as a person writes numbers."""
    ends = [schema.get(k) for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in schema]
    written = [str(int(n)) if float(n).is_integer() else str(n) for n in ends]
    field = path[-1] if path[-1] not in ("*", "0") else path[-2]
    return field in text and all(w in text for w in written)


# -- MCP ----------------------------------------------------------------------------------------------


async def test_each_tool_refuses_a_number_past_either_end_with_the_range(
    plugins_installed: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with Client(create_server(settings), mode="legacy") as client:
        sid = await new_session(client)
        base = {"send_message": {"session_id": sid, "text": "echo ran"}, "get_session": {"session_id": sid}}
        tried = 0
        for tool, path, schema in await tool_numbers(client):
            for side in ("high", "low"):
                args = {**base.get(tool, {}), **at(path, past(schema, side))}
                text = await call_error(client, tool, **args)
                assert says_range(text, path, schema), (tool, path, side, text)
                tried += 1
        assert tried >= 20
        assert (await call(client, "list_sessions"))["total"] == 1  # no refused create made a session
        assert (await call(client, "get_session", session_id=sid))["session"]["turns"] == 0  # nor ran a message
    assert_no_traceback(caplog)


async def test_huge_numbers_over_mcp_are_refused_clearly_and_lose_nothing(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await new_session(client)
    reply = await call(client, "send_message", session_id=sid, text="echo kept")
    before = await call(client, "get_session", session_id=sid, events_after=0)

    for events_after in (10**30, 2**63, -1):
        text = await call_error(client, "get_session", session_id=sid, events_after=events_after)
        assert f"events_after: must be a whole number {SEQ_RANGE}" in text, text
    assert "wait_s: must be a finite number between 0 and 3600" in await call_error(
        client, "send_message", session_id=sid, text="echo never", wait_s=1e308
    )
    assert "limit: must be a whole number between 1 and 200" in await call_error(client, "list_sessions", limit=10**30)
    text = await call_error(client, "create_session", idle_timeout_s=1e300, limits={"pids": 10**30}, metadata={"n": 10**30})
    assert "idle_timeout_s: must be a finite number between 0 and 1000000000" in text, text
    assert "limits.pids: must be a whole number between 16 and 4194304" in text, text
    assert "metadata.n: must be text, a boolean, null, or a finite number between -9007199254740991 and 9007199254740991" in text

    after = await call(client, "get_session", session_id=sid, events_after=0)
    assert after["events"] == before["events"] and after["session"]["turns"] == 1
    assert after["session"]["last_turn"]["output"] == "kept\n"
    assert (await call(client, "list_sessions"))["total"] == 1
    # the largest cursor there is works, and is answered as a cursor past the end
    assert (await call(client, "get_session", session_id=sid, events_after=MAX_INT))["events"] == []
    assert reply["events_cursor"] <= after["events_cursor"]
    assert_no_traceback(caplog)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The server logged no error and no traceback: every refusal was an answer, not a crash."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info or "Traceback" in r.getMessage()]
    assert bad == [], [r.getMessage() for r in bad]


# -- REST -------------------------------------------------------------------------------------------


async def test_each_rest_number_past_either_end_gets_a_400_with_the_range(
    plugins_installed: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    unlimited = settings.model_copy(update={"rate_limit_per_s": 0})  # dozens of calls in a second, by design
    async with (
        running(unlimited, TOKENS) as (base, _),
        httpx.AsyncClient(base_url=base, headers=bearer(ALICE), timeout=60) as http,
    ):
        sid = (await http.post(f"{API}/sessions", json={})).json()["id"]
        doc = (await http.get(f"{API}/openapi.json")).json()
        tried = 0
        for where, (part, *path), schema in openapi_numbers(doc):
            method, route = where.split(" ", 1)
            url = route.replace("{session_id}", sid)
            for side in ("high", "low"):
                value = past(schema, side)
                if part == "query":
                    r = await http.request(
                        method, url, params={path[0]: str(value)}, json={"text": "echo ran"} if method == "POST" else None
                    )
                elif part == "header":
                    r = await http.request(method, url, headers={path[0]: str(value)})
                else:
                    r = await http.request(
                        method, url, json={**({"text": "echo ran"} if "messages" in url else {}), **at(tuple(path), value)}
                    )
                assert r.status_code == 400, (where, path, side, r.status_code, r.text)
                assert r.json()["error"]["code"] == "invalid_request"
                assert says_range(r.json()["error"]["message"], tuple(path), schema), (where, path, r.text)
                tried += 1
        assert tried >= 30
        assert (await http.get(f"{API}/sessions")).json()["total"] == 1
        assert (await http.get(f"{API}/sessions/{sid}")).json()["session"]["turns"] == 0
    assert_no_traceback(caplog)


async def test_huge_numbers_over_rest_are_refused_clearly_and_lose_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        running(settings, TOKENS) as (base, _),
        httpx.AsyncClient(base_url=base, headers=bearer(ALICE), timeout=60) as http,
    ):
        sid = (await http.post(f"{API}/sessions", json={})).json()["id"]
        r = await http.post(f"{API}/sessions/{sid}/messages", params={"wait_s": 30}, json={"text": "echo kept"})
        assert r.status_code == 200 and r.json()["output"] == "kept\n"
        before = (await http.get(f"{API}/sessions/{sid}", params={"events_after": 0})).json()

        async def refused(method: str, url: str, *words: str, **kw: Any) -> None:
            r = await http.request(method, url, **kw)
            assert r.status_code == 400, (url, kw, r.text)
            message = r.json()["error"]["message"]
            assert all(w in message for w in words), message

        session = f"{API}/sessions/{sid}"
        await refused("GET", session, f"events_after: must be a whole number {SEQ_RANGE}", params={"events_after": str(10**30)})
        await refused("GET", session, "wait_s: must be a finite number between 0 and 3600", params={"wait_s": "nan"})
        await refused("GET", session, "wait_s: must be a finite number between 0 and 3600", params={"wait_s": "1e400"})
        await refused("GET", f"{API}/sessions", "limit: must be a whole number between 1 and 200", params={"limit": str(2**64)})
        await refused(
            "GET",
            session + "/stream",
            f"Last-Event-ID: must be a whole number {SEQ_RANGE}",
            headers={"Last-Event-ID": str(10**30)},
        )
        await refused("GET", session + "/stream", "Last-Event-ID", headers={"Last-Event-ID": "-1"})
        await refused(
            "GET", session + "/stream", f"last_event_id: must be a whole number {SEQ_RANGE}", params={"last_event_id": str(2**63)}
        )
        await refused("POST", session + "/messages", "wait_s", params={"wait_s": "inf"}, json={"text": "echo never"})
        await refused(
            "POST",
            f"{API}/sessions",
            "idle_timeout_s: must be a finite number between 0 and 1000000000",
            "limits.memory_mb: must be a whole number between 64 and 1048576",
            content=b'{"idle_timeout_s": NaN, "limits": {"memory_mb": 1' + b"0" * 40 + b"}}",
        )
        await refused("POST", f"{API}/sessions", "command_timeout_s", json={"command_timeout_s": True})

        after = (await http.get(f"{API}/sessions/{sid}", params={"events_after": 0})).json()
        assert after["events"] == before["events"] and after["session"]["turns"] == 1
        assert (await http.get(f"{API}/sessions")).json()["total"] == 1
        # the largest cursor there is: no event, answered, not an error
        r = await http.get(f"{API}/sessions/{sid}", params={"events_after": str(MAX_INT)})
        assert r.status_code == 200 and r.json()["events"] == []
    assert_no_traceback(caplog)


async def test_a_whole_number_written_as_2_0_counts_as_an_integer_over_rest(settings: Settings) -> None:
    """JSON Schema counts 2.0 as an integer, so a client may send one where the document asks for an
    integer; REST bodies are otherwise read strictly ("2" and true are not numbers there)."""
    async with (
        running(settings, TOKENS) as (base, _),
        httpx.AsyncClient(base_url=base, headers=bearer(ALICE), timeout=60) as http,
    ):
        sid = (await http.post(f"{API}/sessions", json={})).json()["id"]
        r = await http.post(f"{API}/tools/expose_port", json={"session_id": sid, "port": 8000.0})
        assert r.status_code == 200, r.text
        assert r.json()["port"] == 8000 and r.json()["url"].endswith("/8000/")
        # read as turn 3, then refused for what it is: a turn with no checkpoint, not a malformed number
        r = await http.post(f"{API}/tools/fork_session", json={"session_id": sid, "at_turn": 3.0})
        assert "no checkpoint of turn 3 " in r.json()["error"]["message"], r.text
        for bad in (8000.5, "8000", True):
            r = await http.post(f"{API}/tools/expose_port", json={"session_id": sid, "port": bad})
            assert r.status_code == 400 and "port" in r.json()["error"]["message"], (bad, r.text)
