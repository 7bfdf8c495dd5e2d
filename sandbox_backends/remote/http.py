"""What every dialect shares: one HTTP client per remote, with its token and time-outs; calls retried with
backoff while the remote restarts (up to `reconnect_s`); error bodies turned into sentences naming the remote;
and an SSE reader that resumes after the last event seen, so nothing is lost or repeated. A remote session
that is gone raises `SandboxNotFound`.

`ReadOnlyDialect` is the base of platforms whose sessions can only be read: they are mirrored, not driven.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from ..base import AgentEvent, ForeignSession, MirroredSource, PhaseCallback, SandboxError, SandboxNotFound, SandboxSpec

if TYPE_CHECKING:
    from .config import Remote


class _Unreachable(Exception):
    """A 502, 503 or 504: the remote is there but cannot answer yet (restarting, say)."""


class RemoteRefused(SandboxError):
    """The remote answered with an error status (kept in `status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HttpDialect:
    """What every dialect shares: an HTTP client with the remote's token and time-outs, calls retried
    through restarts, error bodies turned into sentences, and an SSE reader that resumes after drops."""

    close_patience_s = 10.0
    """Closing retries an unreachable remote this long, not `reconnect_s`: the local session closes anyway."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        headers: dict[str, str] = {}
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

    async def aclose(self) -> None:
        await self.http.aclose()

    def _error(self, response: httpx.Response, rid: str | None) -> SandboxError:
        try:  # {"error": {"code", "message"}} (ours, CIAB), {"error": "text"} (LiteLLM, Everruns), {"detail": ...} (FastAPI)
            body = response.json()
            info = body["error"] if "error" in body else body["detail"]
            if isinstance(info, list):  # FastAPI's 422 [{"loc", "msg", ...}], zod's issues [{"path", "message", ...}]
                info = "; ".join(
                    f"{'.'.join(map(str, d.get('loc') or d.get('path') or []))}: {d.get('msg') or d.get('message')}" for d in info
                )
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

    def send(self, rid: str, text: str) -> AsyncIterator[AgentEvent]:
        """Start a turn with `text` and yield its events; the last is `{"kind": "end", ...}` (see `AgentEvent`)."""
        raise NotImplementedError

    async def interrupt(self, rid: str) -> bool:
        """Stop the remote session's turn; True if one was running."""
        raise NotImplementedError

    async def close(self, rid: str, delete: bool) -> None:
        """End the remote session (and remove it, with `delete`, where the platform can)."""
        raise NotImplementedError

    async def frames(
        self,
        rid: str,
        path: str,
        resume: Callable[[str | None], dict[str, Any]],
        on_open: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[dict[str, str], None]:
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


class ReadOnlyDialect(HttpDialect):
    """A platform that runs sessions itself (started by its own workflows) and lets others only read them. The
    remote driver mirrors them (it is a `MirrorSource`); creating, messaging and interrupting fail, saying so.
    A subclass reads the platform's sessions as `ForeignSession`s and sets `poll_s` and `owner`."""

    poll_s = 30.0
    """Seconds between two reads of the platform's session list."""
    owner: str | None = None
    """The owner of the mirrored sessions here (who sees them over HTTP with tokens); None for everyone."""

    def refuse(self, what: str) -> SandboxError:
        return SandboxError(
            f"{self.remote.dialect} sessions are read-only: {what} on {self.remote.label} is not possible. Its workflows "
            "start and run the sessions; this server only shows them (list_sessions, get_session, the transcript)."
        )

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None) -> str:
        raise self.refuse("creating a session")

    def send(self, rid: str, text: str) -> AsyncIterator[AgentEvent]:
        raise self.refuse("sending a message")

    async def interrupt(self, rid: str) -> bool:
        raise self.refuse("interrupting a session")

    async def close(self, rid: str, delete: bool) -> None:
        return None  # nothing to do there: the session is the platform's

    def mirrored_source(self) -> MirroredSource:
        """This remote as a source of mirrored sessions."""
        r = self.remote
        return MirroredSource(
            name=r.name,
            tags=(r.dialect,),
            describe=r.describe(),
            read_only_reason=(
                f"{r.dialect} sessions are read-only: session {{session}} mirrors session {{key}} of remote '{r.name}', "
                f"whose workflows run it. Read it with get_session or its transcript; to steer it, use {r.dialect} itself."
            ),
            poll_s=self.poll_s,
            owner=self.owner,
        )

    def mirrored(self) -> AsyncIterator[list[ForeignSession]]:
        """The platform's sessions, newest first, a page at a time, without their messages."""
        raise NotImplementedError

    async def mirrored_one(self, key: str) -> ForeignSession:
        """One session with its whole conversation, read at once (no retries: a caller is waiting)."""
        raise NotImplementedError
