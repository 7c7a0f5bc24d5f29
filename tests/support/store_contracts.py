"""What the rotator's and the notifier's use cases rely on of their stores (services/*/ports.py), as
test classes with no `store` of their own: a subclass gives the fixture. tests/integration runs them on
the real stores, SQLite and PostgreSQL; tests/unit on the fakes of tests/support/fake_stores.py, so the
fakes the use-case tests run on behave as the stores do.

Only the Protocol's methods are used, plus the reads both sides have for tests (`schedules`,
`pending_events`; `deliveries`, `attempts`, `count`). Registered for pytest's assertion rewriting in
tests/conftest.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.notifier import domain as notifier
from services.rotator import domain as rotator
from services.rotator.domain import PlanFn
from shared.events import KeyExpiring, KeyView
from tests.support.factories import key_view

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NOTICES = [timedelta(days=7), timedelta(days=1)]


def planner(view: KeyView, now: datetime = NOW) -> PlanFn:
    """The schedule changes the rotator asks for on `view` (as RotatorService._planner)."""
    wanted = rotator.plan(view, NOTICES, now)
    return lambda existing: rotator.diff(existing, wanted)


def applying(*views: KeyView) -> list[tuple[KeyView, PlanFn]]:
    return [(view, planner(view)) for view in views]


def expiring_event(view: KeyView, purpose: str = "notice-7d") -> KeyExpiring:
    return KeyExpiring(
        event_id=rotator.notice_event_id(view.key_id, purpose, view.expires_at),
        account_id=view.account_id,
        key_id=view.key_id,
        key=view,
        notice=purpose.removeprefix(rotator.NOTICE_PREFIX),
    )


class RotatorStoreContract:
    """services.rotator.ports.RotatorStore; subclasses give an async `store` fixture."""

    async def test_a_new_key_gets_pending_schedules_and_an_old_revision_changes_nothing(
        self, store: Any
    ) -> None:
        applied, rows = await store.apply_keys(applying(key_view(NOW, 2)))
        assert applied == [True]
        assert {(r.purpose, r.state) for r in rows} == {
            ("expire", rotator.PENDING),
            ("notice-7d", rotator.PENDING),
            ("notice-1d", rotator.PENDING),
        }
        expire = next(r for r in rows if r.purpose == "expire")
        assert expire.key_id == "key_1" and expire.due_at == NOW + timedelta(days=30)
        assert expire.expires_at == NOW + timedelta(days=30) and not expire.last_notice
        assert next(r for r in rows if r.purpose == "notice-1d").last_notice
        assert sorted(r.purpose for r in await store.unsynced()) == ["expire", "notice-1d", "notice-7d"]
        # The same revision again, and an older one: not applied, nothing written or returned.
        revoked = key_view(NOW, 1, status="revoked")
        assert await store.apply_keys(applying(key_view(NOW, 2), revoked)) == ([False, False], [])
        key, _ = (await store.fired_contexts([("key_1", "expire")]))[("key_1", "expire")]
        assert key is not None and key.status == "active"

    async def test_a_batch_applies_each_keys_views_in_order_and_returns_each_row_once(
        self, store: Any
    ) -> None:
        renewed = key_view(NOW, 2, expires_at=NOW + timedelta(days=60))
        other = key_view(NOW, 1, key_id="key_2")
        applied, rows = await store.apply_keys(applying(key_view(NOW, 1), other, renewed, key_view(NOW, 1)))
        assert applied == [True, True, True, False]
        assert sorted((r.key_id, r.purpose) for r in rows) == sorted(
            (k, p) for k in ("key_1", "key_2") for p in ("expire", "notice-1d", "notice-7d")
        )
        expire = next(r for r in rows if (r.key_id, r.purpose) == ("key_1", "expire"))
        assert expire.due_at == NOW + timedelta(days=60) and expire.state == rotator.PENDING
        key, _ = (await store.fired_contexts([("key_1", "expire")]))[("key_1", "expire")]
        assert key is not None and key.view().revision == 2
        assert key.expires_at == NOW + timedelta(days=60)

    async def test_mark_synced_schedules_what_was_published_and_forgets_what_was_cancelled(
        self, store: Any
    ) -> None:
        _, rows = await store.apply_keys(applying(key_view(NOW, 1)))
        await store.mark_synced(rows)
        assert await store.unsynced() == []
        assert {r.state for r in await store.schedules("key_1")} == {rotator.SCHEDULED}
        # A revocation: every schedule to cancel, until NATS has purged it.
        _, cancel = await store.apply_keys(applying(key_view(NOW, 2, status="revoked")))
        assert {(r.purpose, r.state) for r in cancel} == {
            (p, rotator.CANCELLING) for p in ("expire", "notice-1d", "notice-7d")
        }
        assert len(await store.unsynced()) == 3
        await store.mark_synced(cancel)
        assert await store.unsynced() == [] and await store.schedules("key_1") == []

    async def test_mark_synced_leaves_a_row_a_newer_event_changed_meanwhile(self, store: Any) -> None:
        _, first = await store.apply_keys(applying(key_view(NOW, 1)))
        renewed = key_view(NOW, 2, expires_at=NOW + timedelta(days=60))
        await store.apply_keys(applying(renewed))
        await store.mark_synced(first)  # NATS took the old due times: the new ones are still to publish
        pending = await store.unsynced(key_id="key_1")
        assert {(r.purpose, r.state) for r in pending} == {
            (p, rotator.PENDING) for p in ("expire", "notice-1d", "notice-7d")
        }
        assert next(r for r in pending if r.purpose == "expire").due_at == NOW + timedelta(days=60)

    async def test_unsynced_by_key_by_keys_and_with_a_limit(self, store: Any) -> None:
        await store.apply_keys(applying(*(key_view(NOW, 1, key_id=f"key_{n}") for n in range(3))))
        assert {r.key_id for r in await store.unsynced(key_id="key_1")} == {"key_1"}
        assert {r.key_id for r in await store.unsynced(key_ids=["key_0", "key_2"])} == {"key_0", "key_2"}
        assert len(await store.unsynced(limit=4)) == 4
        assert len(await store.unsynced()) == 9

    async def test_fired_contexts_read_the_key_and_its_schedule(self, store: Any) -> None:
        view = key_view(NOW, 1, auto_renew=True)
        _, rows = await store.apply_keys(applying(view))
        await store.mark_synced(rows)
        contexts = await store.fired_contexts(
            [("key_1", "notice-1d"), ("key_1", "grace"), ("key_9", "expire")]
        )
        key, row = contexts[("key_1", "notice-1d")]
        assert key is not None and row is not None
        assert key.state() == rotator.KeyState("key_1", "active", view.expires_at, None, True)
        assert key.view() == view
        assert (row.key_id, row.purpose, row.state) == ("key_1", "notice-1d", rotator.SCHEDULED)
        assert row.due_at == NOW + timedelta(days=29) and row.last_notice
        assert contexts[("key_1", "grace")] == (key, None)
        assert contexts[("key_9", "expire")] == (None, None)

    async def test_a_fired_schedule_is_recorded_with_its_events_once(self, store: Any) -> None:
        woken: list[bool] = []
        store.on_commit = lambda: woken.append(True)
        view = key_view(NOW, 1)
        _, rows = await store.apply_keys(applying(view))
        await store.mark_synced(rows)
        due = NOW + timedelta(days=23)
        event = expiring_event(view)
        records = [("key_1", "notice-7d", due, [event])]
        duplicates, added = await store.mark_fired_many(records, wake_relay=False)
        assert duplicates == set() and [e.event_id for e in added] == [event.event_id]
        assert added[0].subject == event.subject and woken == []
        pending = await store.pending_events(10)
        assert [(p.id, p.event_id, p.payload) for p in pending] == [
            (added[0].id, event.event_id, added[0].payload)
        ]
        (fired,) = [r for r in await store.schedules("key_1") if r.state == rotator.FIRED]
        assert fired.purpose == "notice-7d"
        # Redelivered: the event is a duplicate, nothing is added, the relay is not woken for nothing.
        assert await store.mark_fired_many(records) == ({event.event_id}, [])
        assert len(await store.pending_events(10)) == 1 and woken == []
        await store.mark_published([added[0].id])
        assert await store.pending_events(10) == []

    async def test_mark_fired_wakes_the_relay_and_matches_the_due_time(self, store: Any) -> None:
        woken: list[bool] = []
        store.on_commit = lambda: woken.append(True)
        view = key_view(NOW, 1)
        _, rows = await store.apply_keys(applying(view))
        await store.mark_synced(rows)
        stale = NOW + timedelta(days=1)  # a schedule since moved: its row is not marked
        duplicates, added = await store.mark_fired_many(
            [
                ("key_1", "expire", stale, []),
                ("key_1", "notice-7d", NOW + timedelta(days=23), [expiring_event(view)]),
            ]
        )
        assert duplicates == set() and len(added) == 1 and woken == [True]
        states = {r.purpose: r.state for r in await store.schedules("key_1")}
        assert states == {
            "expire": rotator.SCHEDULED,
            "notice-7d": rotator.FIRED,
            "notice-1d": rotator.SCHEDULED,
        }

    async def test_a_fired_row_no_longer_wanted_is_dropped_not_cancelled(self, store: Any) -> None:
        view = key_view(NOW, 1)
        _, rows = await store.apply_keys(applying(view))
        await store.mark_synced(rows)
        await store.mark_fired_many([("key_1", "notice-7d", NOW + timedelta(days=23), [])])
        # Rotating: the notices go (the fired one without a word to NATS), a grace schedule comes.
        rotating = key_view(NOW, 2, status="rotating", grace_until=NOW + timedelta(days=1))
        _, changed = await store.apply_keys(applying(rotating))
        assert {(r.purpose, r.state) for r in changed} == {
            ("grace", rotator.PENDING),
            ("expire", rotator.CANCELLING),
            ("notice-1d", rotator.CANCELLING),
        }
        assert {r.purpose for r in await store.schedules("key_1")} == {"expire", "grace", "notice-1d"}


def notice(key_id: str = "key_1", purpose: str = "expiring-7d") -> notifier.Notice:
    return notifier.Notice(
        type="key.expiring",
        purpose=purpose,
        key_id=key_id,
        account_id="acct",
        prefix="cnx_prod_abcd",
        name="ci",
        environment="prod",
        expires_at=NOW + timedelta(days=7),
        occurred_at=NOW,
        extra={},
    )


class NotifierStoreContract:
    """services.notifier.ports.NotifierStore; subclasses give an async `store` fixture."""

    async def test_a_delivery_is_created_pending_once(self, store: Any) -> None:
        first = await store.ensure_delivery(notice(), notifier.EMAIL)
        assert first.id == notice().dedupe_key(notifier.EMAIL)
        assert (first.key_id, first.account_id, first.channel, first.purpose, first.type) == (
            "key_1",
            "acct",
            notifier.EMAIL,
            "expiring-7d",
            "key.expiring",
        )
        assert (first.status, first.attempts, first.first_attempt_at, first.next_attempt_at) == (
            "pending",
            0,
            None,
            None,
        )
        assert first.expires_at == NOW + timedelta(days=7) and first.last_error is None
        await store.start_attempt(first.id, NOW)
        again = await store.ensure_delivery(notice(), notifier.EMAIL)
        assert again.id == first.id and again.attempts == 1
        other = await store.ensure_delivery(notice(), notifier.WEBHOOK)
        assert other.id != first.id and other.attempts == 0

    async def test_attempts_are_logged_before_and_after(self, store: Any) -> None:
        delivery = await store.ensure_delivery(notice(), notifier.EMAIL)
        one = await store.start_attempt(delivery.id, NOW)
        assert [(a.id, a.attempt, a.outcome, a.finished_at) for a in await store.attempts(delivery.id)] == [
            (one, 1, "started", None)
        ]
        retry_at = NOW + timedelta(seconds=30)
        await store.finish_attempt(
            delivery.id,
            one,
            notifier.RETRY,
            "SMTP 451 try later",
            NOW + timedelta(seconds=1),
            status="retrying",
            next_attempt_at=retry_at,
        )
        held = await store.ensure_delivery(notice(), notifier.EMAIL)
        assert (held.status, held.attempts, held.next_attempt_at) == ("retrying", 1, retry_at)
        assert held.first_attempt_at == NOW and held.last_error == "SMTP 451 try later"
        two = await store.start_attempt(delivery.id, retry_at)
        assert two > one
        await store.finish_attempt(
            delivery.id,
            two,
            notifier.DELIVERED,
            "250 OK",
            retry_at,
            status=notifier.DELIVERED,
            next_attempt_at=None,
        )
        done = await store.ensure_delivery(notice(), notifier.EMAIL)
        assert (done.status, done.attempts, done.next_attempt_at, done.last_error) == (
            notifier.DELIVERED,
            2,
            None,
            None,
        )
        assert done.first_attempt_at == NOW and done.updated_at == retry_at
        attempts = await store.attempts(delivery.id)
        assert [(a.attempt, a.outcome, a.detail) for a in attempts] == [
            (1, notifier.RETRY, "SMTP 451 try later"),
            (2, notifier.DELIVERED, "250 OK"),
        ]
        assert [a.started_at for a in attempts] == [NOW, retry_at]
        assert attempts[0].finished_at == NOW + timedelta(seconds=1)

    async def test_a_long_detail_is_cut_and_an_empty_one_is_none(self, store: Any) -> None:
        delivery = await store.ensure_delivery(notice(), notifier.WEBHOOK)
        attempt = await store.start_attempt(delivery.id, NOW)
        await store.finish_attempt(
            delivery.id,
            attempt,
            notifier.FAILED,
            "x" * 2000,
            NOW,
            status=notifier.FAILED,
            next_attempt_at=None,
        )
        held = await store.ensure_delivery(notice(), notifier.WEBHOOK)
        assert held.last_error == "x" * notifier.MAX_DETAIL
        assert (await store.attempts(delivery.id))[0].detail == "x" * notifier.MAX_DETAIL
        second = await store.start_attempt(delivery.id, NOW)
        await store.finish_attempt(
            delivery.id, second, notifier.FAILED, None, NOW, status=notifier.FAILED, next_attempt_at=None
        )
        assert (await store.attempts(delivery.id))[1].detail is None

    async def test_deliveries_by_key_oldest_first_and_counted_by_status(self, store: Any) -> None:
        made = [
            await store.ensure_delivery(notice(), notifier.EMAIL),
            await store.ensure_delivery(notice(key_id="key_2"), notifier.EMAIL),
            await store.ensure_delivery(notice(purpose="expired"), notifier.WEBHOOK),
        ]
        assert [d.id for d in await store.deliveries("key_1")] == [made[0].id, made[2].id]
        assert [d.id for d in await store.deliveries()] == [d.id for d in made]
        attempt = await store.start_attempt(made[1].id, NOW)
        await store.finish_attempt(
            made[1].id,
            attempt,
            notifier.DELIVERED,
            "250",
            NOW,
            status=notifier.DELIVERED,
            next_attempt_at=None,
        )
        assert await store.count("pending") == 2 and await store.count(notifier.DELIVERED) == 1
