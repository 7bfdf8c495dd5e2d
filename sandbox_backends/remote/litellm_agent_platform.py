"""The `litellm-agent-platform` dialect: the LiteLLM Agent Platform (LAP), a sandbox pod per session that runs
one agent's harness. Checked against the platform's own Next.js server (notes in the README's dialect table).

What its server does that its documentation does not say: create answers 200 with the `creating` row; a session
that exists but is not `ready` answers 404 `"... not found or not ready"` on `message`, `message_stream` and
`abort`, and 409 `"session not ready, status=..."` on `/events`: those mean "wait" while it is `creating`, and
the session's status otherwise, never "gone". A create that does not reach `ready` leaves its session (and pod)
behind, so it is deleted. Errors are `{"error": "text"}`, or `{"error": [{code, message, path}]}` (zod) with 400.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field

from ..base import AgentEvent, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec
from .dialect import DialectPlugin
from .http import HttpDialect


class _TurnOver(Exception):
    """The turn ended while the stream was down: there is nothing more to read for it."""


class _NotReady(SandboxError):
    """The session exists but is not `ready` (the platform's 404 "not found or not ready", 409 "not ready")."""


LAP = "/api/v1/managed_agents"
NOT_READY_RETRIES = 30
LAP_PHASES = {
    "creating_sandbox": "creating_sandbox",
    "pod_pending": "starting",
    "pod_running": "starting",
    "injecting_files": "injecting_files",
    "waiting_harness": "starting_agent",
    "harness_ready": "starting_agent",
    "cloning_repo": "cloning_repo",
    "installing_deps": "installing_deps",
    "harness_listening": "starting_agent",
}


class LiteLlmAgentPlatformClient(HttpDialect):
    """The `litellm-agent-platform` dialect (LAP): a session per agent (`options.agent_id`), created in the
    background (polled until `ready`); a message is sent and streamed by `message_stream` (SSE frames
    `ready`, `harness_event`, `done`, `error`); after a drop the turn is followed on `/events` and its reply
    read from the session. `abort` interrupts; DELETE closes."""

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        agent_id = self.remote.options.get("agent_id")
        if not agent_id:
            raise SandboxError(f"{self.remote.label}: set options.agent_id, the LiteLLM agent the sessions run.")
        body: dict[str, Any] = {}
        if title := spec.title or self.remote.options.get("title"):
            body["title"] = title
        if spec.env:
            body["env_vars"] = spec.env
        session = await self.request("POST", f"{LAP}/agents/{agent_id}/session", json=body, retry=False)
        rid = session["id"]
        try:
            session = await self._until_ready(session, on_phase)
            if session.get("status") != "ready":
                raise SandboxError(f"{self.remote.label} could not start session {rid}: {self._why(session)}")
        except BaseException:
            with anyio.CancelScope(shield=True):  # the platform keeps a session that never started, pod and all
                try:
                    await self.close(rid, delete=True)
                except SandboxError:
                    pass
            raise
        return rid

    async def _until_ready(self, session: dict[str, Any], on_phase: PhaseCallback | None = None) -> dict[str, Any]:
        """The session once it is no longer `creating` (or after the platform's own 600 s limit for that)."""
        deadline = time.monotonic() + 600
        while session.get("status") == "creating" and time.monotonic() < deadline:
            if on_phase is not None:
                phase = LAP_PHASES.get(session.get("phase") or "", "creating_sandbox")
                await on_phase(phase, session.get("phase_detail") or session["id"])
            await anyio.sleep(1.0)
            session = await self.get(session["id"])
        return session

    async def _ready(self, rid: str) -> None:
        """Wait while the session is `creating`; SandboxNotFound, naming its status, if it cannot become ready."""
        session = await self._until_ready(await self.get(rid))
        if session.get("status") != "ready":
            raise SandboxNotFound(f"the session {rid} on {self.remote.label} {self._why(session)}")

    @staticmethod
    def _why(session: dict[str, Any]) -> str:
        phase = f" at {session['phase']}" if session.get("phase") else ""
        return f"is {session.get('status')}{phase}: {session.get('failure_reason') or 'no reason given'}"

    def _error(self, response: httpx.Response, rid: str | None) -> SandboxError:
        error = super()._error(response, rid)
        try:
            said = str(response.json().get("error"))
        except (ValueError, AttributeError):
            return error
        if rid is not None and response.status_code in (404, 409) and "not ready" in said:
            return _NotReady(f"{self.remote.label}: {said}")
        return error

    async def get(self, rid: str) -> dict[str, Any]:
        return await self.request("GET", f"{LAP}/sessions/{rid}", rid=rid)

    async def state(self, rid: str) -> str | None:
        s = await self.get(rid)
        if s.get("status") in ("failed", "dead", "stopped"):
            return f"the session on {self.remote.label} is {s['status']}: {s.get('failure_reason') or 'stopped'}"
        return None

    async def send(self, rid: str, text: str) -> AsyncIterator[AgentEvent]:
        opened = False
        before = (await self.get(rid)).get("response")

        async def mark_open() -> None:
            nonlocal opened
            if opened and (await self.get(rid)).get("response") != before:
                raise _TurnOver()  # it ended while the stream was down: /events does not replay
            opened = True

        def resume(last: str | None) -> dict[str, Any]:
            if not opened:
                return {"method": "POST", "path": f"{LAP}/sessions/{rid}/message_stream", "json": {"text": text}}
            return {"path": f"{LAP}/sessions/{rid}/events"}

        usage: dict[str, Any] = {}
        waits = 0
        frames = self.frames(rid, "", resume, mark_open)
        try:
            while True:
                try:
                    frame = await frames.__anext__()
                    message = json.loads(frame["data"])
                except _TurnOver:
                    message = {"type": "done"}
                except _NotReady as e:
                    # not ready (yet, or again): the harness got nothing; wait for it, then open the stream again
                    await frames.aclose()
                    waits += 1
                    if waits > NOT_READY_RETRIES:  # the session says ready, its endpoints keep saying not
                        raise SandboxError(f"{e} (asked {waits} times while the session said it was ready)") from e
                    await self._ready(rid)
                    await anyio.sleep(min(waits - 1, 5))
                    frames = self.frames(rid, "", resume, mark_open)
                    continue
                except ValueError:
                    continue
                kind = message.get("type")
                if kind == "harness_event":
                    event = message.get("event") or {}
                    etype = event.get("type")
                    if etype == "assistant_text":
                        yield {"kind": "text", "text": str(event.get("text", ""))}
                    elif etype == "tool_call":
                        yield {
                            "kind": "tool.started",
                            "data": {"id": event.get("call_id"), "tool": event.get("tool"), "input": event.get("input")},
                        }
                    elif etype == "tool_result":
                        if event.get("output"):
                            yield {"kind": "output", "text": str(event["output"])}
                        yield {
                            "kind": "tool.completed",
                            "data": {
                                "id": event.get("call_id"),
                                "tool": event.get("tool"),
                                "is_error": bool(event.get("is_error")),
                            },
                        }
                    elif etype == "turn_complete":
                        u = event.get("usage") or {}
                        usage = {
                            "input_tokens": int(u.get("input") or 0),
                            "output_tokens": int(u.get("output") or 0),
                            "cache_read_tokens": int(u.get("cache_read") or 0),
                            "cache_creation_tokens": int(u.get("cache_write") or 0),
                            "cost_usd": float(event.get("cost_usd") or 0.0),
                        }
                        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
                elif kind in ("done", "error"):
                    parts = ((await self.get(rid)).get("response") or {}).get("parts") or []
                    content = [{"type": "text", "text": str(p.get("text", ""))} for p in parts if p.get("type") == "text"]
                    yield {
                        "kind": "end",
                        "status": "completed" if kind == "done" else "failed",
                        "reason": None if kind == "done" else str(message.get("message") or "the harness failed"),
                        "content": content if kind == "done" else [],
                        "usage": usage,
                    }
                    return
        finally:
            await frames.aclose()

    async def interrupt(self, rid: str) -> bool:
        try:
            return bool((await self.request("POST", f"{LAP}/sessions/{rid}/abort", rid=rid)).get("ok"))
        except _NotReady:
            return False  # a session that is not ready runs no turn

    async def close(self, rid: str, delete: bool) -> None:
        await self.request("DELETE", f"{LAP}/sessions/{rid}", rid=rid, patience_s=self.close_patience_s)


class LiteLlmAgentPlatformOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    agent_id: str | None = Field(None, description="the LiteLLM agent the sessions run (needed to create one)")
    title: str | None = Field(None, description="the title of every session made there (default: our session id)")


plugin = DialectPlugin(name="litellm-agent-platform", client=LiteLlmAgentPlatformClient, options=LiteLlmAgentPlatformOptions)
