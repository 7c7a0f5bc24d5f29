"""Pure lifecycle rules of the rotator: which schedules a key needs, and what a fired schedule means now.

No I/O and no clock: `now` is always an argument. A schedule is identified by (key, purpose); purposes
are `expire`, `grace` and `notice-<offset>` (`notice-7d`, `notice-10s`). Due times are rounded UP to
the whole second, because NATS `@at` schedules have one-second resolution and a truncated time would
fire up to a second early.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from shared.commands import CommandError, KeyAnswer
from shared.events import KeyView
from shared.settings import format_duration
from shared.timeutil import ceil_second

EXPIRE = "expire"
GRACE = "grace"
NOTICE_PREFIX = "notice-"

SCHEDULE_SUBJECT_PREFIX = "keys.schedule"
FIRED_SUBJECT_PREFIX = "keys.fired"

# Schedule row states: `pending` must be published, `cancelling` must be purged, `scheduled` is in
# NATS, `fired` has been handled.
PENDING = "pending"
SCHEDULED = "scheduled"
CANCELLING = "cancelling"
FIRED = "fired"


def notice_purpose(offset: timedelta) -> str:
    return NOTICE_PREFIX + format_duration(offset)


def is_notice(purpose: str) -> bool:
    return purpose.startswith(NOTICE_PREFIX)


def schedule_subject(purpose: str, key_id: str) -> str:
    return f"{SCHEDULE_SUBJECT_PREFIX}.{purpose}.{key_id}"


def fired_subject(purpose: str, key_id: str) -> str:
    return f"{FIRED_SUBJECT_PREFIX}.{purpose}.{key_id}"


def at_header(due: datetime) -> str:
    """`Nats-Schedule` value: `@at` with an RFC 3339 UTC time, whole seconds (rounded up)."""
    return "@at " + ceil_second(due).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Planned:
    """One schedule a key needs: fire `purpose` at `due` (whole second) for the expiry `expires_at`."""

    purpose: str
    due: datetime
    expires_at: datetime | None = None
    last_notice: bool = False


@dataclass(frozen=True, slots=True)
class Existing:
    purpose: str
    due: datetime
    state: str


@dataclass(frozen=True, slots=True)
class Change:
    """One change to a (key, purpose): `publish` (new or moved), `cancel`, or `drop` (forget a fired row)."""

    op: str
    planned: Planned | None
    purpose: str


# The schedule changes one key event calls for, given the key's schedules as stored.
PlanFn = Callable[[Sequence[Existing]], list[Change]]


@dataclass(slots=True)
class ScheduleRow:
    """One (key, purpose) schedule as the rotator holds it: when it is due, for which expiry, and where it
    stands with NATS (`state`). Plain data, not frozen: a burst of due schedules builds many of them."""

    key_id: str
    purpose: str
    due_at: datetime
    expires_at: datetime | None
    last_notice: bool
    state: str

    def existing(self) -> Existing:
        return Existing(self.purpose, self.due_at, self.state)


@dataclass(slots=True)
class KeyRecord:
    """What the rotator holds of a key, as a fired schedule re-checks it."""

    key_id: str
    status: str
    expires_at: datetime | None
    grace_until: datetime | None
    auto_renew: bool
    view_json: str

    def state(self) -> KeyState:
        return KeyState(self.key_id, self.status, self.expires_at, self.grace_until, self.auto_renew)

    def view(self) -> KeyView:
        return KeyView.model_validate_json(self.view_json)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event just recorded in the outbox, as the relay publishes it."""

    id: int
    event_id: str
    subject: str
    payload: bytes


@dataclass(slots=True)
class AppliedBatch:
    """What `apply_views` worked out for a batch of key events; the store writes `views` and `changed`."""

    # For each item of the batch: was its view newer than what was held (and so applied)?
    applied: list[bool]
    # The newest view applied per key.
    views: dict[str, KeyView]
    # Each (key, purpose) the batch changed, in its final state; None: the row is deleted.
    changed: dict[tuple[str, str], ScheduleRow | None]

    def to_sync(self) -> list[ScheduleRow]:
        """The rows NATS must now be told about: those left to publish or to cancel."""
        return [row for row in self.changed.values() if row is not None]


def apply_views(
    revisions: dict[str, int],
    stored: dict[tuple[str, str], ScheduleRow],
    items: Sequence[tuple[KeyView, PlanFn]],
) -> AppliedBatch:
    """Apply a batch of key views, each key's in the given order, to the revisions held and the stored
    schedules of their keys: a view no newer than the key's revision is skipped (a stale or duplicate
    event); a newer one replaces it and its schedule changes are applied. Neither input is changed."""
    # The schedules of each key as the batch goes; None: deleted. A changed row is a new object, so
    # `row is not stored[...]` tells what to write.
    rows: dict[str, dict[str, ScheduleRow | None]] = {}
    for (key_id, purpose), row in stored.items():
        rows.setdefault(key_id, {})[purpose] = row
    held = dict(revisions)
    views: dict[str, KeyView] = {}
    applied: list[bool] = []
    for view, changes_for in items:
        if view.key_id in held and held[view.key_id] >= view.revision:
            applied.append(False)
            continue
        applied.append(True)
        held[view.key_id] = view.revision
        views[view.key_id] = view
        schedules = rows.setdefault(view.key_id, {})
        for change in changes_for([r.existing() for r in schedules.values() if r is not None]):
            current = schedules.get(change.purpose)
            if change.op == "publish":
                planned = change.planned
                assert planned is not None
                schedules[change.purpose] = ScheduleRow(
                    view.key_id,
                    planned.purpose,
                    planned.due,
                    planned.expires_at,
                    planned.last_notice,
                    PENDING,
                )
            elif change.op == "cancel" and current is not None:
                schedules[change.purpose] = replace(current, state=CANCELLING)
            elif change.op == "drop" and current is not None:
                schedules[change.purpose] = None
    changed = {
        (key_id, purpose): row
        for key_id, schedules in rows.items()
        for purpose, row in schedules.items()
        if row is not stored.get((key_id, purpose))
    }
    return AppliedBatch(applied, views, changed)


