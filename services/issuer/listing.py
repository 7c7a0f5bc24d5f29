"""The key list's queries: one page of an account's keys by effective status, newest first.

Each filter reads an index whose equality columns come before `seq` (see tables.IssuerKey), so a page
reads only the rows it returns, however many keys of the account do not match.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, union_all
from sqlalchemy import select as sa_select

from .tables import KEY_SELECT, KEYS

# Every status a key is stored with (service.py writes no other).
STORED_STATUSES = ("active", "rotating", "expired", "revoked")


def status_branches(status: str | None, now: datetime) -> list[tuple[str, ColumnElement[bool] | None]]:
    """The keys whose effective status (`domain.effective_status` at `now`) is `status`, as one
    (stored status, condition on the times) branch per stored status that can have it.

    The stored status lags the clock until a schedule fires (an active key past `expires_at` is
    expired already), so a status filter needs the times too. One branch per stored status lets each
    read `(account_id, [environment,] status, seq)` in order and stop after a page.
    """
    not_expired = or_(KEYS.expires_at.is_(None), KEYS.expires_at > now)
    expired = and_(KEYS.expires_at.is_not(None), KEYS.expires_at <= now)
    in_grace = or_(KEYS.grace_until.is_(None), KEYS.grace_until > now)
    grace_over = and_(KEYS.grace_until.is_not(None), KEYS.grace_until <= now)
    if status is None:
        return [(stored, None) for stored in STORED_STATUSES]
    if status == "active":
        return [("active", not_expired)]
    if status == "rotating":
        return [("rotating", and_(in_grace, not_expired))]
    if status == "expired":
        return [("expired", None), ("active", expired), ("rotating", and_(in_grace, expired))]
    if status == "revoked":
        return [("revoked", None), ("rotating", grace_over)]
    raise ValueError(f"unknown key status {status!r}")


def page_query(
    account_id: str,
    *,
    status: str | None,
    environment: str | None,
    now: datetime,
    limit: int,
    before_seq: int | None,
) -> Any:
    """One page of an account's keys, newest first, strictly before `before_seq` (keyset pagination:
    no OFFSET, no COUNT, so page 1,000 costs what page 1 does)."""
    where: list[ColumnElement[bool]] = [KEYS.account_id == account_id]
    if before_seq is not None:
        where.append(KEYS.seq < before_seq)
    newest_first = KEYS.seq.desc()
    if status is None and environment is None:
        return sa_select(*KEY_SELECT).where(*where).order_by(newest_first).limit(limit)
    if environment is not None:
        where.append(KEYS.environment == environment)
    branches = [
        and_(*where, KEYS.status == stored, *([] if times is None else [times]))
        for stored, times in status_branches(status, now)
    ]
    if len(branches) == 1:
        return sa_select(*KEY_SELECT).where(branches[0]).order_by(newest_first).limit(limit)
    # Several stored statuses: a page's worth of `seq` from each branch (each an ordered index range),
    # the newest `limit` of those, then their rows. `status IN (...)` would make the database either
    # walk the whole account or sort every match.
    parts = [
        sa_select(KEYS.seq).where(branch).order_by(newest_first).limit(limit).subquery()
        for branch in branches
    ]
    merged = union_all(*(sa_select(part.c.seq) for part in parts)).subquery()
    newest = sa_select(merged.c.seq).order_by(merged.c.seq.desc()).limit(limit)
    return sa_select(*KEY_SELECT).where(KEYS.seq.in_(newest)).order_by(newest_first)
