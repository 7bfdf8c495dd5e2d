"""Serving an ASGI app for a test: the real uvicorn on 127.0.0.1, in the test's own event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn


@asynccontextmanager
async def serve(app: Any, port: int = 0, lifespan: str = "auto", grace_s: float = 1) -> AsyncIterator[str]:
    """Run `app` until the block ends; yields its base URL. Port 0 takes a free port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=grace_s
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        finally:
            server.should_exit = True


@asynccontextmanager
async def serve_fake(fake: Any) -> AsyncIterator[str]:
    """Serve a fake platform (`fake.app()`), cancelling its background `fake.tasks` when the block ends."""
    async with serve(fake.app()) as url:
        try:
            yield url
        finally:
            for task in fake.tasks.values():
                task.cancel()
