"""Durable JetStream pull consumers that hand their messages to a handler a batch at a time.

Used where per-batch work (a transaction, a read) is shared by many messages: the rotator's key events
and fired schedules, the validator's key events (a fresh replica replays the whole stream). A fetch
returns what is there at once, so batches are small when idle (latency stays that of one message) and
large under load.

The fetch loop is nats-py's own rather than a FastStream subscriber: measured with FastStream 0.7.8,
its batch pull loop (`PullSub(batch=True)`) lost about 0.6% of messages client-side at a few hundred
per second (each came back only after the ack wait), and it waits for a full batch or its timeout
before handing anything on; a plain fetch loop lost none (benchmarks/lifecycle_lateness.py).

At shutdown the loop stops fetching at once, and the batches in hand get a few seconds to finish; what
they had not acked is redelivered, so a backlog never holds up the exit.
"""

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
from nats.js.api import ConsumerConfig, StatusCode

log = logging.getLogger("consumer")

# Up to this many messages per fetch.
BATCH = 500
FETCH_TIMEOUT_S = 1.0
# At shutdown, how long the batch in hand may take to finish before it is cancelled.
STOP_GRACE_S = 3.0

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
