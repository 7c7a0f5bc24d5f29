"""In-memory stores for the use-case tests, in the manner of cosmicpython's FakeUnitOfWork: each answers
its service's store Protocol (services/<service>/ports.py) with plain dicts, so the "unit" tier needs no
database. tests/support/store_contracts.py runs the same tests against these and the real stores
(SQLite and PostgreSQL), so a fake that drifted from its store fails there.

No write method awaits or can fail midway, so each is all or nothing, as the store's transaction is; every
read hands out copies, as the store hands out fresh objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.notifier.domain import MAX_DETAIL, Attempt, Delivery, Notice
from services.rotator import domain as rotator
from services.rotator.domain import KeyRecord, OutboxEntry, PlanFn, ScheduleRow
from services.rotator.ports import FiredRecord
from shared.events import KeyView, encode_event
from shared.timeutil import utcnow


@dataclass(frozen=True, slots=True)
class FakeOutboxRow:
    """An outbox row as the relay reads it (shared.outbox.PendingEvent)."""

    id: int
    event_id: str
    subject: str
    payload: bytes
    published: bool = False


class FakeRotatorStore:
    """services.rotator.ports.RotatorStore in memory, with the outbox reads the relay and tests use."""

    def __init__(self) -> None:
        self.revisions: dict[str, int] = {}
        self.keys: dict[str, KeyRecord] = {}
        self.rows: dict[tuple[str, str], ScheduleRow] = {}
        self.outbox: list[FakeOutboxRow] = []
        self.on_commit: Callable[[], None] = lambda: None

    async def apply_keys(
        self, items: Sequence[tuple[KeyView, PlanFn]]
    ) -> tuple[list[bool], list[ScheduleRow]]:
        key_ids = {view.key_id for view, _ in items}
        held = {k: r for k, r in self.revisions.items() if k in key_ids}
        stored = {at: replace(row) for at, row in self.rows.items() if at[0] in key_ids}
        batch = rotator.apply_views(held, stored, items)
        for key_id, view in batch.views.items():
            self.revisions[key_id] = view.revision
            self.keys[key_id] = KeyRecord(
                view.key_id,
                view.status,
                view.expires_at,
                view.grace_until,
                view.auto_renew,
                view.model_dump_json(),
            )
        if batch.views:
            for at, row in batch.changed.items():
                if row is None:
                    self.rows.pop(at, None)
                else:
                    self.rows[at] = replace(row)
        return batch.applied, [replace(row) for row in batch.to_sync()]

    async def unsynced(
        self, key_id: str | None = None, limit: int = 500, *, key_ids: Sequence[str] | None = None
    ) -> list[ScheduleRow]:
        found = [
            replace(row)
            for row in self.rows.values()
            if row.state in (rotator.PENDING, rotator.CANCELLING)
            and (key_id is None or row.key_id == key_id)
            and (key_ids is None or row.key_id in key_ids)
        ]
        return found[:limit]

    async def mark_synced(self, rows: Sequence[ScheduleRow]) -> None:
        for taken in rows:
            at = (taken.key_id, taken.purpose)
            held = self.rows.get(at)
            # Matched on (state, due), as the real store does: a newer change is not overwritten.
            if held is None or held.state != taken.state or held.due_at != taken.due_at:
                continue
            if taken.state == rotator.PENDING:
                self.rows[at] = replace(held, state=rotator.SCHEDULED)
            else:
                del self.rows[at]

    async def fired_contexts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[KeyRecord | None, ScheduleRow | None]]:
        found: dict[tuple[str, str], tuple[KeyRecord | None, ScheduleRow | None]] = {}
        for key_id, purpose in wanted:
            key = self.keys.get(key_id)
            row = self.rows.get((key_id, purpose))
            found[(key_id, purpose)] = (
                replace(key) if key is not None else None,
                replace(row) if row is not None else None,
            )
        return found

    async def mark_fired_many(
        self, records: Sequence[FiredRecord], *, wake_relay: bool = True
    ) -> tuple[set[str], list[OutboxEntry]]:
        events = {e.event_id: e for *_, evs in records for e in evs}
        held = {row.event_id for row in self.outbox}
        duplicates = {event_id for event_id in events if event_id in held}
        for key_id, purpose, due, _ in records:
            row = self.rows.get((key_id, purpose))
            if row is not None and row.due_at == due:
                self.rows[(key_id, purpose)] = replace(row, state=rotator.FIRED)
        added: list[OutboxEntry] = []
        for event_id, event in events.items():
            if event_id in duplicates:
                continue
            row_id = len(self.outbox) + 1
            self.outbox.append(FakeOutboxRow(row_id, event_id, event.subject, encode_event(event)))
            added.append(OutboxEntry(row_id, event_id, event.subject, encode_event(event)))
        if added and wake_relay:
            self.on_commit()
        return duplicates, added

    # reads for the relay (shared.outbox.OutboxStore) and for tests

    async def pending_events(self, limit: int) -> list[FakeOutboxRow]:
        return [row for row in self.outbox if not row.published][:limit]

    async def mark_published(self, ids: Sequence[int]) -> None:
        done = set(ids)
        self.outbox = [replace(row, published=True) if row.id in done else row for row in self.outbox]

    async def schedules(self, key_id: str) -> list[ScheduleRow]:
        return [replace(row) for row in self.rows.values() if row.key_id == key_id]

    async def get_schedule(self, key_id: str, purpose: str) -> ScheduleRow | None:
        row = self.rows.get((key_id, purpose))
        return replace(row) if row is not None else None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        key = self.keys.get(key_id)
        return replace(key) if key is not None else None


class FakeNotifierStore:
    """services.notifier.ports.NotifierStore in memory, with the delivery log's reads."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self.delivery_log: dict[str, Delivery] = {}
        self.attempt_log: list[Attempt] = []

    async def ensure_delivery(self, notice: Notice, channel: str) -> Delivery:
        delivery_id = notice.dedupe_key(channel)
        held = self.delivery_log.get(delivery_id)
        if held is not None:
            return held
        now = self.clock()
        delivery = Delivery(
            id=delivery_id,
            key_id=notice.key_id,
            account_id=notice.account_id,
            channel=channel,
            purpose=notice.purpose,
            type=notice.type,
            expires_at=notice.expires_at,
            status="pending",
            attempts=0,
            first_attempt_at=None,
            next_attempt_at=None,
            last_error=None,
            created_at=now,
            updated_at=now,
        )
        self.delivery_log[delivery_id] = delivery
        return delivery

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        held = self.delivery_log[delivery_id]
        delivery = replace(
            held, attempts=held.attempts + 1, first_attempt_at=held.first_attempt_at or now, updated_at=now
        )
        attempt = Attempt(
            id=len(self.attempt_log) + 1,
            delivery_id=delivery_id,
            attempt=delivery.attempts,
            started_at=now,
            finished_at=None,
            outcome="started",
            detail=None,
        )
        self.delivery_log[delivery_id] = delivery
        self.attempt_log.append(attempt)
        return attempt.id

    async def finish_attempt(
        self,
        delivery_id: str,
        attempt_id: int,
        outcome: str,
        detail: str | None,
        now: datetime,
        *,
        status: str,
        next_attempt_at: datetime | None,
    ) -> None:
        kept = (detail or "")[:MAX_DETAIL]
        self.attempt_log = [
            replace(a, outcome=outcome, detail=kept or None, finished_at=now) if a.id == attempt_id else a
            for a in self.attempt_log
        ]
        held = self.delivery_log.get(delivery_id)
        if held is not None:
            self.delivery_log[delivery_id] = replace(
                held,
                status=status,
                next_attempt_at=next_attempt_at,
                updated_at=now,
                last_error=None if outcome == "delivered" else kept,
            )

    # reads for tests

    async def deliveries(self, key_id: str | None = None) -> list[Delivery]:
        """Oldest first."""
        held = [d for d in self.delivery_log.values() if key_id is None or d.key_id == key_id]
        return sorted(held, key=lambda d: d.created_at)

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        return [a for a in self.attempt_log if a.delivery_id == delivery_id]

    async def count(self, status: str) -> int:
        return sum(1 for d in self.delivery_log.values() if d.status == status)
