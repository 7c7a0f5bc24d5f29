"""Per-key hourly usage by outcome (the console's chart), added up from the validators' KeyUsed reports.

One row per key and hour that saw use; a key's rows older than `USAGE_KEEP` go when it starts a new hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_
from sqlalchemy import select as sa_select

from shared.db import table_of
from shared.timeutil import as_utc

from .tables import IssuerKeyUsage

USAGE_KEEP = timedelta(days=30)
_USAGE = table_of(IssuerKeyUsage)


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def add_to_hour(session: Any, key_id: str, at: datetime, allowed: int, refused: int) -> None:
    """Add the counts to the key's bucket of `at`'s hour, in the caller's transaction."""
    hour = hour_of(at)
    bucket = await session.get(IssuerKeyUsage, (key_id, hour))
    if bucket is None:
        # A key's first use in this hour: its buckets past the retention go (once an hour at most).
        await session.execute(
            _USAGE.delete().where(and_(_USAGE.c.key_id == key_id, _USAGE.c.hour < hour - USAGE_KEEP))
        )
        bucket = IssuerKeyUsage(key_id=key_id, hour=hour, allowed=0, refused=0)
    bucket.allowed += allowed
    bucket.refused += refused
    session.add(bucket)


def usage_query(key_id: str, since: datetime) -> Any:
    """(hour, allowed, refused) of the key's buckets from `since` on, oldest first."""
    return (
        sa_select(_USAGE.c.hour, _USAGE.c.allowed, _USAGE.c.refused)
        .where(and_(_USAGE.c.key_id == key_id, _USAGE.c.hour >= since.astimezone(UTC)))
        .order_by(_USAGE.c.hour)
    )


def usage_rows(rows: Any) -> list[tuple[datetime, int, int]]:
    return [(as_utc(hour), int(allowed), int(refused)) for hour, allowed, refused in rows]
