"""Time helpers: every stored or compared time is timezone-aware UTC."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import overload

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ceil_second(value: datetime) -> datetime:
    """Round up to the whole second (schedules have one-second resolution and may fire early)."""
    if value.microsecond == 0:
        return value
    return datetime.fromtimestamp(math.floor(value.timestamp()) + 1, UTC)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
