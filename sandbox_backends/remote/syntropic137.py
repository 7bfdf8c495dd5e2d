"""The `syntropic137` dialect, read-only. Syntropic137 runs agent sessions for its workflows and lets others only
read them over HTTP: `GET /sessions` (filters `statuses`, `workflow_id`, `started_after`/`started_before`, `limit`
1..200, no offset; `{sessions, total}`) and `GET /sessions/{id}` (with `operations`; ids match by prefix when no
id is equal); errors are FastAPI's `{"detail": ...}`. This server mirrors those sessions and cannot create,
message or interrupt them. Checked against the platform's own API app (notes in the README's dialect table).

The remote's `url` is where `/sessions` is: behind the platform's gateway, with its prefix
(`http://localhost:8137/api/v1`); the API app served directly has none (`http://localhost:8000`). `token_env`
holds a bearer token (`SYN_API_TOKEN`), or, with `options.user`, the password of the gateway's basic auth
(`SYN_API_PASSWORD`).

How a Syntropic137 session reads here: running is busy; completed and cancelled are ended ("completed on
syntropic137"); failed is failed with the platform's `error_message`. Tokens, the cost (a decimal string) and the
cost per model are the usage; "workflow / phase" is the title; `agent_model` is often null (the platform knows it
only once it has priced the session). The operations are the conversation: tool calls with their input and
result, git operations, prompts (whose text the platform does not return), errors; thinking, token counts and
hook bookkeeping are left out. Timestamps are read with a space or a `T` between date and time.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..base import ForeignMessage, ForeignSession, SandboxError, SandboxNotFound
from .config import Remote
from .dialect import DialectPlugin
from .http import ReadOnlyDialect, RemoteRefused

NAME = "syntropic137"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "total_tokens")
METADATA = ("workflow_id", "workflow_name", "execution_id", "phase_id", "agent_provider", "repos_display")


class Syntropic137Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    poll_s: float = Field(30.0, ge=0.1, strict=True, description="seconds between polls (default 30)")
    limit: int = Field(200, ge=1, le=200, strict=True, description="sessions per page, 1..200 (default 200)")
    max_sessions: int = Field(1000, ge=1, strict=True, description="most sessions read per poll (default 1000)")
    statuses: str | list[str] | None = Field(None, description="only these statuses")
    workflow_id: str | None = Field(None, description="only this workflow's sessions")
    owner: str | None = Field(None, description="owner of the mirrored sessions")
    user: str | None = Field(None, description="basic-auth user")


class Syntropic137Client(ReadOnlyDialect):
    """Reads Syntropic137's sessions as `ForeignSession`s: the list a page at a time, back in time by
    `started_before`; one session with its operations as messages."""

    def __init__(self, remote: Remote) -> None:
        self.options = Syntropic137Options.model_validate(remote.options)  # before the token needs `user`
        self.poll_s, self.owner = self.options.poll_s, self.options.owner
        super().__init__(remote)

    def authorization(self, token: str) -> str:
        user = self.options.user
        return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode() if user else f"Bearer {token}"

    async def state(self, rid: str) -> str | None:
        await self.get(rid)
        return None

    async def get(self, rid: str, patience_s: float | None = None) -> dict[str, Any]:
        """The detail of session `rid`. The platform matches ids by prefix once no id is equal: a session that is
        gone may answer as another whose id it begins, or as 409 "Ambiguous session ID" when several do."""
        gone = SandboxNotFound(f"the session {rid} on {self.remote.label} is gone")
        try:
            detail = await self.request("GET", f"/sessions/{rid}", rid=rid, patience_s=patience_s)
        except RemoteRefused as e:
            if e.status == 409 and "Ambiguous" in str(e):
                raise gone from None
            raise
        if str(detail.get("id")) != rid:
            raise gone
        return detail

    async def sessions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One page of `GET /sessions` (older versions answer a bare list)."""
        try:
            data = await self.request("GET", "/sessions", params=params)
        except RemoteRefused as e:
            if e.status != 404:
                raise
            raise SandboxError(
                f"{self.remote.label} has no sessions list at {self.remote.url}/sessions (it answered 404). Behind Syntropic137's "
                "gateway the API is under /api/v1 (url http://HOST:8137/api/v1); served directly (uvicorn "
                "syn_api) it has no prefix (url http://HOST:PORT)."
            ) from None
        rows = data.get("sessions") if isinstance(data, dict) else data
        return [r for r in rows or [] if isinstance(r, dict) and r.get("id")]

    async def mirrored(self) -> AsyncIterator[list[ForeignSession]]:
        o = self.options
        params: dict[str, Any] = {"limit": o.limit}
        if o.statuses:
            params["statuses"] = o.statuses if isinstance(o.statuses, str) else ",".join(o.statuses)
        if o.workflow_id:
            params["workflow_id"] = o.workflow_id
        seen: set[str] = set()
        while len(seen) < o.max_sessions:
            rows = await self.sessions(params)
            fresh = [row for row in rows if str(row["id"]) not in seen]
            seen.update(str(row["id"]) for row in fresh)
            if fresh:
                yield [foreign(row) for row in fresh]
            starts = [t for t in (_time(row.get("started_at")) for row in rows) if t is not None]
            if len(rows) < o.limit or not fresh or not starts:
                return
            params["started_before"] = min(starts).isoformat()  # inclusive: the boundary repeats, `seen` drops it

    async def mirrored_one(self, key: str) -> ForeignSession:
        detail = await self.get(key, patience_s=0)
        operations = detail.get("operations")
        return foreign(detail, operations if isinstance(operations, list) else [])


