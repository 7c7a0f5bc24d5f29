"""The rotator's store: what it knows of each key, the schedule plan per (key, purpose), and its outbox.

The only module that opens sessions. A key change and the schedule changes it causes are written in one
transaction; schedules to publish or cancel stay `pending`/`cancelling` until NATS has them, so a crash
between commit and publish is repaired by the next sync (redelivery or start-up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, bindparam, delete, func, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, col, select

from shared.db import StoreBase
from shared.events import Event, KeyView, encode_event
from shared.outbox import OutboxBase
from shared.timeutil import as_utc, utcnow

from . import domain


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


class RotatorKey(SQLModel, table=True):
    __tablename__ = "rotator_keys"

    key_id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(max_length=64)
    revision: int
    status: str = Field(max_length=16)
    expires_at: datetime | None = _ts(nullable=True)
    grace_until: datetime | None = _ts(nullable=True)
    auto_renew: bool = False
    view_json: str

    def state(self) -> domain.KeyState:
        return domain.KeyState(
            self.key_id, self.status, as_utc(self.expires_at), as_utc(self.grace_until), self.auto_renew
        )

    def view(self) -> KeyView:
        return KeyView.model_validate_json(self.view_json)


class RotatorSchedule(SQLModel, table=True):
    __tablename__ = "rotator_schedules"

    key_id: str = Field(primary_key=True, max_length=40)
    purpose: str = Field(primary_key=True, max_length=40)
    due_at: datetime = _ts(nullable=False)
    expires_at: datetime | None = _ts(nullable=True)
    last_notice: bool = False
    state: str = Field(max_length=16, index=True)
    updated_at: datetime = _ts(nullable=False)

    def existing(self) -> domain.Existing:
        return domain.Existing(self.purpose, as_utc(self.due_at), self.state)  # type: ignore[arg-type]


class RotatorOutbox(OutboxBase, table=True):
    __tablename__ = "rotator_outbox"


TABLES = [RotatorKey.__table__, RotatorSchedule.__table__, RotatorOutbox.__table__]

PlanFn = Callable[[Sequence[domain.Existing]], list[domain.Change]]


class RotatorStore(StoreBase):
    service = "rotator"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.on_commit: Callable[[], None] = lambda: None

    async def apply_key(self, view: KeyView, changes_for: PlanFn) -> tuple[bool, list[RotatorSchedule]]:
        """Record `view` and its schedule changes if its revision is newer than what is held.

        Returns (applied, the rows NATS must now be told about); (False, []) for a stale or duplicate
        event, where nothing is written.
        """
        now = utcnow()
        async with self._session() as session:
            query = select(RotatorKey).where(RotatorKey.key_id == view.key_id)
            if self._lock_rows:
                query = query.with_for_update()
            key = (await session.exec(query)).first()
            if key is not None and key.revision >= view.revision:
                await session.rollback()
                return False, []
            if key is None:
                key = RotatorKey(
                    key_id=view.key_id,
                    account_id=view.account_id,
                    revision=view.revision,
                    status=view.status,
                    view_json="",
                )
            key.revision = view.revision
            key.status = view.status
            key.expires_at = view.expires_at
            key.grace_until = view.grace_until
            key.auto_renew = view.auto_renew
            key.view_json = view.model_dump_json()
            session.add(key)
            rows = {
                r.purpose: r
                for r in (
                    await session.exec(select(RotatorSchedule).where(RotatorSchedule.key_id == view.key_id))
                )
            }
            touched: list[RotatorSchedule] = []
            for change in changes_for([r.existing() for r in rows.values()]):
                row = rows.get(change.purpose)
                if change.op == "publish":
                    planned = change.planned
                    assert planned is not None
                    if row is None:
                        row = RotatorSchedule(
                            key_id=view.key_id,
                            purpose=planned.purpose,
                            due_at=planned.due,
                            state=domain.PENDING,
                            updated_at=now,
                        )
                    row.due_at = planned.due
                    row.expires_at = planned.expires_at
                    row.last_notice = planned.last_notice
                    row.state = domain.PENDING
                    row.updated_at = now
                    session.add(row)
                    touched.append(row)
                elif change.op == "cancel" and row is not None:
                    row.state = domain.CANCELLING
                    row.updated_at = now
                    session.add(row)
                    touched.append(row)
                elif change.op == "drop" and row is not None:
                    await session.delete(row)
            await session.commit()
            synced = [RotatorSchedule.model_validate(r.model_dump()) for r in touched]
            return True, synced

    async def unsynced(self, key_id: str | None = None, limit: int = 500) -> list[RotatorSchedule]:
        """Schedules NATS does not have yet (`pending`) or still has but should not (`cancelling`)."""
        query = select(RotatorSchedule).where(
            col(RotatorSchedule.state).in_([domain.PENDING, domain.CANCELLING])
        )
        if key_id is not None:
            query = query.where(RotatorSchedule.key_id == key_id)
        async with self._session() as session:
            rows = list((await session.exec(query.limit(limit))).all())
        for row in rows:
            row.due_at = as_utc(row.due_at)  # type: ignore[assignment]
            row.expires_at = as_utc(row.expires_at)
        return rows

    async def mark_synced(self, rows: Sequence[RotatorSchedule]) -> None:
        """After NATS took the changes: a published row becomes `scheduled`, a cancelled one is deleted.

        Matched on (state, due) so a change made meanwhile by a newer event is not overwritten.
        """
        async with self._session() as session:
            for row in rows:
                where = (
                    (col(RotatorSchedule.key_id) == row.key_id)
                    & (col(RotatorSchedule.purpose) == row.purpose)
                    & (col(RotatorSchedule.state) == row.state)
                    & (col(RotatorSchedule.due_at) == row.due_at)
                )
                if row.state == domain.PENDING:
                    await session.execute(
                        update(RotatorSchedule)
                        .where(where)
                        .values(state=domain.SCHEDULED, updated_at=utcnow())
                    )
                else:
                    await session.execute(delete(RotatorSchedule).where(where))
            await session.commit()

    async def fired_context(
        self, key_id: str, purpose: str
    ) -> tuple[RotatorKey | None, RotatorSchedule | None]:
        """What a fired schedule is re-checked against: the key as known now and its schedule row."""
        async with self._session() as session:
            key = await session.get(RotatorKey, key_id)
            row = await session.get(RotatorSchedule, (key_id, purpose))
            if row is not None:
                row.due_at = as_utc(row.due_at)  # type: ignore[assignment]
                row.expires_at = as_utc(row.expires_at)
            return key, row

    async def get_key(self, key_id: str) -> RotatorKey | None:
        async with self._session() as session:
            return await session.get(RotatorKey, key_id)

    async def get_schedule(self, key_id: str, purpose: str) -> RotatorSchedule | None:
        async with self._session() as session:
            row = await session.get(RotatorSchedule, (key_id, purpose))
            if row is not None:
                row.due_at = as_utc(row.due_at)  # type: ignore[assignment]
                row.expires_at = as_utc(row.expires_at)
            return row

    async def schedules(self, key_id: str) -> list[RotatorSchedule]:
        async with self._session() as session:
            rows = list(
                (await session.exec(select(RotatorSchedule).where(RotatorSchedule.key_id == key_id))).all()
            )
        for row in rows:
            row.due_at = as_utc(row.due_at)  # type: ignore[assignment]
        return rows

    async def mark_fired(
        self, key_id: str, purpose: str, due: datetime, events: Sequence[Event] = ()
    ) -> bool:
        """Record one handled schedule with its events; False when an event was already recorded."""
        return not await self.mark_fired_many([(key_id, purpose, due, list(events))])

    async def mark_fired_many(
        self, records: Sequence[tuple[str, str, datetime, Sequence[Event]]]
    ) -> set[str]:
        """Record handled schedules, with the events they emit, in one transaction. An event already in
        the outbox (a redelivered schedule: its id is deterministic) is not added again; returns the
        ids of those duplicates."""
        now = utcnow()
        events = {e.event_id: e for *_, evs in records for e in evs}
        async with self._session() as session:
            if events:
                found = await session.exec(
                    select(RotatorOutbox.event_id).where(col(RotatorOutbox.event_id).in_(list(events)))
                )
                duplicates = set(found.all())
            else:
                duplicates = set()
            table = RotatorSchedule.__table__
            connection = await session.connection()
            await connection.execute(
                update(table)
                .where(
                    (table.c.key_id == bindparam("k"))
                    & (table.c.purpose == bindparam("p"))
                    & (table.c.due_at == bindparam("d"))
                )
                .values(state=domain.FIRED, updated_at=now),
                [{"k": key_id, "p": purpose, "d": due} for key_id, purpose, due, _ in records],
            )
            for event_id, event in events.items():
                if event_id not in duplicates:
                    session.add(
                        RotatorOutbox(
                            event_id=event_id,
                            subject=event.subject,
                            payload=encode_event(event),
                            created_at=now,
                        )
                    )
            await session.commit()
        if len(events) > len(duplicates):
            self.on_commit()
        return duplicates

    async def fired_contexts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[RotatorKey | None, RotatorSchedule | None]]:
        """For each (key, purpose): the key as known now and its schedule row, in one read."""
        key_ids = list({key_id for key_id, _ in wanted})
        async with self._session() as session:
            keys = {
                k.key_id: k
                for k in (
                    await session.exec(select(RotatorKey).where(col(RotatorKey.key_id).in_(key_ids)))
                ).all()
            }
            rows = {
                (r.key_id, r.purpose): r
                for r in (
                    await session.exec(
                        select(RotatorSchedule).where(col(RotatorSchedule.key_id).in_(key_ids))
                    )
                ).all()
            }
        for row in rows.values():
            row.due_at = as_utc(row.due_at)  # type: ignore[assignment]
            row.expires_at = as_utc(row.expires_at)
        return {(k, p): (keys.get(k), rows.get((k, p))) for k, p in wanted}

    async def count_schedules(self, state: str | None = None) -> int:
        query = select(func.count()).select_from(RotatorSchedule)
        if state:
            query = query.where(RotatorSchedule.state == state)
        async with self._session() as session:
            return int((await session.exec(query)).one())

    # outbox

    async def pending_events(self, limit: int) -> Sequence[RotatorOutbox]:
        async with self._session() as session:
            result = await session.exec(
                select(RotatorOutbox)
                .where(col(RotatorOutbox.published_at).is_(None))
                .order_by(col(RotatorOutbox.id))
                .limit(limit)
            )
            return result.all()

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self._session() as session:
            await session.execute(
                update(RotatorOutbox).where(col(RotatorOutbox.id).in_(ids)).values(published_at=utcnow())
            )
            await session.commit()
