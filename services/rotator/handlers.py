"""NATS entrypoints of the rotator: key events in, fired schedules in. Thin: parse, one use case.

Both are durable pull consumers, so every replica of the rotator shares the same work. Messages come
in batches so that many keys are handled at once (10,000 keys may expire in the same minute): key
events are grouped by key and each key's events applied in order; fired schedules are handled
concurrently. Each message is acked on its own; a failure is not swallowed: that message is nak'ed
and redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg

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
BATCH = 100
# Short, so a message lost client-side (a fetch timing out as it arrives) comes back quickly; handling
# is idempotent, so a redelivery of a slow batch changes nothing.
FIRED_DURABLE = "rotator-fired"
RETRY_DELAY_S = 1.0
ACK_WAIT_S = 10.0


async def _settle(msg: Msg, work: Awaitable[None], what: str) -> None:
    """Run one message's work and ack it, or nak it (logged) so that JetStream redelivers it."""
    try:
        await work
    except Exception:
        log.exception("%s on %s failed; it will be redelivered", what, msg.subject)
        with contextlib.suppress(Exception):
            await msg.nak(delay=RETRY_DELAY_S)
        return
    if not msg._ackd:
        await msg.ack()


def register(
    broker: NatsBroker,
    service: RotatorService,
    *,
    observe_fired: Callable[[str, str, float], None] = lambda purpose, action, lateness: None,
) -> None:
    @broker.subscriber(
        "keys.events.key.*",
        stream=JStream(STREAM_EVENTS, declare=False),
        durable="rotator",
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(filter_subjects=KEY_EVENT_SUBJECTS, ack_wait=ACK_WAIT_S),
        pull_sub=PullSub(batch_size=BATCH, timeout=0.2, batch=True),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def key_events(batch: list[Any], message: NatsMessage) -> None:
        """Key lifecycle events: recompute each key's schedules (create, replace, cancel)."""
        per_key: dict[str, list[Msg]] = {}
        for msg in message.raw_message:  # type: ignore[attr-defined]
            per_key.setdefault(json.loads(msg.data).get("key_id", ""), []).append(msg)

        async def one(msg: Msg) -> None:
            event = parse_event(msg.data)
            if isinstance(event, KeyEvent) and event.type in CONSUMED:
                await service.on_key_event(event)

        async def in_order(msgs: list[Msg]) -> None:
            # A failed event is redelivered later; the key's next events still apply, and the failed
            # one is then stale by revision, so order never goes backwards.
            for msg in msgs:
                await _settle(msg, one(msg), "key event")

        await asyncio.gather(*(in_order(msgs) for msgs in per_key.values()))

    @broker.subscriber(
        f"{domain.FIRED_SUBJECT_PREFIX}.>",
        stream=JStream(STREAM_SCHEDULES, declare=False),
        durable=FIRED_DURABLE,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(ack_wait=ACK_WAIT_S),
        pull_sub=PullSub(batch_size=BATCH, timeout=0.2, batch=True),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def fired(batch: list[Any], message: NatsMessage) -> None:
        """Schedules fired: re-check each key, then end a grace, record an expiry, send a notice or renew."""

        msgs: list[Msg] = list(message.raw_message)  # type: ignore[attr-defined]
        parsed = [Fired.decode(json.loads(msg.data)) for msg in msgs]
        outcomes = await service.on_fired_many(parsed)
        handled = service.clock()

        async def settle(msg: Msg, fired: Fired, outcome: domain.Decision | BaseException) -> None:
            if isinstance(outcome, BaseException):
                await msg.nak(delay=RETRY_DELAY_S)
                return
            if outcome.action == domain.EARLY:
                await msg.nak(delay=outcome.delay_s)
                return
            observe_fired(fired.purpose.split("-")[0], outcome.action, (handled - fired.due).total_seconds())
            await msg.ack()

        await asyncio.gather(
            *(settle(m, f, o) for m, f, o in zip(msgs, parsed, outcomes, strict=True)), return_exceptions=True
        )
