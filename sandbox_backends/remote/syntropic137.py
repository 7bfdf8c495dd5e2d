"""The `syntropic137` dialect, read-only. Syntropic137 runs agent sessions for its workflows and lets others only
read them over HTTP (shared/seeds/003): `GET /sessions` (filters `statuses`, `workflow_id`,
`started_after`/`started_before`, `limit` 1..200; `{sessions, total}`) and `GET /sessions/{id}` (with
`operations`); errors are FastAPI's `{"detail": ...}`. This server mirrors those sessions and cannot create,
message or interrupt them.

The remote's `url` includes the API prefix (e.g. `http://localhost:8137/api/v1`). `token_env` holds a bearer
token (`SYN_API_TOKEN`), or, with `options.user`, the password of the gateway's basic auth (`SYN_API_PASSWORD`).

How a Syntropic137 session reads here: running is busy; completed and cancelled are ended ("completed on
syntropic137"); failed is failed with the platform's `error_message`. Tokens, the cost (a decimal string) and the
cost per model are the usage; "workflow / phase" is the title; the operations are the conversation (requests,
responses, tool calls and results, errors; thinking is left out).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..base import ForeignMessage, ForeignSession
from .config import Remote
from .dialect import DialectPlugin
from .http import ReadOnlyDialect

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
        return await self.request("GET", f"/sessions/{rid}", rid=rid, patience_s=patience_s)

    async def sessions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One page of `GET /sessions` (older versions answer a bare list)."""
        data = await self.request("GET", "/sessions", params=params)
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
    """The row's tokens and cost (a decimal string); what the row lacks is left out, so it keeps its value."""
    usage: dict[str, Any] = {key: row[key] for key in TOKENS if isinstance(row.get(key), int)}
    if row.get("total_cost_usd") is not None:
        usage["cost_usd"] = _money(row["total_cost_usd"])
    if isinstance(row.get("cost_by_model"), dict):
        usage["cost_by_model"] = {str(k): _money(v) for k, v in row["cost_by_model"].items()}
    return usage


def _message(op: dict[str, Any]) -> ForeignMessage | None:
    """An operation as a message; None for those a transcript leaves out (thinking, validation)."""
    kind, text = op.get("operation_type"), op.get("message_content")
    call = str(op.get("tool_use_id") or op.get("operation_id"))
    at = _time(op.get("timestamp"))
    if kind in ("message_request", "agent_request") and text:
        return ForeignMessage("system" if op.get("message_role") == "system" else "user", [{"type": "text", "text": text}], at)
    if kind == "message_response" and text:
        return ForeignMessage("assistant", [{"type": "text", "text": text}], at)
    if kind in ("tool_started", "tool_use"):
        tool_input = op.get("tool_input")
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": call,
            "name": str(op.get("tool_name") or "tool"),
            "input": tool_input if isinstance(tool_input, dict) else {},
        }
        return ForeignMessage("assistant", [block], at)
    if kind in ("tool_completed", "tool_blocked", "tool_execution"):
        blocked = kind == "tool_blocked"
        output = op.get("tool_output") or ("blocked" if blocked else "")
        block = {
            "type": "tool_result",
            "tool_use_id": call,
            "content": str(output),
            "is_error": blocked or op.get("success") is False,
        }
        return ForeignMessage("tool", [block], at)
    if kind == "error":
        return ForeignMessage("system", [{"type": "text", "text": f"error: {text or op.get('tool_output') or 'unknown'}"}], at)
    return None


plugin = DialectPlugin(name=NAME, client=Syntropic137Client, read_only=True, options=Syntropic137Options)
