"""Throwaway databases for the store tests: a SQLite file, or a fresh PostgreSQL database per call.

Synchronous on purpose (asyncpg runs in a private thread and loop), so the factory works from sync and
async fixtures alike, whatever event loop the test session is running.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DATABASE = "test"
PG_USERS = ("postgres", "root")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own in a helper thread, from any context."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(_await(make)))
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=target, name="pg-admin")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _await(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


@dataclass(frozen=True)
class PostgresProbe:
    admin_url: str | None
    reason: str


def probe_postgres(
    host: str = PG_HOST, port: int = PG_PORT, database: str = PG_DATABASE, users: tuple[str, ...] = PG_USERS
) -> PostgresProbe:
    """The first user that can connect and create databases, as an admin URL; or why none could."""
    failures: list[str] = []
    for user in users:
        url = f"postgresql://{user}@{host}:{port}/{database}"

        async def check(url: str = url) -> bool:
            conn = await asyncpg.connect(url, timeout=3)
            try:
                query = "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                return bool(await conn.fetchval(query))
            finally:
                await conn.close()

        try:
            if run_sync(check):
                return PostgresProbe(url, f"PostgreSQL at {host}:{port} as {user}")
            failures.append(f"{user}: may not create databases")
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            failures.append(f"{user}: {type(exc).__name__}: {exc}")
    return PostgresProbe(None, f"no usable PostgreSQL at {host}:{port}/{database} ({'; '.join(failures)})")


def _with_database(url: str, database: str, driver: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((driver, parts.netloc, f"/{database}", "", ""))


@dataclass
class DatabaseFactory:
    """Hands out fresh database URLs and drops what it created at close()."""

    sqlite_dir: Path
    admin_url: Callable[[], str]  # called only for postgres, so SQLite-only runs never need the server
    created: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, service: str, backend: str) -> str:
        tag = uuid.uuid4().hex[:10]
        if backend == "sqlite":
            self.sqlite_dir.mkdir(parents=True, exist_ok=True)
            # Four slashes: the path after sqlite:/// is absolute.
            return f"sqlite+aiosqlite:///{self.sqlite_dir / f'{service}-{tag}.db'}"
        if backend == "postgres":
            admin = self.admin_url()
            name = f"cnx_t_{tag}"

            async def create() -> None:
                conn = await asyncpg.connect(admin, timeout=5)
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()

            run_sync(create)
            self.created.append((admin, name))
            return _with_database(admin, name, "postgresql+asyncpg")
        raise ValueError(f"unknown backend {backend!r}: use 'sqlite' or 'postgres'")

    def close(self) -> None:
        async def drop_all() -> None:
            for admin, name in self.created:
                conn = await asyncpg.connect(admin, timeout=5)
                try:
                    # FORCE: an engine a test forgot to dispose must not keep the database alive.
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()

        if self.created:
            run_sync(drop_all)
            self.created.clear()
