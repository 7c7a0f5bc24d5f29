"""Each service's migration history on SQLite and PostgreSQL: it builds exactly the tables the code
models, a service refuses an unmigrated or newer store with a clear message, and `cnx-keys migrate`
brings a store to head."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from services.migrate import migratable, migrate_services
from shared.db import create_engine
from shared.migrations import SchemaMismatch, ensure_schema, head_revision, version_table
from shared.settings import Settings


@pytest.fixture(params=migratable())
def service(request: pytest.FixtureRequest) -> str:
    importlib.import_module(f"services.{request.param}.store")
    return str(request.param)


async def test_migrations_build_what_the_models_describe(
    service: str, backend: str, make_database_url: Any
) -> None:
    engine = create_engine(make_database_url(service, backend))
    try:
        await ensure_schema(engine, service, migrate=True)

        def diff(connection: Any) -> list[Any]:
            context = MigrationContext.configure(
                connection,
                opts={
                    "include_object": lambda obj, name, type_, *_: (
                        type_ != "table" or str(name).startswith(f"{service}_")
                    ),
                    "version_table": version_table(service),
                },
            )
            return [d for d in compare_metadata(context, SQLModel.metadata) if service in repr(d)]

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_a_service_refuses_an_unmigrated_or_newer_store(
    service: str, backend: str, make_database_url: Any
) -> None:
    engine = create_engine(make_database_url(service, backend))
    try:
        with pytest.raises(SchemaMismatch, match=f"cnx-keys migrate {service}"):
            await ensure_schema(engine, service, migrate=False)
        await ensure_schema(engine, service, migrate=True)
        await ensure_schema(engine, service, migrate=False)  # at head: fine
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {version_table(service)} SET version_num = 'f00dcafe9999'"))
        with pytest.raises(SchemaMismatch, match="newer than this release"):
            await ensure_schema(engine, service, migrate=True)
    finally:
        await engine.dispose()


async def test_cnx_keys_migrate_brings_stores_to_head(make_database_url: Any, backend: str) -> None:
    urls = {f"{name}_database_url": make_database_url(name, backend) for name in migratable()}
    settings = Settings(**urls)  # type: ignore[arg-type]
    assert await migrate_services([], settings) == 0
    for name in migratable():
        engine = create_engine(settings.database_url(name))
        try:
            await ensure_schema(engine, name, migrate=False)
            async with engine.connect() as conn:
                version = (
                    await conn.execute(text(f"SELECT version_num FROM {version_table(name)}"))
                ).scalar()
            assert version == head_revision(name)
        finally:
            await engine.dispose()
    assert await migrate_services(["nonsense"], settings) == 2
