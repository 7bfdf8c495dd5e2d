"""The `syntropic137` dialect, read-only. Syntropic137 runs agent sessions for its workflows and lets others only
read them over HTTP (shared/seeds/003): `GET /sessions` (filters `statuses`, `workflow_id`,
`started_after`/`started_before`, `limit` 1..200; `{sessions, total}`) and `GET /sessions/{id}` (with
`operations`); errors are FastAPI's `{"detail": ...}`. This server mirrors those sessions
(mcp_sessions/mirror.py) and cannot create, message or interrupt them.

The remote's `url` includes the API prefix (e.g. `http://localhost:8137/api/v1`). `token_env` holds a bearer
token (`SYN_API_TOKEN`), or, with `options.user`, the password of the gateway's basic auth (`SYN_API_PASSWORD`).
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .config import Remote
from .dialect import DialectPlugin
from .http import ReadOnlyDialect


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
    """Reads Syntropic137's session list and one session's detail."""

    def __init__(self, remote: Remote) -> None:
        self.options = Syntropic137Options.model_validate(remote.options)  # before the token needs `user`
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


plugin = DialectPlugin(name="syntropic137", client=Syntropic137Client, read_only=True, options=Syntropic137Options)
