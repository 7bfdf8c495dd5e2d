"""The `mcp-sessions` dialect: another mcp-sessions server, through its own REST API at /api/v1 and the
session's SSE stream, resumed with `Last-Event-ID`. A remote's `options` are fields of the remote's create
call, e.g. `{"agent": "llm", "driver": "docker"}`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..base import AgentEvent, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec
from .dialect import DialectPlugin
from .http import HttpDialect

API = "/api/v1"


class McpSessionsClient(HttpDialect):
    """The `mcp-sessions` dialect: this project's REST API at /api/v1, SSE at .../stream."""

    async def events(self, rid: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The remote session's events after seq `after`, resumed with Last-Event-ID."""

        def resume(last: str | None) -> dict[str, Any]:
            return {"headers": {"Last-Event-ID": last or str(after)}}

        async with aclosing(self.frames(rid, f"{API}/sessions/{rid}/stream", resume)) as stream:
            async for frame in stream:
                yield json.loads(frame["data"])

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        body: dict[str, Any] = {**self.remote.options, "metadata": {"caller_session": spec.name}}
        if spec.env:
            body["env"] = spec.env
        if spec.image:
            body["image"] = spec.image
        session = await self.request("POST", f"{API}/sessions", params={"wait_s": 30}, json=body, retry=False)
        rid = session["id"]
        deadline = time.monotonic() + 600
        while session["status"] == "creating" and time.monotonic() < deadline:
            if on_phase is not None:
                await on_phase(session.get("phase") or "creating_sandbox", f"{self.remote.name}: {rid}")
            session = (await self.request("GET", f"{API}/sessions/{rid}", rid=rid, params={"wait_s": 30}))["session"]
        if session["status"] != "ready":
            raise SandboxError(
                f"{self.remote.label} could not start session {rid}: "
                f"{session.get('failure_reason') or 'status ' + session['status']}"
            )
        return rid

    async def get(self, rid: str) -> dict[str, Any]:
        return await self.request("GET", f"{API}/sessions/{rid}", rid=rid)

    async def state(self, rid: str) -> str | None:
        """None while the remote session is usable, else why it is not."""
        s = (await self.get(rid))["session"]
        if s["status"] == "failed":
            return f"the session on {self.remote.label} failed: {s.get('failure_reason')}"
        if s["status"] == "dead":
            return f"the session on {self.remote.label} was closed ({s.get('close_reason')})"
        return None

    async def send(self, rid: str, text: str) -> AsyncIterator[AgentEvent]:
        cursor = (await self.get(rid))["events_cursor"]
        reply = await self.request(
            "POST",
            f"{API}/sessions/{rid}/messages",
            rid=rid,
            params={"wait_s": 0},
            json={"text": text, "queue": False},
            retry=False,
        )
        turn = reply["turn"]
        async for event in self.events(rid, cursor):
            kind, data = event["type"], event.get("data") or {}
            if kind == "text.delta":
                yield {"kind": "text", "text": data.get("text", "")}
            elif kind == "tool.output":
                yield {"kind": "output", "text": data.get("text", "")}
            elif kind in ("tool.started", "tool.completed"):
                yield {"kind": kind, "data": data}
            elif kind in ("session.failed", "session.closed"):
                raise SandboxNotFound(await self.state(rid) or f"the session on {self.remote.label} ended")
            elif kind.startswith("turn.") and kind != "turn.started" and kind != "turn.queued" and data.get("turn") == turn:
                view = await self.get(rid)
                last = view["session"].get("last_turn") or {}
                yield {
                    "kind": "end",
                    "status": kind.removeprefix("turn."),
                    "reason": data.get("reason"),
                    "content": view["session"].get("last_response") or [],
                    "output": last.get("output", "") if last.get("turn") == turn else "",
                    "exit_code": data.get("exit_code"),
                    "usage": data.get("usage") or {},
                    "messages": [
                        {"role": m["role"], "content": m["content"]}
                        for m in view.get("messages", [])
                        if m.get("turn") == turn and m["role"] != "user"
                    ],
                }
                return
        raise SandboxNotFound(f"the session on {self.remote.label} ended during the turn")

    async def interrupt(self, rid: str) -> bool:
        return bool((await self.request("POST", f"{API}/sessions/{rid}/interrupt", rid=rid)).get("interrupted"))

    async def close(self, rid: str, delete: bool) -> None:
        await self.request(
            "POST",
            f"{API}/sessions/{rid}/close",
            rid=rid,
            params={"delete": str(delete).lower()},
            patience_s=self.close_patience_s,
        )


class McpSessionsOptions(BaseModel):
    """Any field of the remote's `POST /api/v1/sessions` body (`agent`, `driver`, `model`, ...)."""

    model_config = ConfigDict(extra="allow")


plugin = DialectPlugin(name="mcp-sessions", client=McpSessionsClient, options=McpSessionsOptions)
