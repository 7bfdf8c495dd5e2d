"""The remote driver: a session on another platform stands in for a sandbox.

A remote platform runs both the brain and the hands, so a remote "sandbox" is the remote session itself. It
runs no commands of ours (`exec`, files: a clear error naming the platform); instead it answers messages
(`MessageSandbox`): `send(text)` starts a turn on the remote and yields what happens there as `AgentEvent`s,
which the `remote` agent turns into this server's events, reply and usage.

A sandbox id is `<remote name>/<remote session id>`, so a restarted server re-attaches without any other
state. How each platform is spoken to is its dialect's business (dialect.py finds them by name).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio

from ..base import (
    AgentEvent,
    ClosesOnExit,
    ExecResult,
    FailureCallback,
    ForeignSession,
    MirroredSource,
    OutputCallback,
    PhaseCallback,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from .config import Remote
from .dialect import dialect
from .http import HttpDialect, ReadOnlyDialect

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 5.0


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
        return {**self._client.remote.describe(), "remote_session_id": self.remote_id}

    def _unsupported(self, what: str) -> SandboxError:
        return SandboxError(
            f"{what} is not supported by remote sandboxes: {self._client.remote.label} runs its own agent; send messages instead."
        )

    async def exec(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = 65536,
    ) -> ExecResult:
        raise self._unsupported("Running commands directly")

    async def send(self, text: str) -> AsyncIterator[AgentEvent]:
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
    """Sessions on configured remote platforms. `SandboxSpec.options["remote"]` names the remote.

    Also a `MirrorSource`: the sessions of its read-only remotes (each its own source, by the remote's name)."""

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

    def _unknown(self, name: str | None) -> str:
        known = ", ".join(sorted(self.remotes)) or "none are configured (--remotes-file or MCP_SESSIONS_REMOTES)"
        return f"Unknown remote '{name}'. Known remotes: {known}."

    def _client(self, name: str | None) -> HttpDialect:
        remote = self.remotes.get(name or "")
        if remote is None:
            raise SandboxError(self._unknown(name))
        if remote.name not in self._clients:
            self._clients[remote.name] = dialect(remote.dialect).client(remote)
        return self._clients[remote.name]

    def check(self, spec: SandboxSpec) -> None:
        name = spec.options.get("remote")
        if not name:
            raise ValueError("A remote session needs `remote`: the name of a configured remote platform.")
        remote = self.remotes.get(name)
        if remote is None:
            raise ValueError(self._unknown(name))
        if dialect(remote.dialect).read_only:
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

    # -- MirrorSource: the read-only remotes' sessions ---------------------------------------------

    def mirrored_sources(self) -> list[MirroredSource]:
        found: list[MirroredSource] = []
        for name, remote in self.remotes.items():
            if not dialect(remote.dialect).read_only:
                continue
            try:
                found.append(self._reader(name).mirrored_source())
            except SandboxError as e:  # a token variable that is not set: it will not be set later either
                log.error("not mirroring the sessions of this remote: %s", e)
        return found

    def list_mirrored(self, source: str) -> AsyncIterator[list[ForeignSession]]:
        return self._reader(source).mirrored()

    async def get_mirrored(self, source: str, key: str) -> ForeignSession:
        return await self._reader(source).mirrored_one(key)

    def _reader(self, name: str) -> ReadOnlyDialect:
        client = self._client(name)
        if not isinstance(client, ReadOnlyDialect):
            raise SandboxError(f"{client.remote.label} is not read-only: its sessions are made here, not mirrored.")
        return client
