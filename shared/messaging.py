"""NATS wiring every service shares: broker, JetStream streams, publishing (the HTTP server: httpserver.py).

Streams are declared idempotently by whichever service starts first. The events stream keeps every
event (no MaxAge) so a new consumer can rebuild its state from the beginning; the schedules stream
uses Limits retention with no MaxAge, because a MaxAge shorter than a key's lifetime would silently
delete the schedules in it, and it allows message schedules (nats-server 2.12.15+).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypedDict

import nats
import nats.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from shared.db import StoreBase
from shared.events import (
    DEAD_LETTER_PREFIX,
    EVENTS_SUBJECTS,
    SCHEDULE_SUBJECTS,
    STREAM_EVENTS,
    STREAM_SCHEDULES,
)
from shared.jetstream_publish import publish_together
from shared.natsauth import broker_options, connect_options
from shared.natsserver import MINIMUM_SERVER_VERSION, NatsServerTooOld
from shared.observability import ReadinessCheck
from shared.outbox import CommitNotifyingOutboxStore, OutboxRelay
from shared.platform import PLATFORM_SUBJECTS, STREAM_PLATFORM
from shared.settings import Settings

log = logging.getLogger(__name__)

STREAM_DEAD_LETTERS = "KEYS_DEAD_LETTERS"
DUPLICATE_WINDOW_S = 120.0


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    """The streams, each with `replicas` copies (CNX_STREAM_REPLICAS); durable consumers leave their own
    replicas unset, so they have as many as their stream."""
    configs = [
        StreamConfig(
            name=STREAM_DEAD_LETTERS,
            subjects=[f"{DEAD_LETTER_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=30 * 86400.0,
        ),
        StreamConfig(
            name=STREAM_PLATFORM,
            subjects=list(PLATFORM_SUBJECTS),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        StreamConfig(
            name=STREAM_EVENTS,
            subjects=[EVENTS_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        StreamConfig(
            name=STREAM_SCHEDULES,
            subjects=list(SCHEDULE_SUBJECTS),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            allow_msg_schedules=True,
        ),
    ]
    for config in configs:
        config.num_replicas = replicas
    return configs


class StreamSetupError(RuntimeError):
    """JetStream refused a stream as configured (for example more replicas than the cluster has)."""


async def ensure_streams(
    js: JetStreamContext, configs: Iterable[StreamConfig] | None = None, *, replicas: int = 1
) -> None:
    """Create the streams, or bring existing ones to our config; replicas only ever go up: a stream an
    operator scaled to R3 by hand stays R3 when a service configured for fewer starts."""
    for config in configs or stream_configs(replicas):
        if config.name is None:
            raise ValueError("a stream config without a name")
        wanted = config.num_replicas or 1
        try:
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config=config)
                continue
            current = info.config.num_replicas or 1
            config = dataclasses.replace(config, num_replicas=max(current, wanted))
            if config.num_replicas != current:
                log.info("stream %s: %d replicas -> %d", config.name, current, config.num_replicas)
            await js.update_stream(config=config)
        except APIError as exc:
            raise StreamSetupError(
                f"JetStream refused stream {config.name} with {config.num_replicas} replicas "
                f"(CNX_STREAM_REPLICAS): {exc.description or exc}"
            ) from None


def check_version(nc: NatsClient, url: str) -> None:
    version = nc.connected_server_version
    found = (version.major, version.minor, version.patch)
    if found < MINIMUM_SERVER_VERSION:
        raise NatsServerTooOld(url, ".".join(map(str, found)), MINIMUM_SERVER_VERSION)


class ConnectionCallbacks(TypedDict):
    """The keyword arguments of `nats.connect` (and NatsBroker) that ConnectionEvents fills."""

    disconnected_cb: Callable[[], Awaitable[None]]
    reconnected_cb: Callable[[], Awaitable[None]]
    error_cb: Callable[[Exception], Awaitable[None]]


class ConnectionEvents:
    """nats-py's connection callbacks, logged once per outage: the error that broke the connection, each
    kind of failed reconnect attempt once, and "back after N s" when it returns (a clean close says
    nothing). Without them nats-py logs every failed reconnect attempt (two a second) as an ERROR with a
    traceback."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lost_at: float | None = None
        self._errors_seen: set[str] = set()

    async def disconnected(self) -> None:
        if self.lost_at is None:
            self.lost_at = time.monotonic()

    async def reconnected(self) -> None:
        if self.lost_at is not None:
            log.warning("NATS connection %s back after %.1f s", self.name, time.monotonic() - self.lost_at)
        self.lost_at = None
        self._errors_seen.clear()

    async def error(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if self.lost_at is not None and isinstance(exc, (OSError, nats.errors.Error)):
            # A failed reconnect attempt: said once per kind per outage.
            if kind in self._errors_seen:
                return
            self._errors_seen.add(kind)
        log.warning("NATS connection %s: %s: %s", self.name, kind, exc)

    def callbacks(self) -> ConnectionCallbacks:
        return {
            "disconnected_cb": self.disconnected,
            "reconnected_cb": self.reconnected,
            "error_cb": self.error,
        }


class _IdentityBroker(NatsBroker):
    """A NatsBroker whose JetStream subscribers fetch into the connection's own inbox prefix: FastStream
    gives each pull subscriber `_INBOX.` unless told otherwise, which the service's NATS identity may
    not subscribe to (shared/natsidentities.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriber_inbox = f"{kwargs.get('inbox_prefix', '_INBOX')}.".encode()

    def subscriber(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("inbox_prefix", self._subscriber_inbox)
        return super().subscriber(*args, **kwargs)


def make_broker(settings: Settings, service: str) -> NatsBroker:
    """A broker on every server of CNX_NATS_URL and those the cluster advertises, in random order,
    reconnecting without end to whichever is alive."""
    return _IdentityBroker(
        **broker_options(settings, identity=service),
        name=f"cnx-{service}",
        connect_timeout=settings.nats_connect_timeout.total_seconds(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        log_level=logging.DEBUG,
        **ConnectionEvents(f"cnx-{service}").callbacks(),
    )


async def prepare_server(nc: NatsClient, settings: Settings) -> None:
    """What every service does on connecting: refuse a server too old for schedules, declare the streams
    (whichever service comes up first on a new server) with CNX_STREAM_REPLICAS copies at least."""
    url = nc.connected_url.netloc.rsplit("@", 1)[-1] if nc.connected_url else ",".join(settings.nats_servers)
    check_version(nc, url)
    await ensure_streams(nc.jetstream(), replicas=settings.stream_replicas)


async def connect_broker(broker: NatsBroker, settings: Settings) -> None:
    await broker.connect()
    await prepare_server(broker.connection, settings)


async def start_broker(broker: NatsBroker, settings: Settings) -> None:
    await connect_broker(broker, settings)
    await broker.start()


async def connect_raw(settings: Settings, name: str, *, identity: str | None = None) -> NatsClient:
    """A plain nats-py connection, for paths where FastStream's per-message cost matters. `identity`:
    the service it belongs to (None for a platform service, such as the demo API)."""
    return await nats.connect(
        **connect_options(settings, identity=identity),
        name=name,
        connect_timeout=settings.nats_connect_timeout.total_seconds(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        **ConnectionEvents(name).callbacks(),
    )


def broker_connected(broker: NatsBroker) -> bool:
    return broker._connection is not None and broker.connection.is_connected


def readiness_checks(
    broker: NatsBroker, store: StoreBase, started: Callable[[], bool]
) -> dict[str, ReadinessCheck]:
    """What `/readyz` asks of every service: NATS connected, its store reachable, start-up finished."""
    return {"nats": lambda: broker_connected(broker), "store": store.ping, "started": started}


async def publish_events_raw(
    js: JetStreamContext, events: Sequence[tuple[str, bytes, str]], *, timeout: float = 5.0
) -> list[BaseException | None]:
    """Publish (subject, payload, msg id) events to the events stream together (see publish_together);
    the msg id lets the server drop a re-send inside its duplicate window."""
    messages = [(subject, payload, {"Nats-Msg-Id": msg_id}) for subject, payload, msg_id in events]
    return await publish_together(js, STREAM_EVENTS, messages, timeout=timeout)


def make_outbox_relay(store: CommitNotifyingOutboxStore, broker: NatsBroker) -> OutboxRelay:
    """A relay publishing the store's outbox on the broker's connection; the store wakes it on commit.
    Start it once the broker is connected."""
    contexts: dict[int, JetStreamContext] = {}

    async def publish(events: Sequence[tuple[str, bytes, str]]) -> Sequence[BaseException | None]:
        # One JetStream context per connection (its async-publish inbox is one subscription), not one
        # per batch.
        nc = broker.connection
        if not nc.is_connected:
            # While NATS is away nats-py would buffer the publishes and each round would wait out the
            # acks' timeout (5 s): fail at once, the relay retries (and keeps the events) meanwhile.
            raise ConnectionError("NATS is not connected")
        js = contexts.get(id(nc))
        if js is None:
            contexts.clear()
            js = contexts[id(nc)] = nc.jetstream()
        return await publish_events_raw(js, events)

    relay = OutboxRelay(store, publish)
    store.on_commit = relay.wake
    return relay
