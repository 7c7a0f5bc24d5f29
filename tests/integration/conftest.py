"""Fixtures the integration tests of one service's store share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.issuer.store import IssuerStore
from shared.db import create_engine


@pytest.fixture
async def issuer_store(backend: str, make_database_url: Any) -> AsyncIterator[IssuerStore]:
    """The issuer's store on a fresh database of the test's backend (SQLite, PostgreSQL), schema made."""
    store = IssuerStore(create_engine(make_database_url("issuer", backend)))
    await store.prepare_schema()
    try:
        yield store
    finally:
        await store.close()
