"""The rotator's store: what it knows of each key, the schedule plan per (key, purpose), and its outbox.

The only module that opens sessions, and the only one that sees the table classes: it answers
ports.RotatorStore with domain objects (ScheduleRow, KeyRecord, OutboxEntry). A key change and the
schedule changes it causes are written in one transaction; schedules to publish or cancel stay
`pending`/`cancelling` until NATS has them, so a crash between commit and publish is repaired by the next
sync (redelivery or start-up).

The paths a burst of due schedules goes through (apply a batch of key events, mark schedules synced or
fired, read what a fired schedule is checked against) use Core statements, one per kind of change and
executemany, not ORM objects: with SQLModel objects the store was most of the rotator's CPU per key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, col

from shared.db import StoreBase, table_of, timestamp_field
from shared.events import KeyView, encode_event
from shared.outbox import OutboxBase
from shared.timeutil import as_utc, utcnow

from . import domain
from .domain import KeyRecord, OutboxEntry, PlanFn, ScheduleRow
from .ports import FiredRecord


class RotatorKey(SQLModel, table=True):
    __tablename__ = "rotator_keys"

    key_id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(max_length=64)
    revision: int
    status: str = Field(max_length=16)
    expires_at: datetime | None = timestamp_field(nullable=True)
    grace_until: datetime | None = timestamp_field(nullable=True)
    auto_renew: bool = False
    view_json: str


class RotatorSchedule(SQLModel, table=True):
    __tablename__ = "rotator_schedules"

    key_id: str = Field(primary_key=True, max_length=40)
    purpose: str = Field(primary_key=True, max_length=40)
    due_at: datetime = timestamp_field(nullable=False)
    expires_at: datetime | None = timestamp_field(nullable=True)
    last_notice: bool = False
    state: str = Field(max_length=16, index=True)
    updated_at: datetime = timestamp_field(nullable=False)


class RotatorOutbox(OutboxBase, table=True):
    __tablename__ = "rotator_outbox"


_KEYS = table_of(RotatorKey)
_SCHEDULES = table_of(RotatorSchedule)
_OUTBOX = table_of(RotatorOutbox)
_SCHEDULE_COLUMNS = ("key_id", "purpose", "due_at", "expires_at", "last_notice", "state", "updated_at")


def _schedule_values(row: ScheduleRow, now: datetime) -> dict[str, Any]:
    return {
        "key_id": row.key_id,
        "purpose": row.purpose,
        "due_at": row.due_at,
        "expires_at": row.expires_at,
        "last_notice": row.last_notice,
        "state": row.state,
        "updated_at": now,
    }


def _select_rows() -> Any:
    """Only the columns a ScheduleRow has."""
    return select(
        _SCHEDULES.c.key_id,
        _SCHEDULES.c.purpose,
        _SCHEDULES.c.due_at,
        _SCHEDULES.c.expires_at,
        _SCHEDULES.c.last_notice,
        _SCHEDULES.c.state,
    )


def _select_keys() -> Any:
    """Only the columns a KeyRecord has."""
    return select(
        _KEYS.c.key_id,
        _KEYS.c.status,
        _KEYS.c.expires_at,
        _KEYS.c.grace_until,
        _KEYS.c.auto_renew,
        _KEYS.c.view_json,
    )


def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        row.key_id,
        row.status,
        as_utc(row.expires_at),
        as_utc(row.grace_until),
        bool(row.auto_renew),
        row.view_json,
    )


def _schedule_row(row: Any) -> ScheduleRow:
    return ScheduleRow(
        row.key_id,
        row.purpose,
        as_utc(row.due_at),
        as_utc(row.expires_at),
        bool(row.last_notice),
        row.state,
    )


class RotatorStore(StoreBase):
    service = "rotator"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.on_commit: Callable[[], None] = lambda: None

    async def apply_keys(
        self, items: Sequence[tuple[KeyView, PlanFn]]
    ) -> tuple[list[bool], list[ScheduleRow]]:
        """`apply_key` for a batch of events in one transaction (a key's events in the given order).

        Returns whether each item was applied, and the rows NATS must now be told about (each
        (key, purpose) once, in its final state). Reads the keys and their schedules once, works out
        every change in memory, and writes with one statement per kind of change.
        """
        now = utcnow()
        key_ids = sorted({view.key_id for view, _ in items})
        async with self._writing() as session:
            connection = await session.connection()
            query = select(_KEYS.c.key_id, _KEYS.c.revision).where(_KEYS.c.key_id.in_(key_ids))
            if self._lock_rows:
                query = query.with_for_update()
            held: dict[str, int] = {k: r for k, r in (await connection.execute(query)).all()}
            stored = {
                (r.key_id, r.purpose): _schedule_row(r)
                for r in await connection.execute(select(_SCHEDULES).where(_SCHEDULES.c.key_id.in_(key_ids)))
            }
            batch = domain.apply_views(held, stored, items)
            if batch.views:
                await self._write_keys(connection, batch.views, held)
                await self._write_schedules(connection, stored, batch.changed, now)
            await session.commit()
        return batch.applied, batch.to_sync()

    @staticmethod
    async def _write_keys(connection: Any, views: dict[str, KeyView], held: dict[str, int]) -> None:
        values = [
            {
                "key_id": view.key_id,
                "account_id": view.account_id,
                "revision": view.revision,
                "status": view.status,
                "expires_at": view.expires_at,
                "grace_until": view.grace_until,
                "auto_renew": view.auto_renew,
                "view_json": view.model_dump_json(),
            }
            for view in views.values()
        ]
        new = [v for v in values if v["key_id"] not in held]
        # An UPDATE's bound names must differ from its column names.
        old = [{f"v_{c}": v for c, v in row.items()} for row in values if row["key_id"] in held]
        if new:
            await connection.execute(_KEYS.insert(), new)
        if old:
            await connection.execute(
                update(_KEYS)
                .where(_KEYS.c.key_id == bindparam("v_key_id"))
                .values({c: bindparam(f"v_{c}") for c in values[0] if c != "key_id"}),
                old,
            )

    @staticmethod
    async def _write_schedules(
        connection: Any,
        stored: dict[tuple[str, str], ScheduleRow],
        changed: dict[tuple[str, str], ScheduleRow | None],
        now: datetime,
    ) -> None:
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        for at, row in changed.items():
            if row is None:
                deletes.append({"v_key_id": at[0], "v_purpose": at[1]})
            elif at not in stored:
                inserts.append(_schedule_values(row, now))
            else:
                updates.append({f"v_{c}": v for c, v in _schedule_values(row, now).items()})
        match = (_SCHEDULES.c.key_id == bindparam("v_key_id")) & (
            _SCHEDULES.c.purpose == bindparam("v_purpose")
        )
        if inserts:
            await connection.execute(_SCHEDULES.insert(), inserts)
        if updates:
            columns = [c for c in _SCHEDULE_COLUMNS if c not in ("key_id", "purpose")]
            await connection.execute(
                update(_SCHEDULES).where(match).values({c: bindparam(f"v_{c}") for c in columns}), updates
            )
        if deletes:
            await connection.execute(delete(_SCHEDULES).where(match), deletes)

    async def unsynced(
        self, key_id: str | None = None, limit: int = 500, *, key_ids: Sequence[str] | None = None
    ) -> list[ScheduleRow]:
        """Schedules NATS does not have yet (`pending`) or still has but should not (`cancelling`)."""
        query = select(_SCHEDULES).where(_SCHEDULES.c.state.in_([domain.PENDING, domain.CANCELLING]))
        if key_id is not None:
            query = query.where(_SCHEDULES.c.key_id == key_id)
        if key_ids is not None:
            query = query.where(_SCHEDULES.c.key_id.in_(list(key_ids)))
        async with self._session() as session:
            connection = await session.connection()
            return [_schedule_row(r) for r in await connection.execute(query.limit(limit))]

    async def mark_synced(self, rows: Sequence[ScheduleRow]) -> None:
        """After NATS took the changes: a published row becomes `scheduled`, a cancelled one is deleted.

        Matched on (state, due) so a change made meanwhile by a newer event is not overwritten.
        """
        match = (
            (_SCHEDULES.c.key_id == bindparam("k"))
            & (_SCHEDULES.c.purpose == bindparam("p"))
            & (_SCHEDULES.c.state == bindparam("s"))
            & (_SCHEDULES.c.due_at == bindparam("d"))
        )
        published = [
            {"k": r.key_id, "p": r.purpose, "s": r.state, "d": r.due_at}
            for r in rows
            if r.state == domain.PENDING
        ]
        cancelled = [
            {"k": r.key_id, "p": r.purpose, "s": r.state, "d": r.due_at}
            for r in rows
            if r.state != domain.PENDING
        ]
        async with self._writing() as session:
            connection = await session.connection()
            if published:
                await connection.execute(
                    update(_SCHEDULES).where(match).values(state=domain.SCHEDULED, updated_at=utcnow()),
                    published,
                )
            if cancelled:
                await connection.execute(delete(_SCHEDULES).where(match), cancelled)
            await session.commit()

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._session() as session:
            connection = await session.connection()
            row = (await connection.execute(_select_keys().where(_KEYS.c.key_id == key_id))).first()
            return _key_record(row) if row is not None else None

    async def get_schedule(self, key_id: str, purpose: str) -> ScheduleRow | None:
        rows = await self.schedules(key_id)
        return next((row for row in rows if row.purpose == purpose), None)

    async def schedules(self, key_id: str) -> list[ScheduleRow]:
        """The schedules held for a key, in no particular order."""
        async with self._session() as session:
            connection = await session.connection()
            query = _select_rows().where(_SCHEDULES.c.key_id == key_id)
            return [_schedule_row(r) for r in await connection.execute(query)]

    async def mark_fired_many(
        self, records: Sequence[FiredRecord], *, wake_relay: bool = True
    ) -> tuple[set[str], list[OutboxEntry]]:
        """Record handled schedules, with the events they emit, in one transaction. An event already in
        the outbox (a redelivered schedule: its id is deterministic) is not added again; returns the
        ids of those duplicates, and the outbox rows added (for a caller that publishes them at once,
        with `wake_relay=False`)."""
        now = utcnow()
        events = {e.event_id: e for *_, evs in records for e in evs}
        outbox = _OUTBOX
        async with self._writing() as session:
            connection = await session.connection()
            duplicates: set[str] = set()
            if events:
                found = await connection.execute(
                    select(outbox.c.event_id).where(outbox.c.event_id.in_(list(events)))
                )
                duplicates = set(found.scalars())
            await connection.execute(
                update(_SCHEDULES)
                .where(
                    (_SCHEDULES.c.key_id == bindparam("k"))
                    & (_SCHEDULES.c.purpose == bindparam("p"))
                    & (_SCHEDULES.c.due_at == bindparam("d"))
                )
                .values(state=domain.FIRED, updated_at=now),
                [{"k": key_id, "p": purpose, "d": due} for key_id, purpose, due, _ in records],
            )
            fresh: list[dict[str, Any]] = [
                {"event_id": event_id, "subject": e.subject, "payload": encode_event(e), "created_at": now}
                for event_id, e in events.items()
                if event_id not in duplicates
            ]
            added: list[OutboxEntry] = []
            if fresh:
                inserted = await connection.execute(
                    outbox.insert().returning(outbox.c.id, outbox.c.event_id), fresh
                )
                ids = {event_id: row_id for row_id, event_id in inserted.all()}
                added = [
                    OutboxEntry(ids[row["event_id"]], row["event_id"], row["subject"], row["payload"])
                    for row in fresh
                ]
            await session.commit()
        if fresh and wake_relay:
            self.on_commit()
        return duplicates, added

    async def fired_contexts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[KeyRecord | None, ScheduleRow | None]]:
        """For each (key, purpose): the key as known now and its schedule row, in one read."""
        key_ids = list({key_id for key_id, _ in wanted})
        async with self._session() as session:
            connection = await session.connection()
            keys = {
                r.key_id: _key_record(r)
                for r in await connection.execute(_select_keys().where(_KEYS.c.key_id.in_(key_ids)))
            }
            # By key (a `(key_id, purpose) IN (...)` row-value filter makes SQLite scan the whole table),
            # only the columns a ScheduleRow has; the purposes not asked for are dropped here.
            asked = set(wanted)
            rows = {
                (r.key_id, r.purpose): _schedule_row(r)
                for r in await connection.execute(_select_rows().where(_SCHEDULES.c.key_id.in_(key_ids)))
                if (r.key_id, r.purpose) in asked
            }
        return {(k, p): (keys.get(k), rows.get((k, p))) for k, p in wanted}

    # outbox

    async def pending_events(self, limit: int) -> Sequence[Any]:
        """Outbox rows not yet published (id, event_id, subject, payload), oldest first."""
        outbox = _OUTBOX
        async with self._session() as session:
            connection = await session.connection()
            result = await connection.execute(
                select(outbox.c.id, outbox.c.event_id, outbox.c.subject, outbox.c.payload)
                .where(outbox.c.published_at.is_(None))
                .order_by(outbox.c.id)
                .limit(limit)
            )
            return result.all()

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self._writing() as session:
            await session.execute(
                update(RotatorOutbox).where(col(RotatorOutbox.id).in_(ids)).values(published_at=utcnow())
            )
            await session.commit()
