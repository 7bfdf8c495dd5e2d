"""The `ciab` dialect: Claude-In-A-Box (CIAB), a control plane whose sandboxes each hold many sessions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..base import AgentEvent, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec
from .dialect import DialectPlugin
from .http import HttpDialect

API = "/api/v1"


class CiabClient(HttpDialect):
    """The `ciab` dialect (Claude-In-A-Box): sessions live in an existing CIAB sandbox (`options.sandbox_id`);
    messages are queued and answered in the background; `GET /sessions/{sid}/stream` is SSE resumed with
    `?last_event_id=`. CIAB reports no token usage, and has no session delete: closing leaves the CIAB
    session in its sandbox (the sandbox's owner removes it)."""

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        sandbox_id = self.remote.options.get("sandbox_id")
        if not sandbox_id:
            raise SandboxError(f"{self.remote.label}: set options.sandbox_id, the CIAB sandbox the sessions go into.")
        session = await self.request(
            "POST", f"{API}/sandboxes/{sandbox_id}/sessions", json={"metadata": {"caller_session": spec.name}}, retry=False
        )
        if session.get("state") == "failed":
            raise SandboxError(f"{self.remote.label} could not start a session: its state is failed")
        return session["id"]

    async def get(self, rid: str) -> dict[str, Any]:
        return await self.request("GET", f"{API}/sessions/{rid}", rid=rid)

    async def state(self, rid: str) -> str | None:
        if (await self.get(rid)).get("state") == "failed":
            return f"the session on {self.remote.label} failed"
        return None

    async def send(self, rid: str, text: str) -> AsyncIterator[AgentEvent]:
        sent = False

        async def post_once() -> None:  # after the stream is open, so no event of the turn is missed
            nonlocal sent
            if not sent:
                sent = True
                body = {"role": "user", "content": [{"type": "text", "text": text}]}
                await self.request("POST", f"{API}/sessions/{rid}/messages", rid=rid, json=body, retry=False)

        def resume(last: str | None) -> dict[str, Any]:
            return {"params": {"last_event_id": last}} if last else {}

        tools: dict[str, str] = {}
        async with aclosing(self.frames(rid, f"{API}/sessions/{rid}/stream", resume, post_once)) as stream:
            async for frame in stream:
                try:
                    event = json.loads(frame["data"])
                except ValueError:
                    continue
                if not isinstance(event, dict) or event.get("session_id") not in (None, rid):
                    continue
                kind = frame.get("event") or event.get("event_type", "")
                raw = event.get("data")
                data: dict[str, Any] = raw if isinstance(raw, dict) else {}
                if kind == "text_delta":
                    yield {"kind": "text", "text": str(data.get("text", ""))}
                elif kind == "tool_use_start":
                    tools[str(data.get("id"))] = str(data.get("name", "tool"))
                    yield {
                        "kind": "tool.started",
                        "data": {"id": data.get("id"), "tool": data.get("name"), "input": data.get("input")},
                    }
                elif kind == "tool_result":
                    content = data.get("content")
                    if isinstance(content, list):
                        content = "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
                    if content:
                        yield {"kind": "output", "text": str(content)}
                    call = str(data.get("tool_use_id"))
                    yield {
                        "kind": "tool.completed",
                        "data": {"id": call, "tool": tools.get(call), "is_error": bool(data.get("is_error"))},
                    }
                elif kind in ("session_completed", "session_failed", "result_error", "error"):
                    failed = kind != "session_completed"
                    reason = (data.get("error") or data.get("message") or kind) if failed else None
                    yield await self._end(rid, "failed" if failed else "completed", reason)
                    return

    async def _end(self, rid: str, status: str, reason: Any) -> AgentEvent:
        messages = (await self.get(rid)).get("messages") or []
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        turn = messages[users[-1] + 1 :] if users else messages
        replies = [m for m in turn if m.get("role") == "assistant"]
        return {
            "kind": "end",
            "status": status,
            "reason": str(reason) if reason else None,
            "content": replies[-1]["content"] if replies else [],
            "usage": {},
            "messages": [{"role": m["role"], "content": m.get("content") or []} for m in turn],
        }

    async def interrupt(self, rid: str) -> bool:
        return (await self.request("POST", f"{API}/sessions/{rid}/interrupt", rid=rid)).get("status") == "interrupted"

    async def close(self, rid: str, delete: bool) -> None:
        try:
            await self.request("POST", f"{API}/sessions/{rid}/interrupt", rid=rid, patience_s=self.close_patience_s)
        except SandboxNotFound:
            pass


class CiabOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    sandbox_id: str | None = Field(None, description="the CIAB sandbox the sessions go into (needed to create one)")


plugin = DialectPlugin(name="ciab", client=CiabClient, options=CiabOptions)
