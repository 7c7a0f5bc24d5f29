"""The rotator's store, SQLite and PostgreSQL: the contract its use cases rely on (also run on the fake
the unit tests use, tests/unit/test_store_fakes.py), and the use cases on it: batches of key events,
fired schedules recorded once, the outbox rows handed over for publishing at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

from services.rotator import domain
from services.rotator.service import Fired, RotatorService
from services.rotator.store import RotatorStore
from shared.commands import KeyAnswer
from shared.db import create_engine
from shared.events import KeyRenewed, KeyRevoked
from tests.support.factories import key_view
from tests.support.store_contracts import RotatorStoreContract
from tests.unit.test_rotator_service import NOW, Clock, FakeCommands, FakeScheduler, created


class TestRotatorStore(RotatorStoreContract):
    @pytest.fixture
    async def store(self, backend: str, make_database_url: Any) -> AsyncIterator[RotatorStore]:
        store = RotatorStore(create_engine(make_database_url("rotator", backend)))
        await store.prepare_schema()
        yield store
        await store.close()


async def test_batches_and_fired_schedules_on_each_backend(backend: str, make_database_url: Any) -> None:
    store = RotatorStore(create_engine(make_database_url("rotator", backend)))
    await store.prepare_schema()
    scheduler, commands, clock = FakeScheduler(), FakeCommands(), Clock()
    # The issuer's answer to the notice's status query: the key as renewed below.
    commands.status = KeyAnswer(
        key_id="key_1", status="active", revision=2, expires_at=NOW + timedelta(days=60)
    )
    handed: list[Any] = []

    async def publish_now(rows: Sequence[Any]) -> None:
        handed.extend(rows)

    service = RotatorService(
        store,
        scheduler,
        commands,
        notices=[timedelta(days=7), timedelta(days=1)],
        clock=clock,
        publish_now=publish_now,
    )
    try:
        one, two = key_view(NOW, 1), key_view(NOW, 1, key_id="key_2")
        renewed = key_view(NOW, 2, expires_at=NOW + timedelta(days=60))
        applied = await service.on_key_events(
            [
                created(one),
                created(two),
                KeyRenewed(account_id="acct", key_id="key_1", key=renewed, occurred_at=NOW),
                created(one),
            ]
        )
        assert applied == [True, True, True, False]
        assert len(scheduler.live) == 6
        assert {r.state for r in await store.schedules("key_1")} == {domain.SCHEDULED}
        revoked = KeyRevoked(
            account_id="acct", key_id="key_2", key=key_view(NOW, 2, key_id="key_2", status="revoked")
        )
        assert await service.on_key_events([revoked]) == [True]
        assert await store.schedules("key_2") == []

        fired = Fired.decode(json.loads(scheduler.live["keys.schedule.notice-7d.key_1"][1]))
        clock.now = fired.due
        assert (await service.on_fired(fired)).action == domain.NOTIFY
        assert (await service.on_fired(fired)).action == domain.NOTIFY  # redelivered: recorded once
        assert [row.event_id for row in handed] == [
            domain.notice_event_id("key_1", "notice-7d", fired.expires_at)
        ]
        assert [row.id for row in await store.pending_events(10)] == [handed[0].id]
        await store.mark_published([handed[0].id])
        assert await store.pending_events(10) == []
        row = await store.get_schedule("key_1", "notice-7d")
        assert row is not None and row.state == domain.FIRED
    finally:
        await store.close()
