"""Byte streams between a sandbox and the server: how a CLI in the sandbox reaches the model proxy, and how
its stdin and stdout reach its agent.

A sandbox whose driver serves streams into it (`serve_inside(port, handler)`, started in a task group:
a listener on the sandbox's own loopback, each connection a stream in the server) is used as it is. A sandbox that shares the server's
own network (the local driver without bubblewrap) is served by a listener on the server's loopback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup

from sandbox_backends.base import Sandbox, SandboxError

log = logging.getLogger(__name__)

Handler = Callable[[ByteStream], Awaitable[None]]


async def serve(sandbox: Sandbox, handler: Handler, tg: TaskGroup) -> str:
    """Serve `handler` for connections made inside `sandbox`; the "HOST:PORT" they connect to there.
    Raises SandboxError if the sandbox cannot reach the server."""
    serve_inside = getattr(sandbox, "serve_inside", None)
    if serve_inside is not None:
        return str(await tg.start(serve_inside, 0, guarded(handler)))
    if not str(sandbox.describe().get("network", "")).startswith("host"):
        raise SandboxError(
            "The CLI in this sandbox cannot reach the server: its driver carries no streams into it and it has no "
            "network of the server's. Use the docker driver, or the local driver without isolation."
        )
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    tg.start_soon(listener.serve, guarded(handler))
    return f"127.0.0.1:{listener.extra(SocketAttribute.local_port)}"


def guarded(handler: Handler) -> Handler:
    """`handler`, its failures logged rather than taking down whatever serves it."""

    async def run(stream: ByteStream) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("a stream from a sandbox failed")

    return run
