"""Byte streams between a sandbox and the server: how a CLI in the sandbox reaches the model proxy, and how
its stdin and stdout reach its agent. Through the driver's own channel (`OpensStreams.serve_inside`: a
listener on the sandbox's loopback, each connection a stream in the server), so the sandbox needs no
network and no host socket.
"""

from __future__ import annotations

import logging

from anyio.abc import ByteStream, TaskGroup

from sandbox_backends.base import OpensStreams, Sandbox, SandboxError, StreamHandler

log = logging.getLogger(__name__)


async def serve(sandbox: Sandbox, handler: StreamHandler, tg: TaskGroup) -> str:
    """Serve `handler` in `tg` for connections made inside `sandbox`; the "HOST:PORT" they connect to there.
    Raises SandboxError if its driver carries no streams."""
    if not isinstance(sandbox, OpensStreams):
        raise SandboxError(
            "This sandbox's driver carries no byte streams into it (serve_inside), which a CLI agent needs to reach "
            "the server: use the docker or the local driver."
        )
    return str(await tg.start(sandbox.serve_inside, 0, guarded(handler)))


def guarded(handler: StreamHandler) -> StreamHandler:
    """`handler`, its failures logged rather than taking down whatever serves it."""

    async def run(stream: ByteStream) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("a stream from a sandbox failed")

    return run
