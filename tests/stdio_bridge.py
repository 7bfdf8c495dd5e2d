"""A streamable HTTP front for an MCP server that speaks stdio, so that HTTP-only tools (the official
conformance suite) can test the stdio server itself.

    python -m tests.stdio_bridge [--port N] -- COMMAND [ARGS...]

Everything HTTP is the MCP SDK's own streamable HTTP transport (sessions, SSE, headers, Host and Origin
checks, both protocol eras), as under `mcp-sessions serve --http`; everything MCP is the stdio server's.
A middleware in front of the SDK's dispatch hands every request and notification, as it came, to a
stdio server process and answers with what that process answers:

- handshake era: one process per HTTP session, started by its `initialize`;
- 2026-07-28 era: one process for every request (that era has no sessions).

Request ids are the bridge's own on the pipe (clients' ids may collide in the shared process) and put
back in the answers. A notification of the process that belongs to a request in flight (progress by
its token, a listen stream's by its subscription id) goes on that request's stream; any other, and a
request of the process to the client (sampling, elicitation), goes on the session's GET stream.
Prints `listening on URL` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import uvicorn
from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types.methods import CLIENT_REQUESTS, SPEC_CLIENT_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

UPSTREAM = "stdio_bridge.upstream"


@dataclass
class Exchange:
    """A request in flight on the pipe: where its answer and its notifications go."""

    client_id: types.RequestId
    outbound: Any
    """The request's own channel (its POST stream)."""
    answer: anyio.abc.ObjectSendStream[types.JSONRPCResponse | types.JSONRPCError]
    progress_token: Any = None


@dataclass
class Upstream:
    """One stdio server process, and the requests in flight on it."""

    params: StdioServerParameters
    standalone: Any = None
    """The channel of the HTTP session (its GET stream) for what belongs to no request; None in the 2026 era."""
    write: anyio.abc.ObjectSendStream[SessionMessage] | None = None
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    stopped: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with stdio_client(self.params) as (read, write), anyio.create_task_group() as tg:
                self.write = write
                tg.start_soon(self._wait_stop, tg)
                task_status.started()
                async for item in read:
                    if isinstance(item, SessionMessage):
                        await self._route(item.message, tg)
                tg.cancel_scope.cancel()
        finally:
            for exchange in self.exchanges.values():
                await exchange.answer.aclose()

    async def _wait_stop(self, tg: anyio.abc.TaskGroup) -> None:
        await self.stopped.wait()
        tg.cancel_scope.cancel()

    async def request(self, ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
        assert self.write is not None and ctx.request_id is not None
        number = next(self.numbers)
        send, receive = anyio.create_memory_object_stream[types.JSONRPCResponse | types.JSONRPCError](1)
        params = dict(ctx.params) if ctx.params is not None else None
        token = (params or {}).get("_meta", {}).get("progressToken")
        self.exchanges[number] = Exchange(ctx.request_id, ctx.session._request_outbound, send, token)
        try:
            await self.write.send(
                SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=number, method=ctx.method, params=params))
            )
            try:
                answer = await receive.receive()
            except anyio.EndOfStream:
                raise MCPError(types.INTERNAL_ERROR, "the stdio server process ended") from None
        except anyio.get_cancelled_exc_class():  # the client gave up: tell the process, as a client would
            with anyio.CancelScope(shield=True):
                await self.notify("notifications/cancelled", {"requestId": number})
            raise
        finally:
            del self.exchanges[number]
        if isinstance(answer, types.JSONRPCError):
            raise MCPError(answer.error.code, answer.error.message, answer.error.data)
        return answer.result

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        assert self.write is not None
        if method == "notifications/cancelled" and params is not None:  # name the request by its id on the pipe
            mine = next((n for n, e in self.exchanges.items() if e.client_id == params.get("requestId")), None)
            params = {**params, "requestId": mine} if mine is not None else params
        message = types.JSONRPCNotification(jsonrpc="2.0", method=method, params=dict(params) if params else None)
        await self.write.send(SessionMessage(message))

    async def _route(self, message: types.JSONRPCMessage, tg: anyio.abc.TaskGroup) -> None:
        if isinstance(message, (types.JSONRPCResponse, types.JSONRPCError)):
            exchange = self.exchanges.get(message.id) if isinstance(message.id, int) else None
            if exchange is not None:
                await exchange.answer.send(message.model_copy(update={"id": exchange.client_id}))
        elif isinstance(message, types.JSONRPCNotification):
            params = dict(message.params or {})
            meta = dict(params.get("_meta") or {})
            exchange = self._exchange_of(params.get("progressToken"), meta.get(SUBSCRIPTION_ID_META_KEY))
            if exchange is not None:
                if SUBSCRIPTION_ID_META_KEY in meta:
                    params["_meta"] = {**meta, SUBSCRIPTION_ID_META_KEY: exchange.client_id}
                await exchange.outbound.notify(message.method, params)
            elif self.standalone is not None:
                await self.standalone.notify(message.method, message.params)
        elif isinstance(message, types.JSONRPCRequest):
            tg.start_soon(self._ask_client, message)

    def _exchange_of(self, token: Any, subscription: Any) -> Exchange | None:
        if isinstance(subscription, int) and subscription in self.exchanges:
            return self.exchanges[subscription]
        return next((e for e in self.exchanges.values() if token is not None and e.progress_token == token), None)

    async def _ask_client(self, request: types.JSONRPCRequest) -> None:
        """A request of the process to the client (sampling, elicitation, roots, ping): asked on the
        session's GET stream, answered on the pipe under the process's own id."""
        assert self.write is not None
        reply: types.JSONRPCMessage
        try:
            if self.standalone is None:
                raise MCPError(types.INVALID_REQUEST, "no channel to the client for server requests")
            result = await self.standalone.send_raw_request(request.method, request.params)
            reply = types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result)
        except MCPError as e:
            reply = types.JSONRPCError(jsonrpc="2.0", id=request.id, error=e.error)
        await self.write.send(SessionMessage(reply))


