"""The issuer: system of record for keys. Owns the key catalog, accounts and the outbox.

Serves the management REST API, answers `keys.cmd.*` requests and applies platform events (accounts,
leaked secrets, plan changes) to the catalog; emits KeyCreated, KeyUpdated, KeyRotated, KeyRevoked,
KeyRenewed, KeyExpired through its transactional outbox.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from shared.client import ValidationClient
from shared.client_address import parse_networks
from shared.crypto import FieldCipher
from shared.db import create_engine
from shared.events import Event
from shared.http import BodySizeLimit, document_transport_errors, install_error_handlers
from shared.messaging import make_broker, make_outbox_relay, readiness_checks, start_broker
from shared.observability import OutboxMetrics, instrument, probes_router
from shared.settings import Settings
from shared.timeutil import Clock, utcnow
from shared.webhook_targets import Resolver, TargetPolicy, system_resolver

from . import api, console, handlers, scanning_api, usage_api
from .ratelimit import ManagementLimiter
from .service import IssuerService
from .store import IssuerStore

log = logging.getLogger("issuer")


def write_secret_file(path: Path, secret: str) -> None:
    """Create the file with mode 0600 before the secret touches it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)


def create_app(
    settings: Settings | None = None,
    *,
    store: IssuerStore | None = None,
    clock: Clock = utcnow,
    freeze_heap: bool = False,
    resolver: Resolver | None = None,
) -> FastAPI:
    """`freeze_heap`: this app is its process's only one (`python -m services.issuer`), so what startup
    loaded (the framework, the models, the driver: most of the heap) leaves the garbage collector's
    sight once started: a full collection walked all of it, 65 ms pauses every few dozen requests.
    `resolver`: the DNS lookup of webhook hosts (tests pass their own)."""
    settings = settings or Settings()
    store = store or IssuerStore(create_engine(settings.database_url("issuer")))
    service = IssuerService(
        store,
        peppers=settings.pepper_values(),
        cipher=FieldCipher(settings.encryption_key_values()),
        default_expiry_days=settings.default_expiry_days,
        rotation_grace=settings.rotation_grace,
        max_keys_per_account=settings.max_keys_per_account,
        clock=clock,
        webhook_targets=TargetPolicy(
            allow_private=settings.allow_private_webhooks, resolver=resolver or system_resolver
        ),
        webhook_secret_overlap=settings.webhook_secret_overlap,
        audit_denials_per_minute=settings.audit_denials_per_minute,
    )
    broker = make_broker(settings, "issuer")
    handlers.register(broker, service)
    handlers.register_platform(broker, service)
    registry = CollectorRegistry()
    relay = make_outbox_relay(store, broker)
    publish_wait = settings.read_your_writes_publish_wait.total_seconds()
    if publish_wait > 0:
        # Read-your-writes: a new key's 201 waits (bounded) until its KeyCreated is in the stream, where
        # every validator looks before answering NOT_FOUND. With NATS away it does not wait: the event is
        # safe in the outbox and the relay sends it on NATS's return.
        async def new_key_committed(events: Sequence[Event]) -> bool:
            return await relay.stored([event.event_id for event in events], publish_wait)

        service.new_key_committed = new_key_committed

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.prepare_schema(migrate=settings.migrate_on_start)
        await start_broker(broker, settings)
        relay.start()
        app.state.validation_client = ValidationClient(
            broker.connection, timeout=settings.validate_timeout.total_seconds()
        )
        if settings.bootstrap_admin_key_file is not None:
            secret = await service.bootstrap_admin(settings.default_account)
            if secret is not None:
                write_secret_file(settings.bootstrap_admin_key_file, secret)
                log.info("bootstrap admin key written to %s", settings.bootstrap_admin_key_file)
        if freeze_heap:
            gc.collect()
            gc.freeze()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await relay.stop()
            # Send what the last requests committed now rather than at the next start (bounded: with
            # NATS down it stays in the outbox, which is just as safe).
            try:
                await asyncio.wait_for(relay.flush(), timeout=5)
            except Exception as exc:
                log.warning("outbox not flushed at shutdown (%s); it goes out at the next start", exc)
            await broker.stop()
            await store.close()

    app = FastAPI(
        title="CloudNexus Keys: management API",
        version="2.0",
        lifespan=lifespan,
        description=(
            "Mint, list, rotate, renew and revoke API keys. Every call needs a Bearer key with admin scopes."
        ),
    )
    app.state.service = service
    app.state.broker = broker
    app.state.validation_client = None
    app.state.ready = False
    app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
    app.state.management_limiter = ManagementLimiter(
        settings.management_rate_limit, settings.management_rate_burst
    )
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(usage_api.router)
    scanning_api.install(app, settings)
    document_transport_errors(app)
    console.install(app, settings)

    registry.register(OutboxMetrics("issuer", relay))
    app.include_router(
        probes_router(registry, readiness_checks(broker, store, lambda: bool(app.state.ready)))
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    instrument(app, registry)
    return app
