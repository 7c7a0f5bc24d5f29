"""What the rotator's use cases need of storage: a Protocol, answered by store.RotatorStore (SQLite or
PostgreSQL) and by any fake a test passes. Domain objects in and out (KeyView; domain.ScheduleRow,
KeyRecord, OutboxEntry): no table class crosses this line.

A key change and the schedule changes it causes are written in one transaction (`apply_keys`), and so
are handled schedules and the events they emit (`mark_fired_many`): that makes the outbox transactional.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from shared.events import Event, KeyView

from .domain import KeyRecord, OutboxEntry, PlanFn, ScheduleRow

# A handled schedule: (key_id, purpose, due, the events it emits).
FiredRecord = tuple[str, str, datetime, Sequence[Event]]


class RotatorStore(Protocol):
    async def apply_keys(
        self, items: Sequence[tuple[KeyView, PlanFn]]
    ) -> tuple[list[bool], list[ScheduleRow]]:
        """Record each view newer than the key's revision held, with the schedule changes its PlanFn
        returns (domain.apply_views), in one transaction. Returns whether each item was applied, and the
        rows NATS must now be told about (`pending` or `cancelling`, each (key, purpose) once)."""
        ...

    async def unsynced(
        self, key_id: str | None = None, limit: int = 500, *, key_ids: Sequence[str] | None = None
    ) -> list[ScheduleRow]:
        """At most `limit` schedules NATS does not have yet (`pending`) or still has but should not
        (`cancelling`), of one key, of some keys, or of all."""
        ...

    async def mark_synced(self, rows: Sequence[ScheduleRow]) -> None:
        """After NATS took the changes: a `pending` row becomes `scheduled`, a `cancelling` one is
        deleted; each only while it is still in the state and at the due time given (a newer event may
        have changed it meanwhile)."""
        ...

    async def fired_contexts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[KeyRecord | None, ScheduleRow | None]]:
        """For each (key, purpose): the key as held now and its schedule row (None: not held)."""
        ...

    async def mark_fired_many(
        self, records: Sequence[FiredRecord], *, wake_relay: bool = True
    ) -> tuple[set[str], list[OutboxEntry]]:
        """Mark the schedules (matched on key, purpose and due) `fired` and add their events to the
        outbox, in one transaction; an event already there (a redelivered schedule: its id is
        deterministic) is not added again. Returns the ids of those duplicates and the entries added;
        `wake_relay=False` when the caller publishes them itself."""
        ...
