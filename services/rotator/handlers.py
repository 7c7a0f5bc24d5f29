"""NATS entrypoints of the rotator: key events in, fired schedules in. Thin: parse, one use case.

Both are durable pull consumers (`rotator`, `rotator-fired`), so every replica of the rotator shares the
same work. Messages come in batches so that many keys are handled at once (100,000 expiries and notices
may fall due in the same minute, benchmarks/lifecycle_lateness.py):
- key events: a batch is applied in one transaction, each key's events in order, and its schedule
  changes are published together; if the batch fails, its events are retried one by one, so that one
  bad event is nak'ed and redelivered alone;
- fired schedules: handled together (one read, the issuer commands concurrently, one write), several
  batches in flight at once; a failed one is nak'ed and redelivered.

The fetch loop is shared/consumer.py's (why not FastStream's, there)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.consumer import Consumer
from shared.events import STREAM_EVENTS, STREAM_SCHEDULES, KeyEvent, parse_event

from . import domain
from .service import Fired, RotatorService

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
# Fired schedules are independent of one another, so several batches are handled at once (their
# commands to the issuer overlap); key events stay one batch at a time, a key's events in order.
# FIRED_BATCH * FIRED_IN_FLIGHT stays within the consumer's default MaxAckPending (1,000).
FIRED_BATCH = 250
FIRED_IN_FLIGHT = 4
RETRY_DELAY_S = 1.0
# Short, so that a message lost on its way comes back quickly; handling is idempotent, so the
# redelivery of a batch that was merely slow changes nothing.
ACK_WAIT_S = 10.0


async def _settle(msg: Msg, work: Awaitable[object], what: str) -> None:
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
        events: list[KeyEvent] = []
        readable: list[Msg] = []
        for msg in msgs:
            try:
                # orjson first: cheaper than pydantic's JSON parsing of the whole event (profiled when
                # scheduling 50,000 keys).
                body = orjson.loads(msg.data)
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                event = parse_event(body)
            except (ValueError, TypeError):
                log.exception("unreadable key event on %s: dropped", msg.subject)
                await msg.term()
                continue
            if isinstance(event, KeyEvent):
                events.append(event)
                readable.append(msg)
            else:
                await msg.ack()
        try:
            # The whole batch at once: one transaction, its schedules published together.
            await service.on_key_events(events)
        except Exception:
            log.warning(
                "a batch of %d key events failed; handling them one by one", len(events), exc_info=True
            )
        else:
            for msg in readable:
                await msg.ack()
            return

        async def in_order(batch: list[tuple[Msg, KeyEvent]]) -> None:
            # A failed event is redelivered later; the key's next events still apply, and the failed
            # one is then stale by revision, so a key's state never goes backwards.
            for msg, event in batch:
                await _settle(msg, service.on_key_event(event), "key event")

        per_key: dict[str, list[tuple[Msg, KeyEvent]]] = {}
        for msg, event in zip(readable, events, strict=True):
            per_key.setdefault(event.key_id, []).append((msg, event))
        await asyncio.gather(*(in_order(batch) for batch in per_key.values()))

    async def fired(msgs: list[Msg]) -> None:
        """Schedules fired: re-check each key, then end a grace, record an expiry, send a notice or renew."""
        good: list[tuple[Msg, Fired]] = []
        for msg in msgs:
            try:
                good.append((msg, Fired.decode(orjson.loads(msg.data))))
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

        # One after another: an ack or nak is only written to the connection's buffer, so a task each
        # (gather) would cost more than it overlaps.
        for (msg, fired), outcome in zip(good, outcomes, strict=True):
            try:
                await settle(msg, fired, outcome)
            except Exception as exc:  # not acked: it is redelivered after the ack wait
                log.warning("could not settle %s: %s", msg.subject, exc)

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
            batch=FIRED_BATCH,
            in_flight=FIRED_IN_FLIGHT,
        ),
    ]
