"""Async engine and session factory: SQLite (default) or PostgreSQL, chosen by URL.

Nothing connects at import time: a service's composition root calls `create_engine` with its own URL
and creates only its own tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Column, DateTime, Table, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.migrations import ensure_schema


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (`postgresql://`, `sqlite:///`) and pick the async drivers."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def is_sqlite(url: str) -> bool:
    return normalize_url(url).startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    if is_sqlite(url):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            # WAL lets readers run beside the single writer. NORMAL: no fsync per commit, only at
            # checkpoints; a crash of the process loses nothing and the file stays consistent, but a
            # power loss or kernel crash can lose the last commits (FULL would fsync each one). For
            # SQLite (local and single-node use); PostgreSQL is the store for durable deployments.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a SQLModel table class, for statements that skip the ORM (SQLAlchemy sets
    `__table__` when the class is made, so type checkers do not see it there)."""
    table = sa_inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def timestamp_field(*, nullable: bool) -> Any:
    """A timezone-aware timestamp column for a SQLModel table (SQLite hands it back naive: see
    shared.timeutil.as_utc)."""
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable))


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception:
        return False
    return True


class StoreBase:
    """What every service's store shares: its engine and sessions, schema check, ping and close."""

    service: str = ""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = session_factory(engine)
        # SELECT ... FOR UPDATE where the database has it; SQLite serialises writers anyway.
        self._lock_rows = not is_sqlite(str(engine.url))
        # SQLite has one writer at a time, and a second one waits in its busy handler, which sleeps up to
        # 100 ms between tries: under load those sleeps, not the work, set the pace. So the writers of
        # one process take turns here instead (measured on the rotator: benchmarks/lifecycle_lateness.py).
        self._write_turn: AbstractAsyncContextManager[object] = (
            nullcontext() if self._lock_rows else asyncio.Lock()
        )

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A session for a transaction that writes; on SQLite it waits for this process's other writers."""
        async with self._write_turn, self._session() as session:
            yield session

    async def prepare_schema(self, *, migrate: bool = True) -> None:
        """Bring the schema to this release's head by running the service's Alembic migrations; with
        `migrate=False`, only check it is there and refuse to start if not (see shared.migrations)."""
        await ensure_schema(self.engine, self.service, migrate=migrate)

    async def ping(self) -> bool:
        return await ping(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()
