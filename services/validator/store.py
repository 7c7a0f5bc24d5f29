"""The validator's own store: the projection (key views by id) and the last stream sequence applied.

On start the validator loads everything from here and resumes the event stream after `last_seq`, so
its position in the stream is exactly as durable as its state. Beside each view, when the key ended
for good (`ends_at`, projection.ends_at): a key past it by the retention is neither loaded nor kept
(`prune` deletes it in batches; `save` does not write one in).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from sqlalchemy import bindparam, delete, update
from sqlmodel import Field, SQLModel, col, select

from shared.db import StoreBase, table_of
from shared.events import KeyView
from shared.validation import PlansChanged

from .projection import INF, view_ends_at

# One view and its end (epoch seconds; None: never), as hydration reads them.
StoredView = tuple[str, float | None]


class ValidatorKey(SQLModel, table=True):
    __tablename__ = "validator_keys"

    key_id: str = Field(primary_key=True, max_length=40)
    revision: int
    view: str
    # When the key ended for good (epoch seconds; null: an active key without expiry).
    ends_at: float | None = Field(default=None, index=True)


class ValidatorCursor(SQLModel, table=True):
    __tablename__ = "validator_cursor"

    name: str = Field(primary_key=True, max_length=40)
    last_seq: int = 0


class ValidatorAccountPlan(SQLModel, table=True):
    """The latest `platform.plans.changed` per account: it overrides the plan in the keys' views."""

    __tablename__ = "validator_account_plans"

    account_id: str = Field(primary_key=True, max_length=200)
    change: str


_SELECT_VIEWS = "SELECT view, ends_at FROM validator_keys WHERE ends_at IS NULL OR ends_at > "


async def _read_sqlite_views(path: Path, batch: int, cutoff: float) -> AsyncIterator[list[StoredView]]:
    # The cursor moves between the executor's threads, one call at a time: allowed with this flag.
    db = await asyncio.to_thread(sqlite3.connect, str(path), check_same_thread=False)
    try:
        cursor = await asyncio.to_thread(db.execute, _SELECT_VIEWS + "?", (cutoff,))
        while rows := await asyncio.to_thread(cursor.fetchmany, batch):
            yield rows
    finally:
        db.close()


_KEYS = table_of(ValidatorKey)
EVENTS_CURSOR = "events"


