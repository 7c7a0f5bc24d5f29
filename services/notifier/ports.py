"""What the notifier's use cases need of storage: a Protocol, answered by store.NotifierStore (SQLite or
PostgreSQL) and by any fake a test passes. Domain objects in and out (domain.Notice, Delivery): no
table class crosses this line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from .domain import Delivery, Notice


class NotifierStore(Protocol):
    async def ensure_delivery(self, notice: Notice, channel: str) -> Delivery:
        """The delivery of (key, purpose, expiry, channel), created `pending` the first time; the one
        already held otherwise (whoever created it first, another replica included)."""
        ...

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Log an attempt `started` before it is made: the delivery's attempts count one more, its first
        attempt is `now` if it had none. Returns the attempt's id."""
        ...

    async def finish_attempt(
        self,
        delivery_id: str,
        attempt_id: int,
        outcome: str,
        detail: str | None,
        now: datetime,
        *,
        status: str,
        next_attempt_at: datetime | None,
    ) -> None:
        """Record the attempt's outcome and the delivery's new status. The detail is kept to
        domain.MAX_DETAIL characters; it is the delivery's `last_error` unless the outcome is
        `delivered`."""
        ...
