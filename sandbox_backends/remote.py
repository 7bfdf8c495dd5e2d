"""The `remote` driver: a session on another platform, reached over its HTTP API.

A remote platform runs both the brain and the hands, so a remote "sandbox" is the remote session itself.
It runs no commands of ours (`exec`, files: a clear error naming the platform); instead it answers
messages: `send(text)` starts a turn on the remote and yields what happens there as plain dicts, which
the `remote` agent turns into this server's events, reply and usage.

Remotes are configured by name (see `parse_remotes`); a sandbox id is `<remote name>/<remote session id>`,
so a restarted server re-attaches without any other state. Each platform's wire format is a *dialect*;
implemented here: `mcp-sessions` (this project's own REST + SSE API), `ciab` (Claude-In-A-Box),
`litellm-agent-platform`, `everruns`, and the read-only `syntropic137` (its sessions are mirrored, not driven:
see mcp_sessions/mirror.py).

Network faults: connect and read time-outs are bounded; idempotent calls and the event stream are retried
with backoff while the remote restarts (up to `reconnect_s`); the stream resumes after the last event seen
(`Last-Event-ID`), so nothing is lost or repeated; a remote session that is gone raises `SandboxNotFound`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, Field

from .base import (
    ClosesOnExit,
    ExecResult,
    FailureCallback,
    OutputCallback,
    PhaseCallback,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from .registry import DriverContext, DriverPlugin

WATCH_INTERVAL_S = 5.0
CLOSE_PATIENCE_S = 10.0
"""Closing retries an unreachable remote this long, not `reconnect_s`: the local session closes anyway."""
API = "/api/v1"

RemoteEvent = dict[str, Any]
"""What `RemoteSandbox.send` yields, in this server's vocabulary:
- `{"kind": "text", "text"}`: assistant text as it is written;
- `{"kind": "tool.started" | "tool.completed", "data": {...}}`: a tool call on the remote;
- `{"kind": "output", "text"}`: output of a running tool;
- `{"kind": "end", "status": completed|failed|interrupted, "reason", "content": [blocks], "output",
  "exit_code", "usage": {...}, "messages": [{"role", "content"}]}`: the turn is over (always last)."""


@dataclass(frozen=True)
class Remote:
    """One configured remote platform."""

    name: str
    url: str
    dialect: str = "mcp-sessions"
    token_env: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Extra fields for the remote's create call, e.g. {"agent": "llm", "driver": "docker"}."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    reconnect_s: float = 120.0
    """How long to keep retrying an unreachable remote (a restart) before giving up."""

    @property
    def label(self) -> str:
        return f"remote '{self.name}' ({self.dialect} at {self.url})"

    def token(self) -> str | None:
        if not self.token_env:
            return None
        value = os.environ.get(self.token_env)
        if not value:
            raise SandboxError(f"{self.label}: the token variable {self.token_env} is not set in the server's environment.")
        return value


def parse_remotes(data: Any) -> dict[str, Remote]:
    """Remotes from a JSON object: `{"name": {"url", "dialect", "token_env", "options", ...}}`.
    Raises ValueError with a sentence naming the bad entry."""
    if not isinstance(data, dict):
        raise ValueError("the remotes configuration must be an object: name -> {url, dialect, token_env}")
    remotes = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ValueError(f"remote '{name}' needs at least a \"url\" (a string)")
        unknown = set(entry) - {"url", "dialect", "token_env", "options", "connect_timeout_s", "read_timeout_s", "reconnect_s"}
        if unknown:
            raise ValueError(f"remote '{name}' has unknown fields: {', '.join(sorted(unknown))}")
        dialect = entry.get("dialect", "mcp-sessions")
        if dialect not in DIALECTS:
            raise ValueError(f"remote '{name}': unknown dialect '{dialect}'; known: {', '.join(DIALECTS)}")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"remote '{name}': \"options\" must be an object")
        try:
            CLIENTS[dialect].check_options(options)
        except ValueError as e:
            raise ValueError(f"remote '{name}' ({dialect}): {e}") from None
        remotes[name] = Remote(name=name, **{**entry, "url": entry["url"].rstrip("/"), "dialect": dialect})
    return remotes


def load_remotes(text: str | None = None, path: str | os.PathLike[str] | None = None) -> dict[str, Remote]:
    """Remotes from a JSON file (`.toml` files are read as TOML) and/or a JSON string; the string wins per name."""
    found: dict[str, Remote] = {}
    if path is not None:
        raw = Path(path).read_bytes()
        if str(path).endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode())
            data = data.get("remotes", data)
        else:
            data = json.loads(raw)
        found.update(parse_remotes(data))
    if text:
        found.update(parse_remotes(json.loads(text)))
    return found


class _Unreachable(Exception):
    pass


class _TurnOver(Exception):
    pass


class RemoteRefused(SandboxError):
    """The remote answered with an error status (kept in `status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HttpDialect:
    """What every dialect shares: an HTTP client with the remote's token and time-outs, calls retried
    through restarts, error bodies turned into sentences, and an SSE reader that resumes after drops."""

    read_only = False
    """True for platforms whose sessions can only be read (see mcp_sessions/mirror.py)."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        headers = {}
        token = remote.token()
        if token:
            headers["Authorization"] = self.authorization(token)
        self.http = httpx.AsyncClient(
            base_url=remote.url,
            headers=headers,
            timeout=httpx.Timeout(remote.read_timeout_s, connect=remote.connect_timeout_s),
        )

    def authorization(self, token: str) -> str:
        """The Authorization header for the remote's token."""
        return f"Bearer {token}"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise ValueError naming what is wrong with a remote's `options` (checked when remotes are loaded)."""

    async def aclose(self) -> None:
        await self.http.aclose()

    def _error(self, response: httpx.Response, rid: str | None) -> SandboxError:
        try:  # {"error": {"code", "message"}} (ours, CIAB), {"error": "text"} (LiteLLM, Everruns), {"detail": ...} (FastAPI)
            body = response.json()
            info = body["error"] if "error" in body else body["detail"]
            if isinstance(info, list):  # FastAPI's 422: [{"loc", "msg", ...}]
                info = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in info)
            code, message = (info.get("code", ""), info.get("message", "")) if isinstance(info, dict) else ("", str(info))
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message = "", response.text[:300]
        where = self.remote.label
        if response.status_code == 404 and rid is not None:
            return SandboxNotFound(f"the session {rid} on {where} is gone")
        if response.status_code in (401, 403):
            hint = f" (set {self.remote.token_env})" if self.remote.token_env else " (configure token_env)"
            return RemoteRefused(f"{where} refused the credentials{hint}: {message}", response.status_code)
        return RemoteRefused(f"{where} answered {response.status_code} {code}: {message}", response.status_code)

    async def request(
        self, method: str, path: str, *, rid: str | None = None, retry: bool = True, patience_s: float | None = None, **kw: Any
    ) -> Any:
        """One call; transport errors and 502/503/504 are retried with backoff for `reconnect_s` when
        `retry` (idempotent calls); otherwise only a refused connection (nothing was sent) is retried."""
        deadline = time.monotonic() + (self.remote.reconnect_s if patience_s is None else patience_s)
        delay = 0.25
        while True:
            try:
                response = await self.http.request(method, path, **kw)
                if response.status_code in (502, 503, 504) and retry:
                    raise _Unreachable(f"{response.status_code}")
            except (httpx.TransportError, _Unreachable) as e:
                sent = not isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))
                if (sent and not retry) or time.monotonic() + delay > deadline:
                    raise SandboxError(f"{self.remote.label} is unreachable: {type(e).__name__} {e}".rstrip()) from e
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if response.status_code >= 400:
                raise self._error(response, rid)
            if not response.content:  # 204, or a 200 with no body
                return {}
            try:
                return response.json()
            except ValueError:
                raise SandboxError(
                    f"{self.remote.label} answered {method} {path} with something other than JSON: {response.text[:200]!r}"
                ) from None

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        """Make a remote session; its id."""
        raise NotImplementedError

    async def state(self, rid: str) -> str | None:
        """None while the remote session is usable, else why it is not."""
        raise NotImplementedError

    def send(self, rid: str, text: str) -> AsyncIterator[RemoteEvent]:
        raise NotImplementedError

    async def interrupt(self, rid: str) -> bool:
        raise NotImplementedError

    async def close(self, rid: str, delete: bool) -> None:
        raise NotImplementedError

    async def frames(
        self,
        rid: str,
        path: str,
        resume: Callable[[str | None], dict[str, Any]],
        on_open: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[dict[str, str]]:
        """SSE frames `{"id", "event", "data"}` of `path`, live, reconnecting with backoff through drops and
        restarts; `resume(last id seen)` gives the request's headers/params to resume after it. `on_open`
        runs each time the stream is open. Ends only by raising: SandboxNotFound once the remote session
        has ended, SandboxError once the remote stayed unreachable for `reconnect_s`."""
        last: str | None = None
        delay = 0.25
        failed_since: float | None = None
        while True:
            try:
                kw = resume(last)  # may also choose the method and path, e.g. a POST that starts the stream
                async with self.http.stream(kw.pop("method", "GET"), kw.pop("path", path), **kw) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        if response.status_code not in (502, 503, 504):
                            raise self._error(response, rid)
                        raise _Unreachable(str(response.status_code))
                    failed_since, delay = None, 0.25
                    if on_open is not None:
                        await on_open()
                    frame: dict[str, str] = {}
                    data: list[str] = []
                    async for line in response.aiter_lines():
                        if line == "":
                            if data:
                                frame["data"] = "\n".join(data)
                                if "id" in frame:
                                    last = frame["id"]
                                yield frame
                            frame, data = {}, []
                        elif line.startswith(":"):
                            continue
                        else:
                            key, _, value = line.partition(":")
                            value = value.removeprefix(" ")
                            if key == "data":
                                data.append(value)
                            elif key in ("id", "event"):
                                frame[key] = value
                # a clean end: the remote session ended, or the remote is shutting down
                why = await self.state(rid)
                if why is not None:
                    raise SandboxNotFound(why)
            except (httpx.TransportError, _Unreachable) as e:
                now = time.monotonic()
                failed_since = failed_since or now
                if now - failed_since > self.remote.reconnect_s:
                    raise SandboxError(
                        f"lost the event stream of {self.remote.label} for over {self.remote.reconnect_s:g} s: {e}"
                    ) from e
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)


class McpSessionsClient(HttpDialect):
    """The `mcp-sessions` dialect: this project's REST API at /api/v1, SSE at .../stream."""

    async def events(self, rid: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The remote session's events after seq `after`, resumed with Last-Event-ID."""

        def resume(last: str | None) -> dict[str, Any]:
            return {"headers": {"Last-Event-ID": last or str(after)}}

        async for frame in self.frames(rid, f"{API}/sessions/{rid}/stream", resume):
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

    async def send(self, rid: str, text: str) -> AsyncIterator[RemoteEvent]:
        cursor = (await self.get(rid))["events_cursor"]
        reply = await self.request(
            "POST", f"{API}/sessions/{rid}/messages", rid=rid, params={"wait_s": 0}, json={"text": text, "queue": False}, retry=False
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
            "POST", f"{API}/sessions/{rid}/close", rid=rid, params={"delete": str(delete).lower()}, patience_s=CLOSE_PATIENCE_S
        )


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

    async def send(self, rid: str, text: str) -> AsyncIterator[RemoteEvent]:
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
        async for frame in self.frames(rid, f"{API}/sessions/{rid}/stream", resume, post_once):
            try:
                event = json.loads(frame["data"])
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("session_id") not in (None, rid):
                continue
            kind = frame.get("event") or event.get("event_type", "")
            data = event.get("data") if isinstance(event.get("data"), dict) else {}
            if kind == "text_delta":
                yield {"kind": "text", "text": str(data.get("text", ""))}
            elif kind == "tool_use_start":
                tools[str(data.get("id"))] = str(data.get("name", "tool"))
                yield {"kind": "tool.started", "data": {"id": data.get("id"), "tool": data.get("name"), "input": data.get("input")}}
            elif kind == "tool_result":
                content = data.get("content")
                if isinstance(content, list):
                    content = "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
                if content:
                    yield {"kind": "output", "text": str(content)}
                call = str(data.get("tool_use_id"))
                yield {"kind": "tool.completed", "data": {"id": call, "tool": tools.get(call), "is_error": bool(data.get("is_error"))}}
            elif kind in ("session_completed", "session_failed", "result_error", "error"):
                failed = kind != "session_completed"
                reason = (data.get("error") or data.get("message") or kind) if failed else None
                yield await self._end(rid, "failed" if failed else "completed", reason)
                return

    async def _end(self, rid: str, status: str, reason: Any) -> RemoteEvent:
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
            await self.request("POST", f"{API}/sessions/{rid}/interrupt", rid=rid, patience_s=CLOSE_PATIENCE_S)
        except SandboxNotFound:
            pass


LAP = "/api/v1/managed_agents"
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
        body: dict[str, Any] = {"title": self.remote.options.get("title") or spec.name}
        if spec.env:
            body["env_vars"] = spec.env
        session = await self.request("POST", f"{LAP}/agents/{agent_id}/session", json=body, retry=False)
        rid = session["id"]
        deadline = time.monotonic() + 600
        while session.get("status") == "creating" and time.monotonic() < deadline:
            if on_phase is not None:
                await on_phase(LAP_PHASES.get(session.get("phase") or "", "creating_sandbox"), session.get("phase_detail") or rid)
            await anyio.sleep(1.0)
            session = await self.get(rid)
        if session.get("status") != "ready":
            raise SandboxError(
                f"{self.remote.label} could not start session {rid}: {session.get('failure_reason') or 'status ' + str(session.get('status'))}"
            )
        return rid

    async def get(self, rid: str) -> dict[str, Any]:
        return await self.request("GET", f"{LAP}/sessions/{rid}", rid=rid)

    async def state(self, rid: str) -> str | None:
        s = await self.get(rid)
        if s.get("status") in ("failed", "dead", "stopped"):
            return f"the session on {self.remote.label} is {s['status']}: {s.get('failure_reason') or 'stopped'}"
        return None

    async def send(self, rid: str, text: str) -> AsyncIterator[RemoteEvent]:
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
        frames = self.frames(rid, "", resume, mark_open)
        while True:
            try:
                frame = await frames.__anext__()
                message = json.loads(frame["data"])
            except _TurnOver:
                message = {"type": "done"}
            except ValueError:
                continue
            kind = message.get("type")
            if kind == "harness_event":
                event = message.get("event") or {}
                etype = event.get("type")
                if etype == "assistant_text":
                    yield {"kind": "text", "text": str(event.get("text", ""))}
                elif etype == "tool_call":
                    yield {"kind": "tool.started", "data": {"id": event.get("call_id"), "tool": event.get("tool"), "input": event.get("input")}}
                elif etype == "tool_result":
                    if event.get("output"):
                        yield {"kind": "output", "text": str(event["output"])}
                    yield {"kind": "tool.completed", "data": {"id": event.get("call_id"), "tool": event.get("tool"), "is_error": bool(event.get("is_error"))}}
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

    async def interrupt(self, rid: str) -> bool:
        return bool((await self.request("POST", f"{LAP}/sessions/{rid}/abort", rid=rid)).get("ok"))

    async def close(self, rid: str, delete: bool) -> None:
        await self.request("DELETE", f"{LAP}/sessions/{rid}", rid=rid, patience_s=CLOSE_PATIENCE_S)


EVR = "/v1/sessions"


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
            blocks.append({"type": "tool_use", "id": str(p.get("id")), "name": str(p.get("name")), "input": args if isinstance(args, dict) else {}})
        elif kind == "tool_result":
            error = p.get("error")
            blocks.append({"type": "tool_result", "tool_use_id": str(p.get("tool_call_id")), "content": _everruns_text(p.get("result")) or str(error or ""), "is_error": bool(error)})
    return blocks


def _everruns_text(result: Any) -> str:
    """A tool result (a list of content parts, or any JSON) as text."""
    if isinstance(result, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) and p.get("type") == "text" else json.dumps(p) for p in result)
    return "" if result is None else result if isinstance(result, str) else json.dumps(result)


def _everruns_usage(usage: Any) -> dict[str, Any]:
    """Everruns' TokenUsage `{input_tokens, output_tokens, cache_read_tokens?, cache_creation_tokens?}` as ours."""
    u = usage if isinstance(usage, dict) else {}
    mapped = {k: int(u.get(k) or 0) for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")}
    mapped["total_tokens"] = mapped["input_tokens"] + mapped["output_tokens"]
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
    names that message, followed to `turn.completed`/`turn.failed`/`turn.cancelled`. Only durable events carry
    an SSE `id:`, and the stream resumes with `?since_id=` after the last one (or after the session's last
    event before the message), so a dropped or cycled stream loses only text deltas: the reply is read from
    `output.message.completed`, tool output from `tool.completed`. Usage is the turn's `usage`; Everruns
    reports no cost, so the end names the model (`output.message.completed`'s `metadata.model`) for the remote
    agent to price. Cancel interrupts; DELETE closes. API keys (`evr_...`) go bare in `Authorization`, as the
    SDK sends them; other tokens (JWTs) as `Bearer`.

    Assumed where the sources leave it open: `budget.paused`/`budget.exhausted` during a turn end it as failed
    (the platform waits for a budget change no caller here can make)."""

    def authorization(self, token: str) -> str:
        return token if token.startswith("evr_") else f"Bearer {token}"

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        options = self.remote.options
        if not any(options.get(k) for k in ("agent_id", "harness_id", "harness_name")):
            raise SandboxError(f"{self.remote.label}: set options.agent_id (the Everruns agent the sessions run) or options.harness_name.")
        body: dict[str, Any] = dict(options)
        if spec.title:
            body["title"] = spec.title
        tags = [*options.get("tags", []), *spec.tags]
        if tags:
            body["tags"] = list(dict.fromkeys(tags))
        if spec.model:
            body["model_id"] = spec.model
        return str((await self.request("POST", EVR, json=body, retry=False))["id"])

    async def state(self, rid: str) -> str | None:
        await self.request("GET", f"{EVR}/{rid}", rid=rid)  # sessions live until deleted: gone is a 404
        return None

    async def send(self, rid: str, text: str) -> AsyncIterator[RemoteEvent]:
        listed = (await self.request("GET", f"{EVR}/{rid}/events", rid=rid, params={"limit": 1})).get("data") or []
        before = listed[-1]["id"] if listed else None  # resume after this until the stream gives an id of its own
        posted: dict[str, Any] = {}

        async def post_once() -> None:  # after the stream is open, so no event of the turn is missed
            if not posted:
                body = {"message": {"role": "user", "content": [{"type": "text", "text": text}]}}
                posted.update(await self.request("POST", f"{EVR}/{rid}/messages", rid=rid, json=body, retry=False) or {"sent": True})

        def resume(last: str | None) -> dict[str, Any]:
            since = last or before
            return {"params": {"since_id": since}} if since else {}

        turn: str | None = None
        model: str | None = None
        reply: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        streamed: set[str] = set()
        async for frame in self.frames(rid, f"{EVR}/{rid}/sse", resume, post_once):
            try:
                event = json.loads(frame["data"])
            except ValueError:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
                continue  # `connected`, `disconnecting` (the stream is cycled: it is resumed like a drop)
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
                yield {"kind": "tool.started", "data": {"id": call.get("id"), "tool": call.get("name"), "input": call.get("arguments")}}
            elif kind == "tool.output.delta":
                streamed.add(str(data.get("tool_call_id")))
                yield {"kind": "output", "text": str(data.get("delta", ""))}
            elif kind == "tool.completed":
                call, failed = str(data.get("tool_call_id")), not data.get("success", True)
                output = _everruns_text(data.get("result")) or str(data.get("error") or "")
                if output and call not in streamed:
                    yield {"kind": "output", "text": output}
                messages.append({"role": "tool", "content": [{"type": "tool_result", "tool_use_id": call, "content": output, "is_error": failed}]})
                yield {"kind": "tool.completed", "data": {"id": call, "tool": data.get("tool_name"), "is_error": failed}}
            elif kind in ("turn.completed", "turn.failed", "turn.cancelled", "budget.paused", "budget.exhausted"):
                status = {"turn.completed": "completed", "turn.cancelled": "interrupted"}.get(kind, "failed")
                reason = data.get("error") or data.get("reason") or data.get("message") or (None if status == "completed" else kind)
                yield {
                    "kind": "end",
                    "status": status,
                    "reason": str(reason) if reason else None,
                    "content": reply if status == "completed" else [],
                    "usage": _everruns_usage(data.get("usage")),
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
        await self.request("DELETE", f"{EVR}/{rid}", rid=rid, patience_s=CLOSE_PATIENCE_S)


class Syntropic137Client(HttpDialect):
    """The `syntropic137` dialect, read-only. Syntropic137 runs agent sessions for its workflows and lets others
    only read them over HTTP (shared/seeds/003): `GET /sessions` (filters `statuses`, `workflow_id`,
    `started_after`/`started_before`, `limit` 1..200; `{sessions, total}`) and `GET /sessions/{id}` (with
    `operations`); errors are FastAPI's `{"detail": ...}`. This server mirrors those sessions
    (mcp_sessions/mirror.py) and cannot create, message or interrupt them. The remote's `url` includes the API
    prefix (e.g. `http://localhost:8137/api/v1`). `token_env` holds a bearer token (`SYN_API_TOKEN`), or, with
    `options.user`, the password of the gateway's basic auth (`SYN_API_PASSWORD`)."""

    read_only = True
    OPTIONS = {"poll_s": "seconds between polls (default 30)", "limit": "sessions per page, 1..200 (default 200)",
               "max_sessions": "most sessions read per poll (default 1000)", "statuses": "only these statuses",
               "workflow_id": "only this workflow's sessions", "owner": "owner of the mirrored sessions",
               "user": "basic-auth user"}  # fmt: skip

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        unknown = set(options) - set(cls.OPTIONS)
        if unknown:
            known = "; ".join(f"{k} ({v})" for k, v in cls.OPTIONS.items())
            raise ValueError(f"unknown options {', '.join(sorted(unknown))}; known: {known}")
        for key, low, high in (("poll_s", 0.1, None), ("limit", 1, 200), ("max_sessions", 1, None)):
            value = options.get(key)
            if value is not None and (not isinstance(value, (int, float)) or value < low or (high is not None and value > high)):
                raise ValueError(f"options.{key} must be a number from {low:g}{f' to {high:g}' if high else ' up'}, not {value!r}")

    def authorization(self, token: str) -> str:
        user = self.remote.options.get("user")
        return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode() if user else f"Bearer {token}"

    def refuse(self, what: str) -> SandboxError:
        return SandboxError(
            f"syntropic137 sessions are read-only: {what} on {self.remote.label} is not possible. Its workflows start "
            "and run the sessions; this server only shows them (list_sessions, get_session, the transcript)."
        )

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        raise self.refuse("creating a session")

    def send(self, rid: str, text: str) -> AsyncIterator[RemoteEvent]:
        raise self.refuse("sending a message")

    async def interrupt(self, rid: str) -> bool:
        raise self.refuse("interrupting a session")

    async def state(self, rid: str) -> str | None:
        await self.get(rid)
        return None

    async def close(self, rid: str, delete: bool) -> None:
        return None  # nothing to do there: the session is the platform's

    async def get(self, rid: str, patience_s: float | None = None) -> dict[str, Any]:
        return await self.request("GET", f"/sessions/{rid}", rid=rid, patience_s=patience_s)

    async def sessions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One page of `GET /sessions` (older versions answer a bare list)."""
        data = await self.request("GET", "/sessions", params=params)
        rows = data.get("sessions") if isinstance(data, dict) else data
        return [r for r in rows or [] if isinstance(r, dict) and r.get("id")]


CLIENTS: dict[str, type[HttpDialect]] = {
    "mcp-sessions": McpSessionsClient,
    "ciab": CiabClient,
    "litellm-agent-platform": LiteLlmAgentPlatformClient,
    "everruns": EverrunsClient,
    "syntropic137": Syntropic137Client,
}
DIALECTS = tuple(CLIENTS)


class RemoteSandbox(ClosesOnExit):
    """A session on a remote platform, standing in for a sandbox."""

    def __init__(self, client: HttpDialect, rid: str, name: str = "", on_gone: FailureCallback | None = None) -> None:
        self._client = client
        self.remote_id = rid
        self.closed = False
        self._name = name
        self._on_gone = on_gone

    @property
    def id(self) -> str:
        return f"{self._client.remote.name}/{self.remote_id}"

    @property
    def workspace(self) -> str:
        return f"{self._client.remote.url}/sessions/{self.remote_id}"

    def describe(self) -> dict[str, object]:
        r = self._client.remote
        return {"remote": r.name, "dialect": r.dialect, "url": r.url, "remote_session_id": self.remote_id}

    def _unsupported(self, what: str) -> SandboxError:
        return SandboxError(
            f"{what} is not supported by remote sandboxes: {self._client.remote.label} runs its own agent; "
            "send messages instead."
        )

    async def exec(
        self, script: str, *, timeout_s: float | None = None, on_output: OutputCallback | None = None, max_output_bytes: int = 65536
    ) -> ExecResult:
        raise self._unsupported("Running commands directly")

    async def send(self, text: str) -> AsyncIterator[RemoteEvent]:
        """Start a turn on the remote with `text` and yield its events; the last is `{"kind": "end"}`.
        A remote session found gone is also reported to the driver's watch, which fails the local session."""
        try:
            async for event in self._client.send(self.remote_id, text):
                yield event
        except SandboxNotFound as e:
            if self._on_gone is not None:
                await self._on_gone(self._name, str(e))
            raise

    async def interrupt(self) -> bool:
        return await self._client.interrupt(self.remote_id)

    async def take_over(self) -> ExecResult | None:
        try:
            await self.interrupt()
        except SandboxError:
            pass
        return None

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        raise self._unsupported("Reading workspace files")

    async def write_file(self, path: str, data: bytes) -> None:
        raise self._unsupported("Writing workspace files")

    async def close(self, *, delete: bool = False) -> None:
        if self.closed:
            return
        self.closed = True  # first, so the driver's watch does not report the close as a failure
        try:
            await self._client.close(self.remote_id, delete)
        except SandboxNotFound:
            pass
        except BaseException:
            self.closed = False
            raise


class RemoteDriver:
    """Sessions on configured remote platforms. `SandboxSpec.options["remote"]` names the remote."""

    name = "remote"

    def __init__(self, remotes: dict[str, Remote] | None = None) -> None:
        self.remotes = remotes or {}
        self._clients: dict[str, HttpDialect] = {}
        self._live: dict[str, RemoteSandbox] = {}
        """Sandbox name (our session id) -> sandbox, for the watch."""
        self._on_failure: FailureCallback | None = None

    async def _gone(self, name: str, reason: str) -> None:
        self._live.pop(name, None)
        if self._on_failure is not None:
            await self._on_failure(name, reason)

    def _client(self, name: str | None) -> HttpDialect:
        remote = self.remotes.get(name or "")
        if remote is None:
            known = ", ".join(sorted(self.remotes)) or "none are configured (--remotes-file or MCP_SESSIONS_REMOTES)"
            raise SandboxError(f"Unknown remote '{name}'. Known remotes: {known}.")
        if name not in self._clients:
            self._clients[remote.name] = CLIENTS[remote.dialect](remote)
        return self._clients[remote.name]

    def check(self, spec: SandboxSpec) -> None:
        name = spec.options.get("remote")
        if not name:
            raise ValueError("A remote session needs `remote`: the name of a configured remote platform.")
        remote = self.remotes.get(name)
        if remote is None:
            known = ", ".join(sorted(self.remotes)) or "none are configured (--remotes-file or MCP_SESSIONS_REMOTES)"
            raise ValueError(f"Unknown remote '{name}'. Known remotes: {known}.")
        if CLIENTS[remote.dialect].read_only:
            raise ValueError(
                f"{remote.dialect} sessions are read-only: remote '{name}' cannot make sessions here; its own "
                f"workflows start them, and they show up by themselves: list_sessions(tags=['{name}'])."
            )

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> RemoteSandbox:
        client = self._client(spec.options.get("remote"))
        if on_phase is not None:
            await on_phase("creating_sandbox", f"asking {client.remote.label}")
        sandbox = RemoteSandbox(client, await client.create(spec, on_phase), spec.name, self._gone)
        self._live[spec.name] = sandbox
        return sandbox

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> RemoteSandbox:
        name, _, rid = sandbox_id.partition("/")
        client = self._client(name)
        sandbox = RemoteSandbox(client, rid, spec.name, self._gone)
        self._live[spec.name] = sandbox
        return sandbox

    async def watch(self, on_failure: FailureCallback) -> None:
        """Poll the remote sessions this process knows; report those that failed, closed or vanished."""
        self._on_failure = on_failure
        while True:
            await anyio.sleep(WATCH_INTERVAL_S)
            for name, sandbox in list(self._live.items()):
                if sandbox.closed:
                    self._live.pop(name, None)
                    continue
                try:
                    why = await sandbox._client.state(sandbox.remote_id)
                except SandboxNotFound as e:
                    why = str(e)
                except SandboxError:
                    continue  # unreachable for now: the next round tries again
                if why is not None:
                    await self._gone(name, why)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class RemoteSettings(BaseModel):
    remotes_file: Path | None = Field(
        None, description="Remote platforms for driver='remote': JSON (or .toml) name -> {url, dialect, token_env}."
    )
    remotes: str | None = Field(None, description="Remote platforms as a JSON object, like the remotes file; wins per name.")


class RemoteOptions(BaseModel):
    remote: str | None = Field(None, max_length=100, description="the name of a configured remote platform whose own agent answers")


def _make(settings: Any, context: DriverContext) -> RemoteDriver:
    s: RemoteSettings = settings
    try:
        return RemoteDriver(load_remotes(s.remotes, s.remotes_file))
    except (ValueError, OSError) as e:
        raise SandboxError(f"The remotes configuration is invalid: {e}") from None


plugin = DriverPlugin(
    name="remote",
    make=_make,
    summary="a session on another platform over its HTTP API (with remote=NAME), whose own agent answers",
    settings=RemoteSettings,
    options=RemoteOptions,
    agent="remote",
)