class ValidatorStore(StoreBase):
    service = "validator"

    async def stream_views(
        self, batch: int = 20_000, cutoff: float = -INF
    ) -> AsyncIterator[list[StoredView]]:
        """Every stored view as its JSON text with its end, in batches, but those that ended at or
        before `cutoff` (now - retention): hydration decodes them without a pydantic model or an ORM
        object per row (a million keys load in seconds, not minutes)."""
        # -INF is no value SQL takes: below any stored end all the same.
        cutoff = max(cutoff, -1e300)
        path = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and path and path != ":memory:":
            # Python's sqlite3 on worker threads: it lets go of the GIL while SQLite
            # steps, so the next batch is read while this one is decoded (aiosqlite + SQLAlchemy rows
            # cost about as much as the decoding itself).
            async for stored in _read_sqlite_views(Path(path), batch, cutoff):
                yield stored
            return
        async with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                # asyncpg's own cursor: half the time of SQLAlchemy rows over the same query.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                async with raw.transaction():
                    cursor = await raw.cursor(_SELECT_VIEWS + "$1", cutoff)
                    while records := await cursor.fetch(batch):
                        yield [(record[0], record[1]) for record in records]
                return
            ends = col(ValidatorKey.ends_at)
            result = await conn.stream(
                select(col(ValidatorKey.view), ends).where(ends.is_(None) | (ends > cutoff))
            )
            async for rows in result.partitions(batch):
                yield [(row[0], row[1]) for row in rows]

    async def load_plans(self) -> list[PlansChanged]:
        async with self._session() as session:
            rows = (await session.execute(select(ValidatorAccountPlan))).scalars().all()
            return [PlansChanged.model_validate_json(row.change) for row in rows]

    async def save_plan(self, change: PlansChanged) -> None:
        async with self._session() as session:
            row = await session.get(ValidatorAccountPlan, change.account_id)
            if row is None:
                change_json = change.model_dump_json()
                session.add(ValidatorAccountPlan(account_id=change.account_id, change=change_json))
            else:
                row.change = change.model_dump_json()
                session.add(row)
            await session.commit()

    async def last_seq(self) -> int:
        async with self._session() as session:
            cursor = await session.get(ValidatorCursor, EVENTS_CURSOR)
            return cursor.last_seq if cursor else 0

    async def save(
        self,
        views: Sequence[KeyView],
        last_seq: int,
        *,
        ends: Sequence[float] | None = None,
        cutoff: float = -INF,
    ) -> None:
        """Keep the newest revision of each view and advance the stream position, in one transaction: one
        read of the revisions held, then one statement per kind of write (a replica replaying the stream
        saves batches of hundreds of events; a read and a write per view capped that near 1,000/s).

        `ends`: each view's end (projection.ends_at, from its event's time), else read from the view
        alone. A newest view that ended at or before `cutoff` (now - retention) is not written, and its
        key's row goes: a replay of old events brings back no key already past its retention."""
        if ends is None:
            ends = [view_ends_at(view) for view in views]
        newest: dict[str, tuple[KeyView, float]] = {}
        for view, end in zip(views, ends, strict=True):
            seen = newest.get(view.key_id)
            if seen is None or view.revision > seen[0].revision:
                newest[view.key_id] = (view, end)
        gone = [key_id for key_id, (_, end) in newest.items() if end <= cutoff]
        for key_id in gone:
            del newest[key_id]
        async with self._writing() as session:
            connection = await session.connection()
            held: dict[str, int] = {}
            if newest:
                query = select(_KEYS.c.key_id, _KEYS.c.revision).where(_KEYS.c.key_id.in_(list(newest)))
                held = {key_id: revision for key_id, revision in (await connection.execute(query)).all()}
            new = [
                {
                    "key_id": v.key_id,
                    "revision": v.revision,
                    "view": v.model_dump_json(),
                    "ends_at": None if end == INF else end,
                }
                for v, end in newest.values()
                if v.key_id not in held
            ]
            # An UPDATE's bound names must differ from its column names.
            newer = [
                {
                    "v_key_id": v.key_id,
                    "v_revision": v.revision,
                    "v_view": v.model_dump_json(),
                    "v_ends_at": None if end == INF else end,
                }
                for v, end in newest.values()
                if v.key_id in held and v.revision > held[v.key_id]
            ]
            if gone:
                await connection.execute(delete(_KEYS).where(_KEYS.c.key_id.in_(gone)))
            if new:
                await connection.execute(_KEYS.insert(), new)
            if newer:
                await connection.execute(
                    update(_KEYS)
                    .where(_KEYS.c.key_id == bindparam("v_key_id"))
                    .values(
                        revision=bindparam("v_revision"),
                        view=bindparam("v_view"),
                        ends_at=bindparam("v_ends_at"),
                    ),
                    newer,
                )
            cursor = await session.get(ValidatorCursor, EVENTS_CURSOR)
            if cursor is None:
                session.add(ValidatorCursor(name=EVENTS_CURSOR, last_seq=last_seq))
            elif last_seq > cursor.last_seq:
                cursor.last_seq = last_seq
                session.add(cursor)
            await session.commit()

    async def prune(self, cutoff: float, batch: int = 5_000) -> int:
        """Delete the keys that ended at or before `cutoff` (now - retention), `batch` rows per
        transaction (the event writer waits for one batch at most, not for the whole prune); how many
        were deleted. A key's end is final, so a view written meanwhile cannot bring one back to life."""
        ends = _KEYS.c.ends_at
        deleted = 0
        while True:
            async with self._writing() as session:
                connection = await session.connection()
                chosen = select(_KEYS.c.key_id).where(ends <= cutoff).limit(batch)
                result = await connection.execute(
                    delete(_KEYS).where(_KEYS.c.key_id.in_(chosen), ends <= cutoff)
                )
                await session.commit()
            count = int(getattr(result, "rowcount", 0) or 0)
            deleted += count
            if count < batch:
                return deleted
