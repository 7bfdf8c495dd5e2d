"""Published output schemas accept and refuse exactly what pydantic's schemas do, and results read compactly."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import validators
from mcp import Client
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from mcp_sessions.agents.cli.approval_tool import ApprovalAnswer
from mcp_sessions.schemas import flatten
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .conftest import call

pytestmark = pytest.mark.anyio

ODD_VALUES: list[Any] = [None, 7, -1, 2.5, "", "x", True, [], ["x"], [None], {}, {"k": None}]


def variants(doc: Any) -> Iterator[Any]:
    """`doc` with one value anywhere in it replaced by an odd value, or one key removed."""
    if isinstance(doc, dict):
        for key in doc:
            for odd in ODD_VALUES:
                yield {**doc, key: odd}
            yield {k: v for k, v in doc.items() if k != key}
            for inner in variants(doc[key]):
                yield {**doc, key: inner}
    elif isinstance(doc, list) and doc:
        for inner in variants(doc[0]):
            yield [inner, *doc[1:]]


def assert_same_verdicts(original: dict[str, Any], flat: dict[str, Any], doc: Any) -> int:
    """Both schemas agree on `doc` and on every variant of it; returns how many variants they refused."""
    before = validators.validator_for(original)(original)
    after = validators.validator_for(flat)(flat)
    assert before.is_valid(doc) and after.is_valid(doc)
    refused = 0
    for variant in variants(doc):
        verdict = before.is_valid(variant)
        assert after.is_valid(variant) == verdict, json.dumps(variant)[:500]
        refused += not verdict
    return refused


async def test_every_tool_result_gets_the_same_verdicts_from_the_published_and_the_pydantic_schema(
    settings: Settings,
) -> None:
    server = create_server(settings)
    async with Client(server) as client:
        published = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        generated = {t.name: t.output_schema for t in await MCPServer.list_tools(server)}
        session = await call(client, "create_session", title="t", tags=["a"], metadata={"n": 1, "s": "x", "b": None})
        sid = session["id"]
        results = {
            "create_session": session,
            "send_message": await call(client, "send_message", session_id=sid, text="echo hi; exit 3"),
            "get_session": await call(client, "get_session", session_id=sid, events_after=0),
            "list_sessions": await call(client, "list_sessions"),
            "interrupt": await call(client, "interrupt", session_id=sid),
            "expose_port": await call(client, "expose_port", session_id=sid, port=8000),
            "fork_session": await call(client, "fork_session", session_id=sid, title="f"),
            "checkpoint_session": await call(client, "checkpoint_session", session_id=sid, name="c"),
            "restore_session": await call(client, "restore_session", session_id=sid, name="c"),
            "pause_session": await call(client, "pause_session", session_id=sid),
            "close_session": await call(client, "close_session", session_id=sid),
            # what the tool returns (a real answer needs a tool call waiting: tests/test_claude_code.py)
            "answer_approval": ApprovalAnswer(session_id=sid, request_id="r1", tool="Bash", decision="allow").model_dump(),
        }
    assert set(results) == set(published)
    for name, doc in results.items():
        flat = published[name]
        assert flat is not None and "$ref" not in json.dumps(flat) and "anyOf" not in json.dumps(flat), name
        assert flat == flatten(generated[name])  # type: ignore[arg-type]
        refused = assert_same_verdicts(generated[name], flat, doc)  # type: ignore[arg-type]
        assert refused > 0, f"no variant of the {name} result was refused: the check proves nothing"


class Tree(BaseModel):
    name: str | None
    children: list[Tree] = []


def test_a_recursive_model_keeps_its_reference_and_gives_the_same_verdicts() -> None:
    original = Tree.model_json_schema()
    flat = flatten(copy.deepcopy(original))
    assert "$defs" in flat and "$ref" in json.dumps(flat)
    doc = Tree(name="a", children=[Tree(name=None, children=[Tree(name="c")])]).model_dump(mode="json")
    assert assert_same_verdicts(original, flat, doc) > 0


async def test_a_result_carries_its_structured_content_as_compact_json_text(client: Client) -> None:
    result = await client.call_tool("list_sessions", {})
    assert result.structured_content is not None and len(result.content) == 1
    text = result.content[0].text  # type: ignore[union-attr]
    assert json.loads(text) == result.structured_content
    assert "\n" not in text and ": " not in text


TOOL_ARGUMENTS = {
    "create_session": {
        "title": "t",
        "driver": "local",
        "tags": ["a"],
        "metadata": {"n": 1, "s": "x", "b": None},
        "files": {"a.txt": "x"},
        "env": {"A": "1"},
        "limits": {"memory_mb": 512, "cpus": 1.5},
        "command_timeout_s": 30,
        "idle_timeout_s": 0,
        "idle_action": "pause",
        "paused_timeout_s": 3600,
        "max_steps": 3,
        "provider": "openai",
        "wait_s": 10,
    },
    "send_message": {"session_id": "ses_" + "0" * 32, "text": "echo hi", "wait_s": 5, "queue": True},
    "get_session": {"session_id": "ses_" + "0" * 32, "wait_s": 1, "events_after": 3},
    "list_sessions": {"statuses": ["ready"], "tags": ["a"], "limit": 10, "created_after": "2026-01-01T00:00:00Z"},
    "interrupt": {"session_id": "ses_" + "0" * 32},
    "close_session": {"session_id": "ses_" + "0" * 32, "delete": True},
    "expose_port": {"session_id": "ses_" + "0" * 32, "port": 8000},
    "answer_approval": {"session_id": "ses_" + "0" * 32, "request_id": "r1", "decision": "deny", "message": "no"},
    "pause_session": {"session_id": "ses_" + "0" * 32},
    "checkpoint_session": {"session_id": "ses_" + "0" * 32, "name": "c"},
    "restore_session": {"session_id": "ses_" + "0" * 32, "name": "c"},
    "fork_session": {"session_id": "ses_" + "0" * 32, "title": "f", "at_turn": 2, "wait_s": 5},
}


async def test_every_tool_input_gets_the_same_verdicts_from_the_published_and_the_pydantic_schema(
    settings: Settings,
) -> None:
    """The input schemas a model reads are leaner (no derived titles, unions as type lists, no $defs) and
    mean exactly the same."""
    server = create_server(settings)
    async with Client(server) as client:
        published = {t.name: t.input_schema for t in (await client.list_tools()).tools}
    generated = {t.name: t.input_schema for t in await MCPServer.list_tools(server)}
    assert set(TOOL_ARGUMENTS) == set(published)
    for name, arguments in TOOL_ARGUMENTS.items():
        lean = published[name]
        assert '"title"' not in json.dumps({k: v for k, v in lean.items() if k != "properties"})
        assert all("title" not in prop for prop in lean["properties"].values()), name
        assert "$ref" not in json.dumps(lean) and "$defs" not in lean, name
        assert len(json.dumps(lean)) < len(json.dumps(generated[name]))
        refused = assert_same_verdicts(generated[name], lean, arguments)
        assert refused > 0, f"no variant of the {name} arguments was refused: the check proves nothing"
    assert "title" in published["create_session"]["properties"]  # a parameter called title is kept


MODEL_VISIBLE_BUDGET = 15_054
"""Bytes of names, descriptions and input schemas a model reads with every call (bench/bench_tools_footprint.py
measures them). New options and tools must fit, or this budget moves on purpose (+100: the kubernetes driver's
name and summary in the `driver` parameter; +240: create_session's `network`, egress by allow-list; +354:
the expose_port tool; +350: the claude-code agent and its cli_args option; +830: its permission_mode option
and the answer_approval tool; +80: the codex agent; +2,050: pause_session, fork_session,
checkpoint_session, restore_session and create_session's idle_action; +200: the opencode agent and its options;
+382: send_message's images; +160: create_session's paused_timeout_s; +212: the codex agent's
permission_mode, system_prompt and cli_args options)."""


async def test_what_a_model_reads_of_the_tools_stays_within_its_budget(settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        tools = (await client.list_tools()).tools
    seen = [{"name": t.name, "description": t.description, "inputSchema": t.input_schema} for t in tools]
    size = len(json.dumps(seen, ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= MODEL_VISIBLE_BUDGET, f"{size} bytes: shorten descriptions or options, or raise the budget on purpose"


async def test_every_input_schema_refuses_an_argument_it_does_not_list(settings: Settings) -> None:
    async with Client(create_server(settings)) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        assert tool.input_schema["additionalProperties"] is False, tool.name
        checker = validators.validator_for(tool.input_schema)(tool.input_schema)
        arguments = TOOL_ARGUMENTS[tool.name]
        assert checker.is_valid(arguments) and not checker.is_valid({**arguments, "no_such_argument": 1}), tool.name
