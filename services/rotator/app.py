"""The rotator: owns the lifecycle schedule state of every key (rotations in grace, the notice plan,
auto-renew) and turns it into NATS JetStream message schedules, one subject per (key, purpose).

Consumes key events (durable `rotator`) and fired schedules (durable `rotator-fired`); emits
KeyExpiring and GraceEnded through its own outbox; asks the issuer to end a grace (`keys.cmd.end_grace`),
record an expiry (`keys.cmd.expire`) or auto-renew (`keys.cmd.renew`). No loop scans the key table:
every time-based trigger is a schedule held by NATS, so it survives any restart of this service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.db import create_engine
from shared.messaging import connect_broker, make_broker, make_outbox_relay, readiness_checks
from shared.observability import LabelledCounts, OutboxMetrics, instrument, probes_router
from shared.settings import Settings
from shared.timeutil import Clock, utcnow

from . import handlers
from .adapters import NatsCommands, NatsScheduler
from .service import RotatorService
from .store import RotatorStore

log = logging.getLogger("rotator")

TRIM_EVERY_S = 30.0
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


def create_app(
    settings: Settings | None = None, *, store: RotatorStore | None = None, clock: Clock = utcnow
) -> FastAPI:
    settings = settings or Settings()
    store = store or RotatorStore(create_engine(settings.database_url("rotator")))
    broker = make_broker(settings, "rotator")
    scheduler = NatsScheduler(lambda: broker.connection)
    relay = make_outbox_relay(store, broker)
    service = RotatorService(
        store,
        scheduler,
        NatsCommands(lambda: broker.connection),
        notices=settings.expiry_notices,
        clock=clock,
        publish_now=relay.publish_now,
    )
    registry = CollectorRegistry()
    fired_total = Counter(
        "cnx_rotator_fired_total", "Fired schedules handled", ["purpose", "action"], registry=registry
    )
    lateness = Histogram(
        "cnx_rotator_fire_lateness_seconds",
        "Handling time minus due time of a schedule",
        ["purpose"],
        buckets=LATENESS_BUCKETS,
        registry=registry,
    )
    registry.register(
        LabelledCounts(
            "cnx_rotator_schedules",
            "Schedule changes sent to JetStream since start, by change (published, cancelled)",
            ("change",),
            lambda: {("published",): service.published, ("cancelled",): service.cancelled},
        )
    )
    registry.register(OutboxMetrics("rotator", relay))

    # Label children looked up once: at thousands of fired schedules a second, `labels()` showed up.
    counters: dict[tuple[str, str], Counter] = {}
    histograms: dict[str, Histogram] = {}

    def observe(purpose: str, action: str, late: float) -> None:
        counter = counters.get((purpose, action))
        if counter is None:
            counter = counters[(purpose, action)] = fired_total.labels(purpose, action)
        histogram = histograms.get(purpose)
        if histogram is None:
            histogram = histograms[purpose] = lateness.labels(purpose)
        counter.inc()
        histogram.observe(max(late, 0.0))

    consumers = handlers.consumers(service, observe_fired=observe)

    async def trim_fired_forever() -> None:
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            try:
                await scheduler.trim_fired(handlers.FIRED_DURABLE)
            except Exception as exc:  # housekeeping: try again next round
                log.warning("could not trim handled fired schedules: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.prepare_schema(migrate=settings.migrate_on_start)
        await connect_broker(broker, settings)
        relay.start()
        # Finish schedule changes a crash left between our commit and NATS.
        repaired = await service.sync()
        if repaired:
            log.info("pushed %d schedule changes left over from before a restart", repaired)
        await broker.start()
        for consumer in consumers:
            await consumer.start(broker.connection)
        trimmer = asyncio.create_task(trim_fired_forever(), name="trim-fired")
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            trimmer.cancel()
            # Fetch no more; batches in hand get a few seconds, then what they had not acked is
            # redelivered. Prompt under a backlog too: nothing here waits for the backlog.
            await asyncio.gather(*(consumer.stop() for consumer in consumers))
            await broker.stop()
            await relay.stop()
            await store.close()

    app = FastAPI(title="CloudNexus Keys: rotator", lifespan=lifespan)
    app.state.service = service
    app.state.broker = broker
    app.state.ready = False
    app.include_router(
        probes_router(registry, readiness_checks(broker, store, lambda: bool(app.state.ready)))
    )
    instrument(app, registry)
    return app
