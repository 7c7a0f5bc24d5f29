"""The validator: answers "is this key good for this call?" from memory.

Owns a projection of every key (digest -> what validation needs) in its own store; consumes all key
events (its own durable consumer per replica); answers `keys.validate` (queue group `validators`) and
HTTP forward-auth; emits KeyUsed in batches so the issuer can show `last_used_at`; enforces rate
limits with one bucket per key on the replica that owns it (cluster.Cluster) and consumes
`platform.plans.changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from prometheus_client import CollectorRegistry, Gauge, Histogram

from shared.consumer import Consumer
from shared.db import create_engine
from shared.events import STREAM_EVENTS, KeyUsed, encode_event
from shared.messaging import connect_raw, prepare_server, publish_events_raw
from shared.natsauth import ConnectCredentials, tls_context, tls_urls
from shared.observability import LabelledCounts, register_process_metrics
from shared.settings import Settings

from . import handlers
from .cluster import Cluster
from .freshness import NotFoundHold
from .http import ForwardAuthApp, forward_auth_server
from .metrics import EVENT_LAG_BUCKETS, AnswerCounts
from .natswire import WireClient
from .routes import RouteTable
from .service import ValidatorService
from .store import ValidatorStore

log = logging.getLogger("validator")
USAGE_FLUSH_S = 3.0
PRUNE_EVERY_S = 60.0
# Usage NATS did not take, kept for the next flush; beyond this many keys' worth the oldest is dropped.
MAX_UNSENT_USAGE = 100_000
# While catching up with the events stream at start: how often to ask JetStream about the consumer, and
# to say how far along it is.
CATCH_UP_CHECK_S = 1.0
CATCH_UP_REPORT_S = 5.0


def instance_name(settings: Settings) -> str:
    return settings.instance_id or socket.gethostname().replace(".", "-")


def database_url(settings: Settings) -> str:
    if settings.validator_database_url or not settings.instance_id:
        return settings.database_url("validator")
    # Several replicas on one machine each need a store of their own.
    return f"sqlite+aiosqlite:///{settings.data_dir / f'validator-{settings.instance_id}.db'}"


class ValidatorRuntime:
    """The composition root: nothing connects until `start()`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: ValidatorStore | None = None,
        clock: Callable[[], float] = time.time,
        freeze_heap: bool = False,
    ) -> None:
        """`freeze_heap`: this runtime is its process's only one (`python -m services.validator`), so the
        hydrated projection may leave the garbage collector's sight for good (see `ValidatorService`)."""
        self.settings = settings or Settings()
        self.store = store or ValidatorStore(create_engine(database_url(self.settings)))
        self.service = ValidatorService(
            self.store,
            peppers=self.settings.pepper_values(),
            clock=clock,
            failed_auth_per_minute=self.settings.failed_auth_per_minute,
            required_environment=self.settings.validator_environment or None,
            freeze_heap=freeze_heap,
            retention=self.settings.projection_retention.total_seconds(),
        )
        # Parsed here so a bad CNX_ROUTE_SCOPES stops the service at start, naming the entry.
        self.routes = RouteTable(self.settings.route_scopes)
        # The lean connection for `keys.validate` (cluster.py says why); it connects in start().
        # Every server of CNX_NATS_URL (and those the cluster advertises); the credentials, the URL's
        # included, go to each of them.
        self.wire = WireClient(
            tls_urls(self.settings),
            name=f"cnx-validator-{instance_name(self.settings)}-validate",
            connect_timeout=self.settings.nats_connect_timeout.total_seconds(),
            ping_interval=self.settings.nats_ping_interval.total_seconds(),
            credentials=ConnectCredentials.from_settings(self.settings),
            ssl_context=tls_context(self.settings),
            tls=self.settings.nats_tls,
            tls_first=self.settings.nats_tls_first,
        )
        self.cluster = Cluster(
            None,
            self.service,
            instance_name(self.settings),
            wire=self.wire,
            heartbeat=self.settings.validator_heartbeat.total_seconds(),
            forward_timeout=min(1.0, self.settings.validate_timeout.total_seconds()),
        )
        self.events: Consumer | None = None
        self.durable = f"validator-{instance_name(self.settings)}"
        # Read-your-writes: a NOT_FOUND waits until this replica has applied the stream up to the request.
        self.hold = NotFoundHold(
            self._consumer_position,
            lambda: self.service.last_seq,
            wait=self.settings.read_your_writes_wait.total_seconds(),
            max_held=self.settings.read_your_writes_max_held,
        )
        if self.hold.enabled:
            self.cluster.hold = self.hold
            self.service.on_applied = self.hold.advanced
        self.registry = CollectorRegistry()
        Gauge("cnx_validator_keys", "Keys held in memory", registry=self.registry).set_function(
            lambda: len(self.service.projection)
        )
        Gauge(
            "cnx_validator_last_stream_seq", "Last event sequence applied", registry=self.registry
        ).set_function(lambda: self.service.last_seq)
        self.started = False
        Gauge(
            "cnx_validator_rate_limit_buckets", "Key buckets held by this replica", registry=self.registry
        ).set_function(lambda: len(self.service.limiter))
        Gauge(
            "cnx_validator_replicas", "Validator replicas this one sees", registry=self.registry
        ).set_function(lambda: len(self.cluster.ownership.members))
        self.registry.register(
            LabelledCounts(
                "cnx_validator_forwarded",
                "Requests passed on to the owner replica of their key",
                (),
                lambda: {(): self.cluster.forwarded},
            )
        )
        self.registry.register(
            LabelledCounts(
                "cnx_validator_validate_reconnects",
                "Times the lean keys.validate connection to NATS was re-made",
                (),
                lambda: {(): self.wire.reconnects},
            )
        )
        Gauge(
            "cnx_validator_throttled_addresses",
            "Client addresses with recent failed validations",
            registry=self.registry,
        ).set_function(lambda: len(self.service.throttle.addresses))
        self.registry.register(AnswerCounts(self.cluster.answers))
        Gauge(
            "cnx_validator_read_your_writes_held",
            "NOT_FOUND answers held until this replica has caught up with the events stream",
            registry=self.registry,
        ).set_function(lambda: len(self.hold))
        self.registry.register(
            LabelledCounts(
                "cnx_validator_read_your_writes_rounds",
                "Times this replica asked JetStream how far its consumer is, for held NOT_FOUND answers",
                (),
                lambda: {(): self.hold.rounds},
            )
        )
        self.registry.register(
            LabelledCounts(
                "cnx_validator_read_your_writes_timeouts",
                "Held NOT_FOUND answers given when their wait ran out, not after a complete catch-up",
                (),
                lambda: {(): self.hold.timed_out},
            )
        )
        self.event_lag = Histogram(
            "cnx_validator_event_lag_seconds",
            "From a key event's arrival in JetStream to its use by this replica",
            buckets=EVENT_LAG_BUCKETS,
            registry=self.registry,
        )
        register_process_metrics(self.registry)
        self.forward_auth = ForwardAuthApp(
            self.cluster.validate,
            self.registry,
            trusted_proxies=self.settings.trusted_proxies,
            ready=self.ready,
            routes=self.routes,
            proxy=self.settings.forward_auth_proxy,
            validate_now=self.cluster.validate_now,
        )
        # Request count and latency by route and status: integers on the request path, a collector at
        # scrape time (shared/httpmetrics.py). `respond` is what the server answers without ASGI.
        self.app, self.respond = forward_auth_server(self.forward_auth, self.registry)
        self._nc: NatsClient | None = None
        self._usage_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._unsent: list[KeyUsed] = []
        self._stopped = False

    def ready(self) -> bool:
        return bool(
            self.started
            and self.service.hydrated
            and self._nc is not None
            and self._nc.is_connected
            and self.wire.connected
        )

    async def start(self) -> None:
        """Hydrate from the store, catch up with the events stream, then answer: `keys.validate` and
        readiness only once this replica knows every key event up to where the stream stood at start."""
        await self.store.prepare_schema(migrate=self.settings.migrate_on_start)
        count = await self.service.hydrate()
        log.info(
            "hydrated %d keys from the store, resuming events after sequence %d", count, self.service.last_seq
        )
        # Hydration read no key past its retention; the store may still hold some (written before the
        # retention passed, or before pruning existed): deleted in the background, batch by batch.
        self._prune_task = asyncio.create_task(self._prune(), name="projection-prune")
        self._nc = await connect_raw(
            self.settings, f"cnx-validator-{instance_name(self.settings)}", identity="validator"
        )
        await prepare_server(self._nc, self.settings)
        await handlers.reset_consumer(self._nc, self.durable)
        self.events = handlers.events_consumer(self.service, self.durable, self._observe_lag)
        await self.events.start(self._nc)
        await self._catch_up(self._nc)
        self.cluster.nc = self._nc
        await self.wire.start()
        await self.cluster.start()
        self._usage_task = asyncio.create_task(self._flush_usage_forever(), name="usage-flush")
        self.started = True

    async def _consumer_position(self) -> tuple[int, bool]:
        """For read-your-writes (freshness.py): the last stream sequence delivered to this replica's
        consumer, and whether nothing more is waiting for it. One JetStream API request."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise ConnectionError("NATS is not connected")
        info = await nc.jetstream().consumer_info(
            STREAM_EVENTS, self.durable, timeout=max(0.05, self.hold.wait)
        )
        return info.delivered.stream_seq or 0, not info.num_pending

    def _observe_lag(self, seconds: float) -> None:
        # Not while catching up at start: a replayed event is as old as the stream, and the replica
        # is not ready (nor answering) then anyway.
        if self.started:
            self.event_lag.observe(seconds)

    async def _catch_up(self, nc: NatsClient) -> None:
        """Wait until the events up to the stream's last sequence at this moment are applied. A replica
        behind the stream would answer from an old picture: VALID for a key revoked since its store was
        written, NOT_FOUND for one created since (a new replica starts with an empty store and replays
        everything)."""
        js = nc.jetstream()
        target = (await js.stream_info(STREAM_EVENTS)).state.last_seq
        service = self.service
        began = time.monotonic()
        checked = reported = began
        while service.last_seq < target:
            now = time.monotonic()
            if now - checked >= CATCH_UP_CHECK_S:
                checked = now
                try:
                    info = await js.consumer_info(STREAM_EVENTS, self.durable)
                except Exception as exc:  # a NATS blip while catching up: the consumer goes on by itself
                    log.warning("catching up: consumer info unavailable (%s)", type(exc).__name__)
                else:
                    if not info.num_pending and not info.num_ack_pending:
                        break  # nothing more is coming: the stream's tail was removed (limits, purge)
            if now - reported >= CATCH_UP_REPORT_S:
                reported = now
                log.info("catching up with key events: at sequence %d of %d", service.last_seq, target)
            await asyncio.sleep(0.02)  # polled: the consumer's batches advance last_seq
        if target:
            log.info(
                "caught up with key events to sequence %d in %.1f s (%d keys)",
                service.last_seq,
                time.monotonic() - began,
                len(service.projection),
            )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.started = False
        if self._nc is not None:
            await self.cluster.stop()
        # Held NOT_FOUNDs are answered while the lean connection can still carry them.
        await self.hold.stop()
        if self._nc is not None:
            await self.wire.close()
        if self.events is not None:
            await self.events.stop()
        for task in (self._usage_task, self._prune_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush_usage()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        await self.store.close()

    async def flush_usage(self) -> None:
        """Publish the usage since the last flush, one KeyUsed per key. What NATS did not take (down,
        no ack) is kept for the next flush, with the same event ids: a re-send of one that did land is
        dropped by the server's duplicate window, and the issuer adds each event's count once."""
        events = self._unsent + self.service.take_usage()
        self._unsent = []
        if not events:
            return
        if self._nc is None or not self._nc.is_connected:
            self._keep_unsent(events)
            return
        # Together, their acks awaited at once: a busy replica has thousands of keys' usage every flush.
        outcomes = await publish_events_raw(
            self._nc.jetstream(), [(e.subject, encode_event(e), e.event_id) for e in events]
        )
        failed = [event for event, outcome in zip(events, outcomes, strict=True) if outcome is not None]
        if failed:
            log.warning(
                "could not publish the usage of %d of %d keys; kept for the next flush",
                len(failed),
                len(events),
            )
            self._keep_unsent(failed)

    def _keep_unsent(self, events: list[KeyUsed]) -> None:
        if len(events) > MAX_UNSENT_USAGE:
            # NATS has been away for long: the oldest usage goes first (last-used is about the newest).
            log.warning(
                "dropping the usage of %d keys: NATS has not taken it", len(events) - MAX_UNSENT_USAGE
            )
            events = events[-MAX_UNSENT_USAGE:]
        self._unsent = events

    async def _flush_usage_forever(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await self.flush_usage()
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                last_prune = time.monotonic()
                now = self.service.clock()
                self.service.limiter.prune(now)
                self.service.throttle.prune(now)
                # Right after a flush: few rows have usage waiting, which a prune must leave for now.
                await self._prune()

    async def _prune(self) -> None:
        """Revoked and expired keys past CNX_PROJECTION_RETENTION out of memory and store."""
        started = time.monotonic()
        try:
            removed = await self.service.prune()
        except Exception:
            # The store away for a moment: the next prune does it; memory was pruned first anyway.
            log.exception("pruning keys past their retention failed")
            return
        if removed:
            log.info(
                "pruned %d keys past their retention in %.2f s (%d keys held)",
                removed,
                time.monotonic() - started,
                len(self.service.projection),
            )
