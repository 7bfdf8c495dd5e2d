"""The local driver's byte streams: the host's own loopback, since a local sandbox shares its network.

A plain local sandbox's processes run on the server's machine with its network, so a port "inside" is
127.0.0.1:port of the host and a connection is made directly, with no relay. Under bubblewrap the
sandbox has a network namespace of its own (only `lo`), which the server cannot reach: there the
streams are refused with a clear error rather than silently reaching the host's port of that number.
"""

from __future__ import annotations

import anyio
import anyio.abc

from .base import PortClosed, SandboxError, SandboxNotFound, StreamHandler
from .control.streams import handle_stream


class LoopbackStreams:
    """Connections to and listeners on the host's 127.0.0.1 for one local sandbox, ended with it."""

    def __init__(self, name: str, isolation: str) -> None:
        self._name = name
        self._isolation = isolation
        self._scopes: set[anyio.CancelScope] = set()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise SandboxNotFound(f"The sandbox {self._name} is closed.")
        if self._isolation == "bwrap":
            raise SandboxError(
                "A local sandbox with isolation='bwrap' has a network of its own that the server cannot reach; "
                "connections to and from its ports need isolation='plain' or the docker driver."
            )

    async def connect(self, port: int) -> anyio.abc.ByteStream:
        self._check()
        try:
            return await anyio.connect_tcp("127.0.0.1", port)
        except ConnectionRefusedError:
            raise PortClosed(f"Nothing listens on port {port} in the sandbox {self._name}.") from None
        except OSError as e:
            raise SandboxError(f"Cannot connect to port {port} in the sandbox {self._name}: {e.strerror or e}.") from None

    async def serve(
        self, port: int, handler: StreamHandler, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._check()
        try:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        except OSError as e:
            raise SandboxError(f"Cannot listen on port {port} in the sandbox {self._name}: {e.strerror or e}.") from None
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with listener:
                    task_status.started(f"127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}")
                    await listener.serve(lambda stream: handle_stream(handler, stream))
            finally:
                self._scopes.discard(scope)

    def close(self) -> None:
        """Stop every listener (and the connections they accepted): the sandbox is closed."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
