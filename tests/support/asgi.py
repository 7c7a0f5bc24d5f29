"""An ASGI app served by a real uvicorn on 127.0.0.1, inside the test's own event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import uvicorn

from shared.httpserver import GracefulServer, HttpLimits, Responder, server_config
from shared.natsserver import free_port


@asynccontextmanager
async def served(
    app: Any,
    port: int | None = None,
    *,
    lifespan: Literal["on", "off", "auto"] = "on",
    timeout: float = 10.0,
    respond: Responder | None = None,
    **config: Any,
) -> AsyncIterator[str]:
    """Serve `app` on `port` (a free one if None) until the block ends; yields its base URL. `config`:
    more uvicorn.Config options (ssl_certfile, ssl_keyfile: the URL is then https). With `respond`, on
    the services' own bounded server (shared/httpserver.py) with that responder, as the validator runs
    its port (`served(runtime.app, respond=runtime.respond)`)."""
    port = port or free_port()
    server: uvicorn.Server
    if respond is not None:
        server = GracefulServer(
            server_config(app, HttpLimits(), host="127.0.0.1", port=port, respond=respond)
        )
    else:
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_config=None,
                access_log=False,
                lifespan=lifespan,
                **config,
            )
        )
    # Keep the test runner's own signal handling: this server is stopped by should_exit.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + timeout
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it (a port in use, a bad certificate)
            raise AssertionError("uvicorn returned before it started")
        if time.monotonic() > deadline:
            task.cancel()
            raise AssertionError(f"uvicorn did not start on port {port} within {timeout}s")
        await asyncio.sleep(0.02)  # poll interval, bounded by the deadline
    try:
        yield f"{'https' if 'ssl_certfile' in config else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
