"""Transactional outbox: events are written in the same transaction as the change that caused them and
published afterwards by a relay, so a committed change always gets its event out, even when NATS was
down at the time. The relay publishes in insertion order with Nats-Msg-Id = event_id, so a re-send
after a crash between publish and mark is dropped by the server's duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from sqlmodel import Field, SQLModel

log = logging.getLogger(__name__)


class OutboxBase(SQLModel):
    """Columns every service's outbox table has; each service subclasses it with its own table name."""

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=64, unique=True)
    subject: str = Field(max_length=200)
    payload: bytes
    created_at: datetime
    published_at: datetime | None = Field(default=None, index=True)


class PendingEvent(Protocol):
    """An outbox row as the relay publishes it."""

    @property
    def id(self) -> int | None: ...

    @property
    def event_id(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


class OutboxStore(Protocol):
    async def pending_events(self, limit: int) -> Sequence[OutboxBase]: ...

    async def mark_published(self, ids: Sequence[int]) -> None: ...


class CommitNotifyingOutboxStore(OutboxStore, Protocol):
    """An outbox store that calls `on_commit` after each commit that wrote to its outbox (the relay
    set there is woken at once instead of at its next poll)."""

    on_commit: Callable[[], None]


# The longest wait between two attempts of the relay after a failure.
MAX_RETRY_S = 1.0
# Event ids the relay remembers having published, for a caller that asks after the fact.
RECENT_IDS = 4096
# (subject, payload, message id) of each event -> for each, None once stored or the error it met.
PublishMany = Callable[[Sequence[tuple[str, bytes, str]]], Awaitable[Sequence[BaseException | None]]]


class OutboxRelay:
    def __init__(
        self, store: OutboxStore, publish: PublishMany, *, batch: int = 500, idle_poll_s: float = 1.0
    ) -> None:
        self._store = store
        self._publish = publish
        self._batch = batch
        self._idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_hand: set[int] = set()
        self.published_total = 0
        # Rows the latest read of the outbox found waiting (at most a batch): 0 once it is drained.
        self.backlog = 0
        # Callers waiting for their events to be in the stream (`stored`): event id -> futures.
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        # Since when the relay's attempts fail (NATS away); None while it publishes.
        self.failing_since: float | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def stored(self, event_ids: Sequence[str], timeout: float) -> bool:
        """Wait until the relay has the stream's ack for these events (committed to the outbox already):
        True then; False after `timeout`, or at once while NATS is away. Either way the events are safe
        in the outbox and go out with the relay's next successful round. Read-your-writes for a new
        key: its 201 leaves once its KeyCreated is in the stream, where the validators look for it.
        The relay publishes what a commit woke it for in its next round, batched with whatever else was
        committed meanwhile, so waiting costs one round (an outbox read and a publish), no extra write."""
        pending = [event_id for event_id in event_ids if event_id not in self._recent]
        if not pending:
            return True
        if self.failing_since is not None:
            return False
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in pending]
        for event_id, future in zip(pending, futures, strict=True):
            self._waiters.setdefault(event_id, []).append(future)
        self.wake()
        try:
            done, _ = await asyncio.wait(futures, timeout=timeout)
            return len(done) == len(futures) and all(future.result() for future in done)
        finally:
            for event_id, future in zip(pending, futures, strict=True):
                waiting = self._waiters.get(event_id)
                if waiting is not None:
                    if future in waiting:
                        waiting.remove(future)
                    if not waiting:
                        del self._waiters[event_id]

    def _published(self, event_ids: Iterable[str]) -> None:
        """These events are in the stream: tell who waits for them, and remember them a while."""
        recent, order = self._recent, self._recent_order
        waiters = self._waiters
        for event_id in event_ids:
            if event_id not in recent:
                recent.add(event_id)
                order.append(event_id)
            for future in waiters.pop(event_id, ()):
                if not future.done():
                    future.set_result(True)
        while len(order) > RECENT_IDS:
            recent.discard(order.popleft())

    def _give_up_waiters(self) -> None:
        """NATS is away: nobody waits for the relay's retries (their events are safe in the outbox)."""
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(False)

    async def publish_now(self, rows: Sequence[PendingEvent]) -> None:
        """Publish rows their writer has just committed, without waiting for the relay's next round
        (the rotator's notices: a thousand a second, each a round of the relay later otherwise). The
        relay's rounds skip rows in hand here; what fails here stays pending and the next round retries
        it. Never raises: the events are safe in the outbox either way."""
        ids = {row.id for row in rows if row.id is not None}
        self._in_hand |= ids
        try:
            results = await self._publish([(row.subject, row.payload, row.event_id) for row in rows])
            done = [row.id for row, result in zip(rows, results, strict=True) if result is None and row.id]
            self._published(row.event_id for row, result in zip(rows, results, strict=True) if result is None)
            if done:
                await self._store.mark_published(done)
                self.published_total += len(done)
            if len(done) < len(rows):
                self.wake()
        except ConnectionError:
            self.wake()  # NATS is away: the relay's retries take it from here
        except Exception as exc:
            log.warning("outbox: publishing %d events at once failed (%s); the relay retries", len(rows), exc)
            self.wake()
        finally:
            self._in_hand -= ids

    async def flush(self) -> int:
        """Publish everything pending now; return how many went out. Raises if NATS refuses.

        A batch is published together: written in insertion order, its acks awaited together rather
        than one round trip per event (at a thousand events a second the round trips were the limit).
        The rows before the first failure are marked published; a later one that went out as well is
        sent again next time and dropped by the server as a duplicate (same Nats-Msg-Id).
        """
        sent = 0
        while True:
            rows = [r for r in await self._store.pending_events(self._batch) if r.id not in self._in_hand]
            self.backlog = len(rows)
            if not rows:
                return sent
            results = await self._publish([(row.subject, row.payload, row.event_id) for row in rows])
            done: list[int] = []
            failure: BaseException | None = None
            for row, result in zip(rows, results, strict=True):
                if result is not None:
                    failure = result
                    break
                assert row.id is not None
                done.append(row.id)
            # Before the mark (a write): whoever waits for these may go on as soon as the stream has them.
            self._published(row.event_id for row in rows[: len(done)])
            if done:
                await self._store.mark_published(done)
                sent += len(done)
                self.published_total += len(done)
            if failure is not None:
                raise failure

    async def _run(self) -> None:
        backoff = 0.2
        failing_since: float | None = None
        while True:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Said once per outage, not once per retry (a 20 s NATS outage is ~20 retries).
                if failing_since is None:
                    failing_since = self.failing_since = time.monotonic()
                    log.warning("outbox relay could not publish (%s); retrying", type(exc).__name__)
                self._give_up_waiters()
                await asyncio.sleep(backoff)
                # At most a second apart: the publisher fails at once while NATS is away (no buffered
                # publishes waiting for acks), so a retry is one read of the outbox, and the backlog
                # leaves within a second of NATS's return.
                backoff = min(backoff * 2, MAX_RETRY_S)
                continue
            if failing_since is not None:
                log.warning("outbox relay publishing again after %.1f s", time.monotonic() - failing_since)
                failing_since = self.failing_since = None
            backoff = 0.2
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._idle_poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
