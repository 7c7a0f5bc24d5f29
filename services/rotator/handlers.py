"""NATS entrypoints of the rotator: key events in, fired schedules in. Thin: parse, one use case.

Both are durable pull consumers, so every replica of the rotator shares the same work. An exception
is not swallowed: the message is nak'ed and redelivered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage

from shared.events import STREAM_EVENTS, STREAM_SCHEDULES, KeyEvent, parse_event

from . import domain
from .service import CONSUMED, Fired, RotatorService

log = logging.getLogger("rotator")

KEY_EVENT_SUBJECTS = [
    "keys.events.key.created",
    "keys.events.key.updated",
    "keys.events.key.rotated",
    "keys.events.key.renewed",
    "keys.events.key.revoked",
    "keys.events.key.expired",
]


def register(
    broker: NatsBroker,
    service: RotatorService,
    *,
    forget_fired: Callable[[int], Awaitable[None]],
    observe_fired: Callable[[str, str, float], None] = lambda purpose, action, lateness: None,
) -> None:
    @broker.subscriber(
        "keys.events.key.*",
        stream=JStream(STREAM_EVENTS, declare=False),
        durable="rotator",
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(filter_subjects=KEY_EVENT_SUBJECTS, ack_wait=30),
        pull_sub=PullSub(batch_size=50, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def key_events(body: dict[str, Any]) -> None:
        """Key lifecycle events: recompute the key's schedules (create, replace, cancel)."""
        event = parse_event(body)
        if isinstance(event, KeyEvent) and event.type in CONSUMED:
            await service.on_key_event(event)

    @broker.subscriber(
        f"{domain.FIRED_SUBJECT_PREFIX}.>",
        stream=JStream(STREAM_SCHEDULES, declare=False),
        durable="rotator-fired",
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(ack_wait=30),
        pull_sub=PullSub(batch_size=50, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def fired(body: dict[str, Any], msg: NatsMessage) -> None:
        """A schedule fired: re-check the key and end a grace, record an expiry, send a notice or renew."""
        parsed = Fired.decode(body)
        decision = await service.on_fired(parsed)
        if decision.action == domain.EARLY:
            await msg.nack(delay=decision.delay_s)
            return
        lateness = (service.clock() - parsed.due).total_seconds()
        observe_fired(parsed.purpose.split("-")[0], decision.action, lateness)
        await msg.ack()
        with contextlib.suppress(Exception):
            await forget_fired(msg.raw_message.metadata.sequence.stream)
