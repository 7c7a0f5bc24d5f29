"""The notifier's delivery log on SQLite and PostgreSQL: the contract its use cases rely on, also run on
the fake the unit tests use (tests/unit/test_store_fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.notifier.store import NotifierStore
from shared.db import create_engine
from tests.support.store_contracts import NotifierStoreContract


class TestNotifierStore(NotifierStoreContract):
    @pytest.fixture
    async def store(self, backend: str, make_database_url: Any) -> AsyncIterator[NotifierStore]:
        store = NotifierStore(create_engine(make_database_url("notifier", backend)))
        await store.prepare_schema()
        yield store
        await store.close()
