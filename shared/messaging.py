"""NATS wiring every service shares: broker, JetStream streams, publishing, and the HTTP server runner.

Streams are declared idempotently by whichever service starts first. The events stream keeps every
event (no MaxAge) so a new consumer can rebuild its state from the beginning; the schedules stream
uses Limits retention with no MaxAge, because a MaxAge shorter than a key's lifetime would silently
delete the schedules in it, and it allows message schedules (nats-server 2.12.15+).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

import nats
import uvicorn
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.events import (
    DEAD_LETTER_PREFIX,
    EVENTS_SUBJECTS,
    SCHEDULE_SUBJECTS,
    STREAM_EVENTS,
    STREAM_SCHEDULES,
    Event,
    encode_event,
)
from shared.platform import PLATFORM_SUBJECTS, STREAM_PLATFORM
from shared.settings import Settings

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 12, 15)
STREAM_DEAD_LETTERS = "KEYS_DEAD_LETTERS"
DUPLICATE_WINDOW_S = 120.0


class NatsServerTooOld(RuntimeError):
    pass


def stream_configs() -> list[StreamConfig]:
    return [
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


async def ensure_streams(js: JetStreamContext, configs: Iterable[StreamConfig] | None = None) -> None:
    for config in configs or stream_configs():
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config=config)
        else:
            await js.update_stream(config=config)


def check_version(nc: NatsClient, url: str) -> None:
    version = nc.connected_server_version
    found = (version.major, version.minor, version.patch)
    if found < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        raise NatsServerTooOld(
            f"nats-server {'.'.join(map(str, found))} at {url} is older than {wanted}, "
            "which JetStream message schedules need"
        )


def make_broker(settings: Settings, service: str) -> NatsBroker:
    return NatsBroker(
        settings.nats_url,
        name=f"cnx-{service}",
        connect_timeout=settings.nats_connect_timeout.total_seconds(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        log_level=logging.DEBUG,
    )


async def connect_broker(broker: NatsBroker, settings: Settings) -> None:
    """Connect, refuse a server too old for schedules, declare the streams."""
    await broker.connect()
    check_version(broker.connection, settings.nats_url)
    await ensure_streams(broker.connection.jetstream())


async def start_broker(broker: NatsBroker, settings: Settings) -> None:
    await connect_broker(broker, settings)
    await broker.start()


async def connect_raw(settings: Settings, name: str) -> NatsClient:
    """A plain nats-py connection, for paths where FastStream's per-message cost matters."""
    return await nats.connect(
        settings.nats_url,
        name=name,
        connect_timeout=settings.nats_connect_timeout.total_seconds(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )


async def publish_event(js: JetStreamContext, event: Event) -> None:
    """Publish with Nats-Msg-Id = event_id, so a re-send inside the window is dropped by the server."""
    await js.publish(
        event.subject, encode_event(event), stream=STREAM_EVENTS, headers={"Nats-Msg-Id": event.event_id}
    )


async def publish_event_raw(js: JetStreamContext, subject: str, payload: bytes, msg_id: str) -> None:
    await js.publish(subject, payload, stream=STREAM_EVENTS, headers={"Nats-Msg-Id": msg_id})


async def serve_http(app: object, settings: Settings, port: int) -> None:
    """Run uvicorn until SIGTERM/SIGINT; uvicorn stops accepting, finishes requests, runs lifespan."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve()