def plan(key: KeyView, notices: Sequence[timedelta], reference: datetime) -> list[Planned]:
    """The schedules `key` needs, as of `reference` (when the change happened).

    - revoked or expired: none (a revocation cancels everything).
    - rotating: `grace` at `grace_until`, and `expire` if the key expires first; no notices, the new
      key carries its own.
    - active with an expiry: `expire`, and a notice at each offset before expiry, skipping offsets
      already past at `reference`. An auto-renew key's last (smallest) notice is where it is renewed,
      so it is never skipped: if already past it is due at once, so the key never lapses.
    """
    if key.status in ("revoked", "expired"):
        return []
    planned: list[Planned] = []
    expires_at = key.expires_at
    if key.status == "rotating":
        if key.grace_until is not None:
            planned.append(Planned(GRACE, ceil_second(key.grace_until), expires_at))
        if expires_at is not None and (key.grace_until is None or expires_at < key.grace_until):
            planned.append(Planned(EXPIRE, ceil_second(expires_at), expires_at))
        return planned
    if expires_at is None:
        return []
    planned.append(Planned(EXPIRE, ceil_second(expires_at), expires_at))
    offsets = sorted(set(notices), reverse=True)
    for index, offset in enumerate(offsets):
        last = index == len(offsets) - 1
        due = ceil_second(expires_at - offset)
        if due <= reference:
            if not (last and key.auto_renew):
                continue
            due = min(ceil_second(reference), ceil_second(expires_at))
        planned.append(Planned(notice_purpose(offset), due, expires_at, last_notice=last))
    return planned


def diff(existing: Iterable[Existing], wanted: Iterable[Planned]) -> list[Change]:
    """Turn the stored schedules of a key into the wanted ones with the fewest NATS operations.

    A schedule already published (or already fired) for the same due time is left alone: publishing it
    again would re-arm a schedule that has fired, and a past `@at` fires at once.
    """
    have = {e.purpose: e for e in existing}
    want = {p.purpose: p for p in wanted}
    changes: list[Change] = []
    for purpose, planned in want.items():
        current = have.get(purpose)
        if (
            current is not None
            and current.due == planned.due
            and current.state in (PENDING, SCHEDULED, FIRED)
        ):
            continue
        changes.append(Change("publish", planned, purpose))
    for purpose, current in have.items():
        if purpose in want:
            continue
        if current.state == FIRED:
            changes.append(Change("drop", None, purpose))
        elif current.state != CANCELLING:
            changes.append(Change("cancel", None, purpose))
    return changes


# What a fired schedule leads to, decided from the key as the rotator knows it now.

IGNORE = "ignore"
EARLY = "early"
END_GRACE = "end_grace"
EXPIRE_KEY = "expire"
NOTIFY = "notify"
RENEW = "renew"


@dataclass(frozen=True, slots=True)
class KeyState:
    key_id: str
    status: str
    expires_at: datetime | None
    grace_until: datetime | None
    auto_renew: bool


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    reason: str = ""
    delay_s: float = 0.0


def decide(
    purpose: str,
    due: datetime,
    expires_at: datetime | None,
    key: KeyState | None,
    schedule_due: datetime | None,
    last_notice: bool,
    now: datetime,
) -> Decision:
    """Re-check a fired schedule against the current state (it may fire late, after an outage, or be
    stale: replaced or cancelled after it fired) and say what to do."""
    if now < due:
        return Decision(EARLY, "fired before its due time", max((due - now).total_seconds(), 0.05))
    if key is None:
        return Decision(IGNORE, "unknown key")
    if schedule_due is None or schedule_due != due:
        return Decision(IGNORE, "schedule was replaced or cancelled")
    if purpose == GRACE:
        if key.status != "rotating" or key.grace_until is None or now < key.grace_until:
            return Decision(IGNORE, f"key is {key.status}")
        return Decision(END_GRACE)
    if purpose == EXPIRE:
        if key.status not in ("active", "rotating") or key.expires_at is None or now < key.expires_at:
            return Decision(IGNORE, f"key is {key.status}, expires {key.expires_at}")
        return Decision(EXPIRE_KEY)
    if is_notice(purpose):
        if key.status != "active" or key.expires_at is None or key.expires_at != expires_at:
            return Decision(IGNORE, "key renewed, rotated or ended since")
        if key.auto_renew and last_notice:
            return Decision(RENEW)
        if now >= key.expires_at:
            return Decision(IGNORE, "key already expired")
        return Decision(NOTIFY)
    return Decision(IGNORE, f"unknown purpose {purpose!r}")


def notice_still_wanted(issuer_answer: KeyAnswer | CommandError, expires_at: datetime | None) -> bool:
    """The issuer's `keys.cmd.status` answer confirms the key is active with the expiry the notice is for."""
    if not isinstance(issuer_answer, KeyAnswer) or issuer_answer.status != "active":
        return False
    return expires_at is not None and issuer_answer.expires_at == expires_at


def notice_event_id(key_id: str, purpose: str, expires_at: datetime | None) -> str:
    """Deterministic id (and Nats-Msg-Id) of a notice: a redelivered fired schedule cannot double it."""
    stamp = expires_at.astimezone(UTC).isoformat() if expires_at else "-"
    return hashlib.sha256(f"{key_id}|{purpose}|{stamp}".encode()).hexdigest()[:32]
