"""NATS entrypoints of the rotator: key events in, fired schedules in. Thin: parse, one use case.

Both are durable pull consumers (`rotator`, `rotator-fired`), so every replica of the rotator shares the
same work. Messages come in batches so that many keys are handled at once (10,000 keys may expire in
the same minute): key events are grouped by key and each key's events applied in order; fired
schedules are handled together. Each message is acked on its own; a failure is not swallowed: that
message is nak'ed and redelivered.

The fetch loop is nats-py's own rather than a FastStream subscriber: measured with FastStream 0.7.8,
its batch pull loop (`PullSub(batch=True)`) lost about 0.6% of messages client-side at a few hundred
per second (each came back only after the ack wait), where a plain `fetch(100, timeout=1)` loop lost
none (benchmarks/lifecycle_lateness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

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
EVENTS_DURABLE = "rotator"
FIRED_DURABLE = "rotator-fired"
BATCH = 100
FETCH_TIMEOUT_S = 1.0
RETRY_DELAY_S = 1.0
# Short, so that a message lost on its way comes back quickly; handling is idempotent, so the
# redelivery of a batch that was merely slow changes nothing.
ACK_WAIT_S = 10.0

Handle = Callable[[list[Msg]], Awaitable[None]]


@dataclass
class Consumer:
    """A durable pull consumer and the loop that feeds its batches to a handler."""

    stream: str
    durable: str
    subject: str
    config: ConsumerConfig
    handle: Handle
    task: asyncio.Task[None] | None = None
    subscription: nats.js.JetStreamContext.PullSubscription | None = None

    async def start(self, nc: NatsClient) -> None:
        subscription = await nc.jetstream().pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=self.config
        )
        self.subscription = subscription
        self.task = asyncio.create_task(self._run(subscription), name=f"consume-{self.durable}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.subscription is not None:
            # Without this the connection's drain at shutdown waits its full timeout for a pull
            # subscription nobody reads any more; unacked messages are redelivered to the next consumer.
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
            self.subscription = None

    async def _run(self, subscription: nats.js.JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await subscription.fetch(BATCH, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected, server busy: the client reconnects by itself
                log.warning("fetch from %s failed (%s); retrying", self.durable, exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle(msgs)
            except asyncio.CancelledError:
                raise
            except Exception:  # unacked messages are redelivered after the ack wait
                log.exception("a batch of %s failed", self.durable)


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


def consumers(
    service: RotatorService,
    *,
    observe_fired: Callable[[str, str, float], None] = lambda purpose, action, lateness: None,
) -> list[Consumer]:
    async def key_events(msgs: list[Msg]) -> None:
        """Key lifecycle events: recompute each key's schedules (create, replace, cancel)."""
        per_key: dict[str, list[Msg]] = {}
        for msg in msgs:
            try:
                key_id = str(json.loads(msg.data).get("key_id", ""))
            except ValueError:
                key_id = ""
            per_key.setdefault(key_id, []).append(msg)

        async def one(msg: Msg) -> None:
            event = parse_event(msg.data)
            if isinstance(event, KeyEvent) and event.type in CONSUMED:
                await service.on_key_event(event)

        async def in_order(batch: list[Msg]) -> None:
            # A failed event is redelivered later; the key's next events still apply, and the failed
            # one is then stale by revision, so a key's state never goes backwards.
            for msg in batch:
                await _settle(msg, one(msg), "key event")

        await asyncio.gather(*(in_order(batch) for batch in per_key.values()))

    async def fired(msgs: list[Msg]) -> None:
        """Schedules fired: re-check each key, then end a grace, record an expiry, send a notice or renew."""
        good: list[tuple[Msg, Fired]] = []
        for msg in msgs:
            try:
                good.append((msg, Fired.decode(json.loads(msg.data))))
            except (ValueError, KeyError, TypeError):
                log.error("unreadable fired schedule on %s: dropped", msg.subject)
                await msg.term()
        outcomes = await service.on_fired_many([f for _, f in good])
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
            *(settle(m, f, o) for (m, f), o in zip(good, outcomes, strict=True)), return_exceptions=True
        )

    return [
        Consumer(
            STREAM_EVENTS,
            EVENTS_DURABLE,
            "keys.events.key.*",
            ConsumerConfig(
                filter_subjects=KEY_EVENT_SUBJECTS, ack_wait=ACK_WAIT_S, deliver_policy=DeliverPolicy.ALL
            ),
            key_events,
        ),
        Consumer(
            STREAM_SCHEDULES,
            FIRED_DURABLE,
            f"{domain.FIRED_SUBJECT_PREFIX}.>",
            ConsumerConfig(ack_wait=ACK_WAIT_S, deliver_policy=DeliverPolicy.ALL),
            fired,
        ),
    ]
