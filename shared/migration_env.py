"""The body of every service's Alembic env.py: online migrations on the connection the caller hands in
(or a fresh async engine from the service's settings, for the `alembic` command line)."""

from __future__ import annotations

import asyncio

from alembic import context
from alembic.runtime.environment import IncludeObjectFn, NameFilterType
from sqlalchemy.engine import Connection
from sqlalchemy.sql.schema import SchemaItem
from sqlmodel import SQLModel

from shared.db import create_engine
from shared.migrations import version_table
from shared.settings import Settings


def _include(service: str) -> IncludeObjectFn:
    def include(
        obj: SchemaItem,
        name: str | None,
        type_: NameFilterType,
        reflected: bool,
        compare_to: SchemaItem | None,
    ) -> bool:
        # Only this service's tables: every service's models share SQLModel.metadata.
        return type_ != "table" or str(name).startswith(f"{service}_")

    return include


def _run(connection: Connection, service: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        version_table=version_table(service),
        include_object=_include(service),
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run(service: str) -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection, service)
        return

    async def standalone() -> None:
        engine = create_engine(Settings().database_url(service))
        async with engine.begin() as conn:
            await conn.run_sync(_run, service)
        await engine.dispose()

    asyncio.run(standalone())
