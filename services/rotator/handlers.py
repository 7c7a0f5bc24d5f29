"""NATS entrypoints of the rotator: key events in, fired schedules in. Thin: parse, one use case.

Both are durable pull consumers (`rotator`, `rotator-fired`), so every replica of the rotator shares the
same work. Messages come in batches so that many keys are handled at once (100,000 expiries and notices
may fall due in the same minute, benchmarks/lifecycle_lateness.py):
- key events: a batch is applied in one transaction, each key's events in order, and its schedule
  changes are published together; if the batch fails, its events are retried one by one, so that one
  bad event is nak'ed and redelivered alone;
- fired schedules: handled together (one read, the issuer commands concurrently, one write), several
  batches in flight at once; a failed one is nak'ed and redelivered.

The fetch loop is nats-py's own rather than a FastStream subscriber: measured with FastStream 0.7.8,
its batch pull loop (`PullSub(batch=True)`) lost about 0.6% of messages client-side at a few hundred
per second (each came back only after the ack wait), where a plain `fetch(100, timeout=1)` loop lost
none (benchmarks/lifecycle_lateness.py).

At shutdown the loops stop fetching at once, and the batches in hand get a few seconds to finish; what
they had not acked is redelivered, so a backlog never holds up the exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StatusCode

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
# Up to this many messages per fetch; a fetch returns what is there, so batches are small when idle
# and large under load, where per-batch costs (a transaction, a read) are shared by many messages.
BATCH = 500
FETCH_TIMEOUT_S = 1.0
# Fired schedules are independent of one another, so several batches are handled at once (their
# commands to the issuer overlap); key events stay one batch at a time, a key's events in order.
# FIRED_BATCH * FIRED_IN_FLIGHT stays within the consumer's default MaxAckPending (1,000).
FIRED_BATCH = 250
FIRED_IN_FLIGHT = 4
# At shutdown, how long the batch in hand may take to finish before it is cancelled.
STOP_GRACE_S = 3.0
RETRY_DELAY_S = 1.0
# Short, so that a message lost on its way comes back quickly; handling is idempotent, so the
# redelivery of a batch that was merely slow changes nothing.
ACK_WAIT_S = 10.0

Handle = Callable[[list[Msg]], Awaitable[None]]


@dataclass
class Consumer:
    """A durable pull consumer and the loop that feeds its batches to a handler.

    With `in_flight` > 1 the next batch is fetched and handled while earlier ones still wait for their
    replies (commands to the issuer, acks from JetStream): a batch spends most of its time waiting, and
    one batch at a time capped a burst of due schedules well below the rate at which they fell due.
    """

    stream: str
    durable: str
    subject: str
    config: ConsumerConfig
    handle: Handle
    batch: int = BATCH
    in_flight: int = 1
    task: asyncio.Task[None] | None = None
    subscription: JetStreamContext.PullSubscription | None = None
    stopping: bool = False
    _batches: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, nc: NatsClient) -> None:
        subscription = await nc.jetstream().pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=self.config
        )
        self.subscription = subscription
        self.stopping = False
        self.task = asyncio.create_task(self._run(subscription), name=f"consume-{self.durable}")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop fetching, give the batches in hand `grace_s` to finish, then cancel them: whatever they had
        not acked is redelivered (to another replica, or to this one after its restart)."""
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self._batches:
            _, late = await asyncio.wait(self._batches, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "%d batches of %s cut short at shutdown; they are redelivered", len(late), self.durable
                )
                await asyncio.wait(late, timeout=grace_s)
        if self.subscription is not None:
            # Without this the connection's drain at shutdown waits its full timeout for a pull
            # subscription nobody reads any more.
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
            self.subscription = None

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        turns = asyncio.Semaphore(self.in_flight)
        while not self.stopping:
            await turns.acquire()
            try:
                msgs = await fetch(subscription, self.batch, FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                turns.release()
                continue
            except Exception as exc:  # disconnected, server busy: the client reconnects by itself
                turns.release()
                log.warning("fetch from %s failed (%s); retrying", self.durable, exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                turns.release()
                continue
            task = asyncio.create_task(self._handle(msgs), name=f"batch-{self.durable}")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            task.add_done_callback(lambda _: turns.release())

    async def _handle(self, msgs: list[Msg]) -> None:
        try:
            await self.handle(msgs)
        except Exception:  # unacked messages are redelivered after the ack wait
            log.exception("a batch of %s failed", self.durable)


async def fetch(subscription: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Up to `batch` messages of a pull consumer: what is there, waiting at most `timeout` for the first.

    What nats-py 2.16's `PullSubscription.fetch(batch, timeout)` does (and relies on its internals: the
    subscription's pending queue, the pull request subject and inbox), with one deadline for the whole
    fetch: nats-py waits for each message with `next_msg`, a task, a timer and a uuid per message, which
    was an eighth of the rotator's CPU under a burst of due schedules. Messages of a pull request that
    arrive after the deadline stay in the queue and open the next fetch; a status message (404 no
    messages, 408 request expired, 409) ends the request.
    """
    sub = subscription._sub
    assert sub is not None
    queue = sub._pending_queue
    msgs: list[Msg] = []

    def take(msg: Msg) -> str | None:
        sub._pending_size -= len(msg.data)
        status = JetStreamContext.is_status_msg(msg)
        if status is None:
            msgs.append(msg)
        return status

    while not queue.empty():  # left by an earlier request; statuses there are about earlier requests
        take(queue.get_nowait())
    needed = batch - len(msgs)
    if needed <= 0:
        return msgs
    request: dict[str, object] = {"batch": needed, "no_wait": True}
    if not msgs:
        # With `expires` the server holds the request until messages come or it expires (no_wait is
        # then ignored): a long poll while idle. Without it, it answers at once with what it has.
        request["expires"] = int(timeout * 1e9) - 100_000
    await subscription._nc.publish(subscription._nms, orjson.dumps(request), subscription._deliver)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while len(msgs) < batch:
                status = take(await queue.get())
                if status is not None and status != StatusCode.CONTROL_MESSAGE:
                    break
    return msgs


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
