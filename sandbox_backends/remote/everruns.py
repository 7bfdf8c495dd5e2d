"""The `everruns` dialect: Everruns, a durable agent execution platform whose sessions run its own agent loop.

Its requests are the ones Everruns' official Python client (`everruns-sdk` 0.3.1) sends, and the tests parse the
test server's answers and events with that client's own models and SSE reader. Where the client and what the
dialect did before disagreed, the client is followed:
- the token goes in `Authorization` as it is, as the client sends its key (tokens other than `evr_` keys were
  sent as `Bearer`: such a token now carries its own scheme, `Bearer <jwt>`, in the variable);
- the create body always carries `tags`, `capabilities` and `tools` lists (empty unless given), as the client's;
- `options.org_id` is sent as the `X-Org-Id` header, as the client does, not as a field of the body;
- the event stream is asked with `Accept: text/event-stream` and `Cache-Control: no-cache`, and resumed with
  `since_id` = the `id` of the last event read, any event (ids are time-ordered), not the last SSE `id:` line;
- a turn's `usage` may carry its cost (`actual_cost_usd`, else `effective_cost_usd`, else
  `estimated_cost_usd`): that is the cost, and the model's price is the fallback only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..base import AgentEvent, PhaseCallback, SandboxError, SandboxSpec
from .config import Remote
from .dialect import DialectPlugin
from .http import HttpDialect, RemoteRefused

EVR = "/v1/sessions"
COSTS = ("actual_cost_usd", "effective_cost_usd", "estimated_cost_usd")
SSE_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}


def _everruns_blocks(parts: Any) -> list[dict[str, Any]]:
    """Everruns content parts (`text`, `tool_call{id,name,arguments}`, `tool_result{tool_call_id,result,error}`,
    images) as our content blocks; images are left out."""
    blocks: list[dict[str, Any]] = []
    for p in parts if isinstance(parts, list) else []:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(p.get("text") or "")})
        elif kind == "tool_call":
            args = p.get("arguments")
            blocks.append(
                {
                    "type": "tool_use",
                    "id": str(p.get("id")),
                    "name": str(p.get("name")),
                    "input": args if isinstance(args, dict) else {},
                }
            )
        elif kind == "tool_result":
            error = p.get("error")
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": str(p.get("tool_call_id")),
                    "content": _everruns_text(p.get("result")) or str(error or ""),
                    "is_error": bool(error),
                }
            )
    return blocks


def _everruns_text(result: Any) -> str:
    """A tool result (a list of content parts, or any JSON) as text."""
    if isinstance(result, list):
        return "".join(
            str(p.get("text", "")) if isinstance(p, dict) and p.get("type") == "text" else json.dumps(p) for p in result
        )
    return "" if result is None else result if isinstance(result, str) else json.dumps(result)


def _everruns_usage(usage: Any, model: str | None) -> dict[str, Any]:
    """Everruns' TokenUsage `{input_tokens, output_tokens, cache_read_tokens?, cache_creation_tokens?,
    actual_cost_usd?, effective_cost_usd?, estimated_cost_usd?}` as ours."""
    u = usage if isinstance(usage, dict) else {}
    mapped: dict[str, Any] = {
        k: int(u.get(k) or 0) for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
    }
    mapped["total_tokens"] = mapped["input_tokens"] + mapped["output_tokens"]
    cost = next((u[k] for k in COSTS if isinstance(u.get(k), int | float)), None)
    if cost is not None:
        mapped["cost_usd"] = float(cost)
        if model:
            mapped["cost_by_model"] = {model: float(cost)}
    return mapped


class EverrunsClient(HttpDialect):
    """The `everruns` dialect, written from the session API page (shared/seeds/001) and, where that page is
    silent, from the everruns sources: `specs/apis.md` and `specs/api-streaming.md`, `crates/core/src/session.rs`
    and `events.rs` (the `Event` envelope `{id, type, ts, session_id, context{turn_id}, data}` and each event's
    data), `crates/server/src/api/events.rs` (the SSE handler), and the project's Python SDK (`client.py`,
    `sse.py`: the message body `{"message": {"role": "user", "content": [{"type": "text", "text"}]}}`).

    A session is made by `POST /v1/sessions` from `options` (fields of that body: `agent_id` or `harness_name`,
    `model_id`, `tags`, `capabilities`, ...), with the caller's title, tags (added) and model (as `model_id`).
    A message is posted once `GET /v1/sessions/{id}/sse` is open; the turn is the one whose `turn.started`
    names that message, followed to `turn.completed`/`turn.failed`/`turn.cancelled`. The stream resumes with
    `?since_id=` after the last event read (or after the session's last event before the message); the reply is
    read from `output.message.completed`, tool output from `tool.completed`, so text deltas missed while the
    stream was down cost nothing. Usage is the turn's `usage`, with its cost when it has one; otherwise the end
    names the model (`output.message.completed`'s `metadata.model`) for the remote agent to price. Cancel
    interrupts; DELETE closes.

    Assumed where the sources leave it open: `budget.paused`/`budget.exhausted` during a turn end it as failed
    (the platform waits for a budget change no caller here can make)."""

    def __init__(self, remote: Remote) -> None:
        super().__init__(remote)
        if org := remote.options.get("org_id"):
            self.http.headers["X-Org-Id"] = str(org)

    def authorization(self, token: str) -> str:
        return token

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        options = self.remote.options
        if not any(options.get(k) for k in ("agent_id", "harness_id", "harness_name")):
            raise SandboxError(
                f"{self.remote.label}: set options.agent_id (the Everruns agent the sessions run) or options.harness_name."
            )
        body: dict[str, Any] = {"capabilities": [], "tools": [], **{k: v for k, v in options.items() if k != "org_id"}}
        if spec.title:
            body["title"] = spec.title
        body["tags"] = list(dict.fromkeys([*options.get("tags", []), *spec.tags]))
        if spec.model:
            body["model_id"] = spec.model
        return str((await self.request("POST", EVR, json=body, retry=False))["id"])

    async def state(self, rid: str) -> str | None:
        await self.request("GET", f"{EVR}/{rid}", rid=rid)  # sessions live until deleted: gone is a 404
        return None

    async def send(self, rid: str, text: str) -> AsyncIterator[AgentEvent]:
        listed = (await self.request("GET", f"{EVR}/{rid}/events", rid=rid, params={"limit": 1})).get("data") or []
        before = listed[-1]["id"] if listed else None  # resume after this until the stream gives an id of its own
        posted: dict[str, Any] = {}

        async def post_once() -> None:  # after the stream is open, so no event of the turn is missed
            if not posted:
                body = {"message": {"role": "user", "content": [{"type": "text", "text": text}]}}
                posted.update(
                    await self.request("POST", f"{EVR}/{rid}/messages", rid=rid, json=body, retry=False) or {"sent": True}
                )

        read: str | None = None  # the id of the last event read: the stream resumes after it

        def resume(last: str | None) -> dict[str, Any]:
            since = read or before
            return {"params": {"since_id": since}, "headers": SSE_HEADERS} if since else {"headers": SSE_HEADERS}

        turn: str | None = None
        model: str | None = None
        reply: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        streamed: set[str] = set()
        async with aclosing(self.frames(rid, f"{EVR}/{rid}/sse", resume, post_once)) as stream:
            async for frame in stream:
                try:
                    event = json.loads(frame["data"])
                except ValueError:
                    continue
                if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
                    continue  # `connected`, `disconnecting` (the stream is cycled: it is resumed like a drop)
                if isinstance(event.get("id"), str):
                    read = event["id"]
                kind, data = event.get("type") or frame.get("event", ""), event["data"]
                of_turn = (event.get("context") or {}).get("turn_id") or data.get("turn_id")
                if kind == "turn.started" and turn is None and posted.get("id") in (None, data.get("input_message_id")):
                    turn = of_turn
                    continue
                if turn is None or (of_turn and of_turn != turn):
                    continue  # another turn's late events
                if kind == "output.message.delta":
                    yield {"kind": "text", "text": str(data.get("delta", ""))}
                elif kind == "output.message.started":
                    model = data.get("model") or model
                elif kind == "output.message.completed":
                    blocks = _everruns_blocks((data.get("message") or {}).get("content"))
                    messages.append({"role": "assistant", "content": blocks})
                    reply = [b for b in blocks if b["type"] == "text"] or reply
                    model = (data.get("metadata") or {}).get("model") or model
                elif kind == "tool.started":
                    call = data.get("tool_call") or {}
                    yield {
                        "kind": "tool.started",
                        "data": {"id": call.get("id"), "tool": call.get("name"), "input": call.get("arguments")},
                    }
                elif kind == "tool.output.delta":
                    streamed.add(str(data.get("tool_call_id")))
                    yield {"kind": "output", "text": str(data.get("delta", ""))}
                elif kind == "tool.completed":
                    call, failed = str(data.get("tool_call_id")), not data.get("success", True)
                    output = _everruns_text(data.get("result")) or str(data.get("error") or "")
                    if output and call not in streamed:
                        yield {"kind": "output", "text": output}
                    messages.append(
                        {
                            "role": "tool",
                            "content": [{"type": "tool_result", "tool_use_id": call, "content": output, "is_error": failed}],
                        }
                    )
                    yield {"kind": "tool.completed", "data": {"id": call, "tool": data.get("tool_name"), "is_error": failed}}
                elif kind in ("turn.completed", "turn.failed", "turn.cancelled", "budget.paused", "budget.exhausted"):
                    status = {"turn.completed": "completed", "turn.cancelled": "interrupted"}.get(kind, "failed")
                    reason = (
                        data.get("error")
                        or data.get("reason")
                        or data.get("message")
                        or (None if status == "completed" else kind)
                    )
                    yield {
                        "kind": "end",
                        "status": status,
                        "reason": str(reason) if reason else None,
                        "content": reply if status == "completed" else [],
                        "usage": _everruns_usage(data.get("usage"), model),
                        "model": model,
                        "messages": messages,
                    }
                    return

    async def interrupt(self, rid: str) -> bool:
        try:
            await self.request("POST", f"{EVR}/{rid}/cancel", rid=rid, json={})
        except RemoteRefused as e:
            if e.status == 400:  # "400 if the session is not active": no turn to stop
                return False
            raise
        return True

    async def close(self, rid: str, delete: bool) -> None:
        await self.request("DELETE", f"{EVR}/{rid}", rid=rid, patience_s=self.close_patience_s)


class EverrunsOptions(BaseModel):
    """Fields of Everruns' `POST /v1/sessions` body, passed on as given."""

    model_config = ConfigDict(extra="allow")

    agent_id: str | None = Field(None, description="the Everruns agent the sessions run")
    harness_id: str | None = Field(None, description="the harness, by id (instead of an agent)")
    harness_name: str | None = Field(None, description="the harness, by name (instead of an agent)")
    tags: list[str] = Field([], description="tags of every session made there (the caller's are added)")
    org_id: str | None = Field(None, description="the organization (sent as X-Org-Id, as Everruns' client does)")


plugin = DialectPlugin(name="everruns", client=EverrunsClient, options=EverrunsOptions)
