"""The rotator: see DESIGN.md. This first slice connects to NATS, declares the streams and serves probes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from shared.messaging import make_broker, start_broker
from shared.observability import probes_router
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    broker = make_broker(settings, "rotator")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_broker(broker, settings)
        try:
            yield
        finally:
            await broker.stop()

    app = FastAPI(title="CloudNexus Keys: rotator", lifespan=lifespan)
    app.include_router(
        probes_router(
            CollectorRegistry(),
            {"nats": lambda: broker._connection is not None and broker.connection.is_connected},
        )
    )
    return app
