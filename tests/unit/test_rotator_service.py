"""Rotator use cases on an in-memory store and fake NATS adapters (no database: see test_store_fakes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.rotator import domain
from services.rotator.service import Fired, RotatorService
from shared.commands import KeyAnswer, KeyCommand, KeyStatusQuery
from shared.events import KeyCreated, KeyExpiring, KeyRenewed, KeyRevoked, KeyView, parse_event
from tests.support.factories import key_view
from tests.support.fake_stores import FakeRotatorStore

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeScheduler:
    def __init__(self) -> None:
        self.live: dict[str, tuple[str, bytes]] = {}
        self.fail = False

    async def publish(self, subject: str, at: str, target: str, payload: bytes) -> None:
        if self.fail:
            raise ConnectionError("nats down")
        self.live[subject] = (at, payload)

    async def cancel(self, subject: str) -> None:
        self.live.pop(subject, None)

    async def publish_many(
        self, schedules: Sequence[tuple[str, str, str, bytes]]
    ) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for subject, at, target, payload in schedules:
            try:
                await self.publish(subject, at, target, payload)
            except ConnectionError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes


class FakeCommands:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.status = KeyAnswer(
            key_id="key_1", status="active", revision=1, expires_at=NOW + timedelta(days=30)
        )

    async def request_many(self, calls: Sequence[KeyCommand]) -> list[KeyAnswer]:
        answers = []
        for command in calls:
            if isinstance(command, KeyStatusQuery):
                answers.append(self.status)
                continue
            self.sent.append((command.subject.removeprefix("keys.cmd."), command.key_id))
            answers.append(KeyAnswer(key_id=command.key_id, status="active", revision=2))
        return answers


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def rig() -> Any:
    clock = Clock()
    scheduler, commands = FakeScheduler(), FakeCommands()
    service = RotatorService(
        FakeRotatorStore(), scheduler, commands, notices=[timedelta(days=7), timedelta(days=1)], clock=clock
    )
    return service, scheduler, commands, clock


def view(revision: int = 1, **overrides: Any) -> KeyView:
    return key_view(NOW, revision, **overrides)


def created(v: KeyView) -> KeyCreated:
    return KeyCreated(account_id=v.account_id, key_id=v.key_id, key=v, occurred_at=NOW)


async def test_renewal_replaces_and_revocation_cancels_schedules(rig: Any) -> None:
    service, scheduler, _, _ = rig
    await service.on_key_event(created(view()))
    assert sorted(scheduler.live) == [
        "keys.schedule.expire.key_1",
        "keys.schedule.notice-1d.key_1",
        "keys.schedule.notice-7d.key_1",
    ]
    before = dict(scheduler.live)
    renewed = view(2, expires_at=NOW + timedelta(days=60))
    await service.on_key_event(KeyRenewed(account_id="acct", key_id="key_1", key=renewed, occurred_at=NOW))
    assert sorted(scheduler.live) == sorted(before)
    assert all(scheduler.live[s][0] != before[s][0] for s in before)
    await service.on_key_event(KeyRevoked(account_id="acct", key_id="key_1", key=view(3, status="revoked")))
    assert scheduler.live == {}


async def test_stale_and_duplicate_events_change_nothing(rig: Any) -> None:
    service, scheduler, _, _ = rig
    await service.on_key_event(KeyRevoked(account_id="acct", key_id="key_1", key=view(2, status="revoked")))
    assert await service.on_key_event(created(view(1))) is False
    assert scheduler.live == {}


async def test_a_publish_lost_to_a_crash_is_repaired_by_the_next_sync(rig: Any) -> None:
    service, scheduler, _, _ = rig
    scheduler.fail = True
    with pytest.raises(ConnectionError):
        await service.on_key_event(created(view()))
    scheduler.fail = False
    # The redelivered event is a duplicate, but its schedules still go out.
    await service.on_key_event(created(view()))
    assert len(scheduler.live) == 3


async def test_a_fired_notice_emits_one_key_expiring_however_often_it_is_redelivered(rig: Any) -> None:
    service, scheduler, _, clock = rig
    await service.on_key_event(created(view()))
    _at, payload = scheduler.live["keys.schedule.notice-7d.key_1"]
    fired = Fired.decode(json.loads(payload))
    clock.now = fired.due - timedelta(milliseconds=300)
    assert (await service.on_fired(fired)).action == domain.EARLY
    clock.now = fired.due
    assert (await service.on_fired(fired)).action == domain.NOTIFY
    assert (await service.on_fired(fired)).action == domain.NOTIFY  # redelivered: the outbox holds one
    events = await service.store.pending_events(10)
    assert len(events) == 1
    row = await service.store.get_schedule("key_1", "notice-7d")
    assert row is not None and row.state == domain.FIRED
    event = parse_event(events[0].payload)
    assert isinstance(event, KeyExpiring) and event.notice == "7d"
    assert events[0].event_id == domain.notice_event_id("key_1", "notice-7d", fired.expires_at)


async def test_auto_renew_key_is_renewed_at_its_last_notice(rig: Any) -> None:
    service, scheduler, commands, clock = rig
    await service.on_key_event(created(view(auto_renew=True)))
    fired = Fired.decode(json.loads(scheduler.live["keys.schedule.notice-1d.key_1"][1]))
    clock.now = fired.due
    assert (await service.on_fired(fired)).action == domain.RENEW
    assert commands.sent == [("renew", "key_1")]
    assert await service.store.pending_events(10) == []


async def test_a_notice_is_dropped_when_the_issuer_says_the_key_changed_meanwhile(rig: Any) -> None:
    service, scheduler, commands, clock = rig
    await service.on_key_event(created(view()))
    fired = Fired.decode(json.loads(scheduler.live["keys.schedule.notice-7d.key_1"][1]))
    clock.now = fired.due
    commands.status = KeyAnswer(key_id="key_1", status="revoked", revision=3, expires_at=fired.expires_at)
    assert (await service.on_fired(fired)).action == domain.NOTIFY
    assert await service.store.pending_events(10) == []
    row = await service.store.get_schedule("key_1", "notice-7d")
    assert row is not None and row.state == domain.FIRED


async def test_a_batch_applies_each_keys_events_in_order_and_skips_stale_ones(rig: Any) -> None:
    service, scheduler, _, _ = rig
    other = key_view(NOW, 1, key_id="key_2")
    renewed = view(2, expires_at=NOW + timedelta(days=60))
    applied = await service.on_key_events(
        [
            created(view()),
            created(other),
            KeyRenewed(account_id="acct", key_id="key_1", key=renewed, occurred_at=NOW),
            created(view(1)),  # redelivered, older than what the batch already applied
        ]
    )
    assert applied == [True, True, True, False]
    assert len(scheduler.live) == 6
    expire_at = scheduler.live["keys.schedule.expire.key_1"][0]
    assert expire_at == domain.at_header(NOW + timedelta(days=60))
    rows = await service.store.schedules("key_1")
    assert {r.state for r in rows} == {domain.SCHEDULED}
    # The same batch again changes nothing and publishes nothing new.
    scheduler.live.clear()
    assert await service.on_key_events([created(view()), created(other)]) == [False, False]
    assert scheduler.live == {}


async def test_a_batch_revocation_cancels_and_a_failed_publish_is_repaired(rig: Any) -> None:
    service, scheduler, _, _ = rig
    scheduler.fail = True
    with pytest.raises(ConnectionError):
        await service.on_key_events([created(view()), created(key_view(NOW, 1, key_id="key_2"))])
    scheduler.fail = False
    revoked = KeyRevoked(account_id="acct", key_id="key_1", key=view(2, status="revoked"))
    assert await service.on_key_events([revoked, created(key_view(NOW, 1, key_id="key_2"))]) == [True, False]
    assert sorted(scheduler.live) == [
        "keys.schedule.expire.key_2",
        "keys.schedule.notice-1d.key_2",
        "keys.schedule.notice-7d.key_2",
    ]
    assert await service.store.schedules("key_1") == []
    assert await service.store.unsynced() == []


async def test_a_notice_is_handed_to_publish_now_once_however_often_it_is_redelivered(rig: Any) -> None:
    service, scheduler, _, clock = rig
    handed: list[Any] = []

    async def publish_now(rows: Sequence[Any]) -> None:
        handed.extend(rows)

    service.publish_now = publish_now
    await service.on_key_event(created(view()))
    fired = Fired.decode(json.loads(scheduler.live["keys.schedule.notice-7d.key_1"][1]))
    clock.now = fired.due
    assert (await service.on_fired(fired)).action == domain.NOTIFY
    assert (await service.on_fired(fired)).action == domain.NOTIFY  # redelivered
    assert [row.event_id for row in handed] == [
        domain.notice_event_id("key_1", "notice-7d", fired.expires_at)
    ]
    # Still pending in the outbox until published: the relay is the fallback.
    assert [row.id for row in await service.store.pending_events(10)] == [handed[0].id]
