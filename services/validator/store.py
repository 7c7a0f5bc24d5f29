"""The validator's own store: the projection (key views by id) and the last stream sequence applied.

On start the validator loads everything from here and resumes the event stream after `last_seq`, so
its position in the stream is exactly as durable as its state.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from sqlmodel import Field, SQLModel, col, select

from shared.db import StoreBase
from shared.events import KeyView
from shared.validation import PlansChanged


class ValidatorKey(SQLModel, table=True):
    __tablename__ = "validator_keys"

    key_id: str = Field(primary_key=True, max_length=40)
    revision: int
    view: str


class ValidatorCursor(SQLModel, table=True):
    __tablename__ = "validator_cursor"

    name: str = Field(primary_key=True, max_length=40)
    last_seq: int = 0


class ValidatorAccountPlan(SQLModel, table=True):
    """The latest `platform.plans.changed` per account: it overrides the plan in the keys' views."""

    __tablename__ = "validator_account_plans"

    account_id: str = Field(primary_key=True, max_length=200)
    change: str


async def _read_sqlite_views(path: Path, batch: int) -> AsyncIterator[list[str]]:
    # The cursor moves between the executor's threads, one call at a time: allowed with this flag.
    db = await asyncio.to_thread(sqlite3.connect, str(path), check_same_thread=False)
    try:
        cursor = await asyncio.to_thread(db.execute, "SELECT view FROM validator_keys")
        while rows := await asyncio.to_thread(cursor.fetchmany, batch):
            yield [row[0] for row in rows]
    finally:
        db.close()


TABLES = [ValidatorKey.__table__, ValidatorCursor.__table__, ValidatorAccountPlan.__table__]
EVENTS_CURSOR = "events"


class ValidatorStore(StoreBase):
    service = "validator"

    async def load_all(self, batch: int = 50_000) -> list[KeyView]:
        views: list[KeyView] = []
        async with self._session() as session:
            result = await session.stream_scalars(select(ValidatorKey).order_by(col(ValidatorKey.key_id)))
            async for row in result:
                views.append(KeyView.model_validate_json(row.view))
        return views

    async def stream_views(self, batch: int = 20_000) -> AsyncIterator[list[str]]:
        """Every stored view as its JSON text, in batches: hydration decodes them without a pydantic
        model or an ORM object per row (a million keys load in seconds, not minutes)."""
        path = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and path and path != ":memory:":
            # Python's sqlite3 on worker threads: it lets go of the GIL while SQLite
            # steps, so the next batch is read while this one is decoded (aiosqlite + SQLAlchemy rows
            # cost about as much as the decoding itself).
            async for texts in _read_sqlite_views(Path(path), batch):
                yield texts
            return
        async with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                # asyncpg's own cursor: half the time of SQLAlchemy rows over the same query.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                async with raw.transaction():
                    cursor = await raw.cursor("SELECT view FROM validator_keys")
                    while records := await cursor.fetch(batch):
                        yield [record[0] for record in records]
                return
            result = await conn.stream(select(col(ValidatorKey.view)))
            async for rows in result.partitions(batch):
                yield [row[0] for row in rows]

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

    async def save(self, views: Sequence[KeyView], last_seq: int) -> None:
        """Keep the newest revision of each view and advance the stream position, in one transaction."""
        async with self._session() as session:
            for view in views:
                row = await session.get(ValidatorKey, view.key_id)
                if row is None:
                    session.add(
                        ValidatorKey(key_id=view.key_id, revision=view.revision, view=view.model_dump_json())
                    )
                elif view.revision > row.revision:
                    row.revision = view.revision
                    row.view = view.model_dump_json()
                    session.add(row)
            cursor = await session.get(ValidatorCursor, EVENTS_CURSOR)
            if cursor is None:
                session.add(ValidatorCursor(name=EVENTS_CURSOR, last_seq=last_seq))
            elif last_seq > cursor.last_seq:
                cursor.last_seq = last_seq
                session.add(cursor)
            await session.commit()
