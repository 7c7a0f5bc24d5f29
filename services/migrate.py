"""`cnx-keys migrate`: apply each service's schema migrations to the store its settings name."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from shared.db import create_engine
from shared.migrations import SERVICES_DIR, current_revision, head_revision, upgrade
from shared.settings import Settings

SERVICES = ("issuer", "validator", "rotator", "notifier")


def migratable() -> list[str]:
    return [name for name in SERVICES if (SERVICES_DIR / name / "migrations").is_dir()]


async def migrate_services(names: Sequence[str], settings: Settings | None = None) -> int:
    settings = settings or Settings()
    unknown = [name for name in names if name not in migratable()]
    if unknown:
        print(
            f"cnx-keys migrate: no migrations for {', '.join(unknown)}; choose from {', '.join(migratable())}"
        )
        return 2
    for name in names or migratable():
        importlib.import_module(f"services.{name}.store")
        engine = create_engine(settings.database_url(name))
        try:
            before = await current_revision(engine, name)
            await upgrade(engine, name)
            where = engine.url.render_as_string(hide_password=True)
            print(f"{name}: {before or 'empty'} -> {head_revision(name)} ({where})")
        finally:
            await engine.dispose()
    return 0