def foreign(row: dict[str, Any], operations: list[dict[str, Any]] | None = None) -> ForeignSession:
    """A session as Syntropic137 shows it (a list row, or the detail with its `operations`)."""
    status, reason = _status(row, detailed=operations is not None)
    workflow, phase = row.get("workflow_name") or row.get("workflow_id"), row.get("phase_display") or row.get("phase_id")
    metadata: dict[str, Any] = {k: row[k] for k in METADATA if isinstance(row.get(k), str)}
    metadata["remote_status"] = str(row.get("status"))
    messages = None
    if operations is not None:
        messages = [m for m in map(_message, operations) if m is not None]
        metadata["operations"] = len(operations)
    return ForeignSession(
        key=str(row["id"]),
        status=status,
        reason=reason,
        title=" / ".join(str(p) for p in (workflow, phase) if p) or None,
        model=row.get("agent_model") or None,
        workspace=row.get("workspace_path") or None,
        started_at=_time(row.get("started_at")),
        finished_at=_time(row.get("completed_at")),
        usage=_usage(row),
        metadata=metadata,
        messages=messages,
    )


def _status(row: dict[str, Any], detailed: bool) -> tuple[Literal["busy", "dead", "failed"], str | None]:
    status = str(row.get("status") or "")
    if status == "failed":
        error = row.get("error_message")
        # a list row may leave the error out: None lets the mirror read the detail for it
        return "failed", f"on {NAME}: {error}" if error else f"on {NAME}: failed" if detailed else None
    if status in ("completed", "cancelled"):
        return "dead", f"{status} on {NAME}"
    return "busy", None  # running, and whatever the platform may add


def _time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _money(value: Any) -> float:
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def _usage(row: dict[str, Any]) -> dict[str, Any]:
    """The row's tokens and cost (a decimal string); what the row lacks is left out, so it keeps its value. The
    detail takes its token split from the platform's cost projection and says 0 for each part when that has no
    row, while its `total_tokens` (and the list's split) come from the session itself: a split of zeros under a
    total above zero says nothing, and is left out."""
    usage: dict[str, Any] = {key: row[key] for key in TOKENS if isinstance(row.get(key), int)}
    if usage.get("total_tokens", 0) > 0 and not any(usage.get(key) for key in TOKENS[:-1]):
        usage = {"total_tokens": usage["total_tokens"]}
    if row.get("total_cost_usd") is not None:
        usage["cost_usd"] = _money(row["total_cost_usd"])
    if isinstance(row.get("cost_by_model"), dict):
        usage["cost_by_model"] = {str(k): _money(v) for k, v in row["cost_by_model"].items()}
    return usage