def bridge(command: list[str]) -> Server[Any]:
    """The low-level SDK server whose every message is forwarded to a process running `command`."""
    # The bridge's own environment (MCP_SESSIONS_HOME above all): the SDK would start the server with only
    # a few safe variables, so it would use, and write, the user's real state folder.
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        async with anyio.create_task_group() as tg:
            holder["tg"] = tg
            try:
                yield holder
            finally:
                tg.cancel_scope.cancel()

    async def start(standalone: Any) -> Upstream:
        upstream = Upstream(params, standalone)
        await holder["tg"].start(upstream.run)
        return upstream

    async def forward(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        connection = ctx.session._connection
        if ctx.method in SPEC_CLIENT_METHODS and (ctx.method, ctx.protocol_version) not in CLIENT_REQUESTS:
            return await call_next(ctx)  # not a method of this era (initialize in 2026-07-28): the SDK's HTTP answer
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            upstream = holder.get("modern") or holder.setdefault("modern", await start(None))
        elif ctx.method == "initialize":
            upstream = connection.state[UPSTREAM] = await start(connection)
            connection.exit_stack.callback(upstream.stopped.set)
        else:
            upstream = connection.state.get(UPSTREAM)
            if upstream is None:
                raise MCPError(types.INVALID_REQUEST, "send initialize first")
        if ctx.request_id is None:  # a notification: the process gets it; the SDK still keeps its own state
            await upstream.notify(ctx.method, ctx.params)
            return await call_next(ctx)
        return await upstream.request(ctx)

    server: Server[Any] = Server("stdio-bridge", lifespan=lifespan)
    server.middleware.append(forward)
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    app = bridge(command).streamable_http_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)

    anyio.run(serve)


if __name__ == "__main__":
    sys.exit(main())
