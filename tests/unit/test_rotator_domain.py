"""Pure rules of the rotator: the schedule plan, its diff against what is scheduled, fired decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.rotator import domain
from shared.commands import NOT_FOUND, parse_key_reply
from shared.events import KeyView
from tests.support.factories import key_view

NOW = datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
NOTICES = [timedelta(days=7), timedelta(days=1)]


def view(**overrides: Any) -> KeyView:
    return key_view(NOW, **overrides)


def test_active_key_gets_expiry_and_every_notice_rounded_up_to_the_second() -> None:
    plan = domain.plan(view(), NOTICES, NOW)
    assert [p.purpose for p in plan] == ["expire", "notice-7d", "notice-1d"]
    expires = NOW + timedelta(days=30)
    assert plan[0].due == expires.replace(microsecond=0) + timedelta(seconds=1)
    assert plan[1].due == (expires - timedelta(days=7)).replace(microsecond=0) + timedelta(seconds=1)
    assert all(p.due.microsecond == 0 and p.due >= NOW for p in plan)
    assert [p.last_notice for p in plan] == [False, False, True]


def test_offsets_already_past_at_creation_are_skipped() -> None:
    plan = domain.plan(view(expires_at=NOW + timedelta(days=3)), NOTICES, NOW)
    assert [p.purpose for p in plan] == ["expire", "notice-1d"]


def test_auto_renew_key_keeps_its_last_notice_even_when_past() -> None:
    plan = domain.plan(view(expires_at=NOW + timedelta(hours=2), auto_renew=True), NOTICES, NOW)
    assert [p.purpose for p in plan] == ["expire", "notice-1d"]
    assert plan[1].due == NOW.replace(microsecond=0) + timedelta(seconds=1)


def test_rotating_key_gets_grace_and_no_notices() -> None:
    grace = NOW + timedelta(hours=24)
    plan = domain.plan(view(status="rotating", grace_until=grace), NOTICES, NOW)
    assert [p.purpose for p in plan] == ["grace"]
    early = domain.plan(
        view(status="rotating", grace_until=grace, expires_at=NOW + timedelta(hours=1)), NOTICES, NOW
    )
    assert [p.purpose for p in early] == ["grace", "expire"]


@pytest.mark.parametrize("status", ["revoked", "expired"])
def test_ended_key_needs_no_schedules(status: str) -> None:
    assert domain.plan(view(status=status), NOTICES, NOW) == []


def test_key_without_expiry_needs_no_schedules() -> None:
    assert domain.plan(view(expires_at=None), NOTICES, NOW) == []


def test_diff_publishes_new_and_moved_cancels_dropped_and_leaves_unchanged() -> None:
    old = domain.plan(view(), NOTICES, NOW)
    existing = [domain.Existing(p.purpose, p.due, domain.SCHEDULED) for p in old]
    assert domain.diff(existing, old) == []
    renewed = domain.plan(view(expires_at=NOW + timedelta(days=60)), NOTICES, NOW)
    assert sorted(c.purpose for c in domain.diff(existing, renewed) if c.op == "publish") == [
        "expire",
        "notice-1d",
        "notice-7d",
    ]
    revoked = domain.diff(existing, [])
    assert {c.op for c in revoked} == {"cancel"} and len(revoked) == 3


def test_diff_never_republishes_a_fired_schedule_and_forgets_it_when_unwanted() -> None:
    plan = domain.plan(view(), NOTICES, NOW)
    fired = [domain.Existing(p.purpose, p.due, domain.FIRED) for p in plan]
    assert domain.diff(fired, plan) == []
    assert {c.op for c in domain.diff(fired, [])} == {"drop"}


def test_schedule_subjects_and_at_header() -> None:
    assert domain.schedule_subject("notice-7d", "key_1") == "keys.schedule.notice-7d.key_1"
    assert domain.fired_subject("grace", "key_1") == "keys.fired.grace.key_1"
    assert domain.at_header(NOW) == "@at 2026-01-01T12:00:01Z"
    assert domain.at_header(NOW.replace(microsecond=0)) == "@at 2026-01-01T12:00:00Z"


STATE = domain.KeyState("key_1", "active", NOW + timedelta(days=1), None, False)


def decide(
    purpose: str,
    due: datetime,
    key: domain.KeyState | None = STATE,
    *,
    now: datetime,
    schedule_due: datetime | None = None,
    last: bool = False,
) -> domain.Decision:
    return domain.decide(purpose, due, STATE.expires_at, key, schedule_due or due, last, now)


def test_a_schedule_that_fires_early_is_put_back() -> None:
    due = NOW + timedelta(seconds=1)
    decision = decide("notice-1d", due, now=NOW)
    assert decision.action == domain.EARLY and 0 < decision.delay_s <= 1


def test_notice_is_sent_for_an_active_key_and_renews_an_auto_renew_key() -> None:
    assert decide("notice-1d", NOW, now=NOW).action == domain.NOTIFY
    auto = domain.KeyState("key_1", "active", STATE.expires_at, None, True)
    assert decide("notice-1d", NOW, auto, now=NOW, last=True).action == domain.RENEW
    assert decide("notice-7d", NOW, auto, now=NOW, last=False).action == domain.NOTIFY


def test_stale_notice_after_renewal_or_replacement_is_ignored() -> None:
    renewed = domain.KeyState("key_1", "active", NOW + timedelta(days=90), None, False)
    assert decide("notice-1d", NOW, renewed, now=NOW).action == domain.IGNORE
    replaced = decide("notice-1d", NOW, now=NOW, schedule_due=NOW + timedelta(days=5))
    assert replaced.action == domain.IGNORE


def test_grace_and_expiry_recheck_the_key() -> None:
    rotating = domain.KeyState("key_1", "rotating", NOW + timedelta(days=1), NOW, False)
    assert decide("grace", NOW, rotating, now=NOW).action == domain.END_GRACE
    assert decide("grace", NOW, STATE, now=NOW).action == domain.IGNORE
    expiring = domain.KeyState("key_1", "active", NOW, None, False)
    assert decide("expire", NOW, expiring, now=NOW).action == domain.EXPIRE_KEY
    revoked = domain.KeyState("key_1", "revoked", NOW, None, False)
    assert decide("expire", NOW, revoked, now=NOW).action == domain.IGNORE
    assert decide("expire", NOW, None, now=NOW).action == domain.IGNORE


def test_notice_event_id_is_deterministic_per_key_purpose_and_expiry() -> None:
    a = domain.notice_event_id("key_1", "notice-1d", NOW)
    assert a == domain.notice_event_id("key_1", "notice-1d", NOW)
    assert a != domain.notice_event_id("key_1", "notice-7d", NOW)
    assert a != domain.notice_event_id("key_1", "notice-1d", NOW + timedelta(days=1))


def test_notice_is_wanted_only_for_an_active_key_with_the_same_expiry() -> None:
    expires = NOW + timedelta(days=1)
    # As it comes over the wire (the issuer writes UTC with `Z`), read through the contract.
    answer = parse_key_reply(
        orjson.dumps({"ok": True, "key_id": "k", "status": "active", "revision": 2, "expires_at": expires})
    )
    assert domain.notice_still_wanted(answer, expires)
    assert not domain.notice_still_wanted(answer.model_copy(update={"status": "revoked"}), expires)
    assert not domain.notice_still_wanted(answer, expires + timedelta(days=90))
    assert not domain.notice_still_wanted(NOT_FOUND, expires)
