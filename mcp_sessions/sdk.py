"""The MCP SDK internals this server needs, in one place.

`mcp` 2.3 has no public way to add or remove request handlers of an `MCPServer`, to reach its subscription bus, to
tell when a client connection is gone, to ask whether a request carries a progress token, or to give each
streamable HTTP session an event store of its own. Each of
those reaches into the SDK here and nowhere else, so a new SDK minor (the dependency is pinned to one)
is checked against this module alone. Each is driven through real clients by the tests of subscriptions
and notifications, and of progress (test_streaming.py, test_http.py); `test_architecture.py`
fails if any other module reaches into the SDK.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import NotificationOptions
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.session import ServerSession
from mcp.server.streamable_http import EventStore, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import SubscriptionBus
from mcp.types import (
    ServerCapabilities,
    ServerTasksCapability,
    ServerTasksRequestsCapability,
    TasksCallCapability,
    TasksCancelCapability,
    TasksListCapability,
    TasksToolsCapability,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS


def lowlevel(mcp: MCPServer[Any]) -> Server[Any]:
    """The low-level server under an MCPServer."""
    return mcp._lowlevel_server


def subscription_bus(mcp: MCPServer[Any]) -> SubscriptionBus:
    """The bus that carries 2026-07-28 subscription notifications (`subscriptions/listen`)."""
    bus: SubscriptionBus = mcp._subscriptions
    return bus


def add_request_handler(mcp: MCPServer[Any], method: str, params: type, handler: Callable[..., Awaitable[Any]]) -> None:
    """Serve a request method MCPServer does not serve itself (or replace how it serves one)."""
    lowlevel(mcp).add_request_handler(method, params, handler)


def withdraw_request_handlers(mcp: MCPServer[Any], *methods: str) -> None:
    """Stop serving methods MCPServer serves by default (and so stop advertising their capability): the
    low-level server derives its capabilities from the handlers it holds."""
    for method in methods:
        lowlevel(mcp)._request_handlers.pop(method, None)


def announce_resource_changes(mcp: MCPServer[Any]) -> None:
    """Make the capabilities say that the server sends `resources/list_changed`, in both eras, and never
    `tools/list_changed`: the tools are fixed. (In 2026-07-28 the SDK derives every `listChanged` from
    `subscriptions/listen` being served, which it is, for the resources.)"""
    low = lowlevel(mcp)
    low.create_initialization_options = functools.partial(  # type: ignore[method-assign]
        low.create_initialization_options, NotificationOptions(resources_changed=True)
    )
    derive = low.get_capabilities

    def capabilities(*args: Any, **kwargs: Any) -> ServerCapabilities:
        found = derive(*args, **kwargs)
        if found.tools is not None:
            found.tools.list_changed = False
        return found

    low.get_capabilities = capabilities  # type: ignore[method-assign]


def advertise_tasks(mcp: MCPServer[Any], extension: str) -> None:
    """Make the handshake-era capabilities say `tasks` (list, cancel, tools/call: VS Code looks for
    `tasks.requests.tools.call`) instead of the 2026-07-28 extension, which the SDK advertises in every
    era; 2026-07-28 keeps the extension and no `tasks` slot."""
    low = lowlevel(mcp)
    derive = low.get_capabilities

    def capabilities(*args: Any, protocol_version: str | None = None, **kwargs: Any) -> ServerCapabilities:
        found = derive(*args, protocol_version=protocol_version, **kwargs)
        if protocol_version not in MODERN_PROTOCOL_VERSIONS:
            found.tasks = ServerTasksCapability(
                list=TasksListCapability(),
                cancel=TasksCancelCapability(),
                requests=ServerTasksRequestsCapability(tools=TasksToolsCapability(call=TasksCallCapability())),
            )
            if found.extensions:
                found.extensions = {k: v for k, v in found.extensions.items() if k != extension} or None
        return found

    low.get_capabilities = capabilities  # type: ignore[method-assign]


def connection_of(session: ServerSession) -> object:
    """The object that lives exactly as long as a handshake-era client's connection: the SDK has no
    disconnect hook, so a weak reference to it tells when the connection is gone."""
    return session._connection


def connection_alive(session: ServerSession) -> Callable[[], object | None]:
    """A weak reference to the session's connection (None once the connection is gone)."""
    return weakref.ref(connection_of(session))


def wants_progress(ctx: Context[Any, Any]) -> bool:
    """Whether the caller asked for progress: a JSON-RPC progress token, or an in-process callback.

    Looks at the request's outbound channel; an unknown kind of channel counts as yes (progress to a
    caller that ignores it costs little).
    """
    outbound = getattr(ctx.request_context.session, "_request_outbound", None)
    for attribute in ("_progress_token", "_on_progress"):
        if hasattr(outbound, attribute):
            return getattr(outbound, attribute) is not None
    return True


def event_store_per_session(manager: StreamableHTTPSessionManager, make: Callable[[str], EventStore]) -> None:
    """Give each stateful HTTP session the event store `make(session id)`. The SDK hands every session the
    one store it was given, and names streams by request ids that every session reuses: with one store,
    a client resuming its stream could be replayed another session's events."""
    admit = manager._admit_session

    def admit_with_store(requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = admit(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            transport._event_store = make(transport.mcp_session_id)
        return transport

    manager._admit_session = admit_with_store  # type: ignore[method-assign]
