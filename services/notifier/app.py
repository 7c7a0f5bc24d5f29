"""The notifier: owns the delivery log of notices (notification addresses stay sealed in the events).

Consumes KeyExpiring, KeyExpired, KeyRotated and KeyRevoked (a revocation that ends a rotation's grace
period is the "grace period ended" notice); sends emails (aiosmtplib) and Standard-Webhooks-signed
POSTs (httpx), exactly one per (key, purpose, expiry) and channel, retrying temporary failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from shared.crypto import FieldCipher
from shared.db import create_engine
from shared.messaging import make_broker, readiness_checks, start_broker
from shared.observability import LabelledCounts, instrument, probes_router
from shared.settings import Settings
from shared.timeutil import Clock, utcnow
from shared.webhook_targets import Resolver, TargetPolicy, system_resolver

from . import domain, handlers
from .adapters import HttpWebhookSender, IssuerSecrets, SmtpMailer
from .service import NotifierService
from .store import NotifierStore


def create_app(
    settings: Settings | None = None,
    *,
    store: NotifierStore | None = None,
    clock: Clock = utcnow,
    retry_policy: domain.RetryPolicy | None = None,
    resolver: Resolver | None = None,
) -> FastAPI:
    settings = settings or Settings()
    store = store or NotifierStore(create_engine(settings.database_url("notifier")))
    broker = make_broker(settings, "notifier")
    cipher = FieldCipher(settings.encryption_key_values())
    webhooks = HttpWebhookSender(
        TargetPolicy(allow_private=settings.allow_private_webhooks, resolver=resolver or system_resolver),
        timeout=settings.webhook_timeout.total_seconds(),
        proxy=settings.webhook_proxy,
    )
    service = NotifierService(
        store,
        cipher=cipher,
        mailer=SmtpMailer(settings.smtp_host, settings.smtp_port),
        webhooks=webhooks,
        secrets=IssuerSecrets(lambda: broker.connection, cipher),
        sender=settings.smtp_from,
        policy=retry_policy,
        clock=clock,
    )
    handlers.register(broker, service)
    registry = CollectorRegistry()
    registry.register(
        LabelledCounts(
            "cnx_notifier_attempts",
            "Delivery attempts by channel (email, webhook) and how they ended (delivered, retry, failed)",
            ("channel", "outcome"),
            lambda: service.outcomes,
            every=[
                (c, o)
                for c in (domain.EMAIL, domain.WEBHOOK)
                for o in (domain.DELIVERED, domain.RETRY, domain.FAILED)
            ],
        )
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.prepare_schema(migrate=settings.migrate_on_start)
        await start_broker(broker, settings)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await broker.stop()
            await webhooks.close()
            await store.close()

    app = FastAPI(title="CloudNexus Keys: notifier", lifespan=lifespan)
    app.state.service = service
    app.state.broker = broker
    app.state.ready = False
    app.include_router(
        probes_router(registry, readiness_checks(broker, store, lambda: bool(app.state.ready)))
    )
    instrument(app, registry)
    return app
