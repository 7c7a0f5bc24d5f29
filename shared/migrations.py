"""Schema migrations with Alembic: one history per service (`services/<name>/migrations`), each with its
own version table (`alembic_version_<name>`), so services may even share one database.

On start a service checks its store: at the head revision it goes on; behind (or empty) it migrates
when allowed (`CNX_AUTO_MIGRATE`, on by default only for local deployments) and otherwise refuses with
a message naming `cnx-keys migrate`; at a revision this code does not know (a newer release migrated
it) it always refuses, since running old code on a newer schema can corrupt data.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


class SchemaMismatch(RuntimeError):
    """The store's schema is not the one this code was written for."""


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def alembic_config(service: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    config.attributes["service"] = service
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision(service: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(service)).get_current_head()
    assert head is not None, f"{service} has no migrations"
    return head


def known_revisions(service: str) -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config(service)).walk_revisions()}


def _current(connection: Connection, service: str) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": version_table(service)})
    return context.get_current_revision()


async def current_revision(engine: AsyncEngine, service: str) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current, service)


async def upgrade(engine: AsyncEngine, service: str, revision: str = "head") -> None:
    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(service, connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


def _shown(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


async def ensure_schema(engine: AsyncEngine, service: str, *, migrate: bool) -> None:
    """Make sure the store is at this code's head revision, or refuse to start with a clear message."""
    current = await current_revision(engine, service)
    head = head_revision(service)
    if current == head:
        return
    if current is not None and current not in known_revisions(service):
        raise SchemaMismatch(
            f"the {service} store at {_shown(engine)} is at schema revision {current}, newer than this "
            f"release knows (head {head}); run the release that migrated it, or a newer one"
        )
    if not migrate:
        raise SchemaMismatch(
            f"the {service} store at {_shown(engine)} is at schema revision {current or 'none (empty)'}, "
            f"this release needs {head}: run `cnx-keys migrate {service}` first"
        )
    await upgrade(engine, service)
