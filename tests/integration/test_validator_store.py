"""The validator's store on SQLite and PostgreSQL: what it saved comes back whole at hydration, in
batches, through the backend's own fast read (sqlite3 on worker threads, asyncpg's cursor)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.validator.service import ValidatorService
from services.validator.store import ValidatorStore
from shared.db import create_engine
from tests.support.factories import key_view

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def test_hydration_reads_every_saved_view(backend: str, make_database_url: Any) -> None:
    store = ValidatorStore(create_engine(make_database_url("validator", backend)))
    await store.prepare_schema()
    try:
        views = [key_view(NOW, 1, key_id=f"key_{i:04d}", digest=f"{i:064x}") for i in range(250)]
        await store.save(views, 41)
        # A later revision of one key replaces the stored view.
        await store.save([key_view(NOW, 2, key_id="key_0007", digest=f"{7:064x}", status="revoked")], 42)

        batches = [batch async for batch in store.stream_views(batch=100)]
        assert [len(b) for b in batches] == [100, 100, 50]

        service = ValidatorService(store, peppers=[b"pepper"])
        assert await service.hydrate() == 250
        assert service.last_seq == 42
        entry = service.projection.entry("key_0007")
        assert entry is not None and entry.status == "revoked" and entry.revision == 2
        assert {service.projection.key_id_at(row) for row in range(250)} == {v.key_id for v in views}
    finally:
        await store.close()