# The platform's operations are its raw observability events (`operation_type` is the event type: see its
# `session_tools_dispatch.py`); older versions used the names in the second half of each set.
TOOL_CALLS = {"tool_execution_started", "subagent_started", "tool_started", "tool_use"}
TOOL_RESULTS = {"tool_execution_completed", "tool_execution_failed", "subagent_stopped", "tool_blocked"}
TOOL_RESULTS |= {"tool_completed", "tool_execution"}
PROMPTS = {"user_prompt_submitted", "message_request", "agent_request"}
ERRORS = {"error", "session_error", "api_error"}
COUNTS = (("files_changed", "", " files"), ("insertions", "+", ""), ("deletions", "-", ""))


def _message(op: dict[str, Any]) -> ForeignMessage | None:
    """An operation as a message; None for those a transcript leaves out (thinking, token counts, hooks)."""
    kind, text = str(op.get("operation_type") or ""), op.get("message_content")
    call = str(op.get("tool_use_id") or op.get("operation_id"))
    at = _time(op.get("timestamp"))
    tool_input = _dict(op.get("tool_input"))
    if kind in PROMPTS:
        # the platform keeps a prompt's text in its event, not in the operation: say that one was sent
        said = text or tool_input.get("prompt") or tool_input.get("raw") or "(a prompt; Syntropic137 does not return its text)"
        return ForeignMessage("system" if op.get("message_role") == "system" else "user", [_text(said)], at)
    if kind == "message_response":
        return ForeignMessage("assistant", [_text(text)], at) if text else None
    if kind in TOOL_CALLS:
        block = {"type": "tool_use", "id": call, "name": str(op.get("tool_name") or "tool"), "input": tool_input}
        return ForeignMessage("assistant", [block], at)
    if kind in TOOL_RESULTS:
        blocked = kind == "tool_blocked"
        output = op.get("tool_output") or ("blocked" if blocked else "")
        result = {"type": "tool_result", "tool_use_id": call, "content": str(output)}
        return ForeignMessage("tool", [{**result, "is_error": blocked or op.get("success") is False}], at)
    if kind.startswith("git_"):
        return ForeignMessage("system", [_text(_git(kind, op))], at)
    if kind in ERRORS:
        return ForeignMessage("system", [_text(f"error: {text or op.get('tool_output') or 'unknown'}")], at)
    return None


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _git(kind: str, op: dict[str, Any]) -> str:
    """A git operation as one line: `[git_commit] abc1234 on main in acme/app: message (3 files, +10 -2)`."""
    git = _dict(op.get("git"))
    sha, branch = git.get("sha") or op.get("git_sha"), git.get("branch") or op.get("git_branch")
    repo, message = git.get("repo") or op.get("git_repo"), git.get("message") or op.get("git_message")
    operation = git.get("operation") or op.get("tool_name")
    line = f"[{kind}{' ' + str(operation) if operation and str(operation) not in kind else ''}]"
    line += f" {str(sha)[:12]}" if sha else ""
    line += f" on {branch}" if branch else ""
    line += f" in {repo}" if repo else ""
    line += f": {message}" if message else ""
    counts = [f"{s}{git[k]}{e}" for k, s, e in COUNTS if git.get(k) is not None]
    return line + (f" ({' '.join(counts)})" if counts else "")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


plugin = DialectPlugin(name=NAME, client=Syntropic137Client, read_only=True, options=Syntropic137Options)
