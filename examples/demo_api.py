"""The demo protected API: `GET /v2/instances` needs a key with `compute:read`.

It is how a platform service uses CloudNexus Keys: one NATS connection, one `ValidationClient`, and
`require_scope(...)` on each route (which also refuses a request presenting two different keys, 400).
Run with `python -m examples.demo_api` (port 8090).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry

from shared.client import ValidationClient, require_scope
from shared.http import BodySizeLimit, install_error_handlers
from shared.httpserver import serve_http
from shared.messaging import connect_raw
from shared.observability import configure_logging, probes_router
from shared.settings import Settings
from shared.validation import ValidationResult

INSTANCES = [
    {"id": "i-0a1b2c3d", "name": "web-1", "region": "eu-west-1", "state": "running", "size": "c2.medium"},
    {"id": "i-4e5f6a7b", "name": "worker-1", "region": "eu-west-1", "state": "stopped", "size": "c2.large"},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect_raw(settings, "cnx-demo-api")
        app.state.keys_client = ValidationClient(nc, timeout=settings.validate_timeout.total_seconds())
        app.state.nc = nc
        try:
            yield
        finally:
            await nc.drain()

    app = FastAPI(title="CloudNexus demo API", lifespan=lifespan)
    install_error_handlers(app)

    @app.get("/v2/instances")
    async def instances(
        request: Request,
        response: Response,
        key: Annotated[ValidationResult, Depends(require_scope("compute:read"))],
    ) -> dict[str, object]:
        """List instances: any key of any environment holding compute:read."""
        for name, value in getattr(request.state, "rate_limit_headers", {}).items():
            response.headers[name] = value
        return {"data": INSTANCES, "account_id": key.account_id}

    app.include_router(
        probes_router(
            CollectorRegistry(),
            {"nats": lambda: getattr(app.state, "nc", None) is not None and app.state.nc.is_connected},
        )
    )
    # Its routes read no body, but a client may still send one: it is held to the same limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def main() -> None:
    settings = Settings()
    configure_logging("demo-api", settings.log_level)
    asyncio.run(serve_http(create_app(settings), settings, settings.demo_port))


if __name__ == "__main__":
    main()
