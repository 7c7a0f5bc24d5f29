"""The audit trail's rows and queries: entries written in the transaction of the change they record,
and one page of an account's entries, newest first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, insert, union_all
from sqlalchemy import select as sa_select

from shared.db import table_of

from .audit import AuditRecord
from .tables import IssuerAudit

_AUDIT_TABLE = table_of(IssuerAudit)
AUDIT = _AUDIT_TABLE.c
INSERT_AUDIT = insert(_AUDIT_TABLE)
AUDIT_COLUMNS = (
    AUDIT.seq,
    AUDIT.id,
    AUDIT.at,
    AUDIT.action,
    AUDIT.actor_key_id,
    AUDIT.target_key_id,
    AUDIT.ip,
    AUDIT.user_agent,
    cast(AUDIT.details, Text),
)


def audit_rows(
    records: Sequence[AuditRecord],
    *,
    account_id: str | None = None,
    target_key_id: str | None = None,
    more: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of `issuer_audit`; a record's missing account and target are those of the change's key,
    and `more` adds what the store learns while writing (how many keys a plan change moved)."""
    return [
        {
            "id": r.id,
            "at": r.at,
            "account_id": r.account_id or account_id,
            "action": r.action,
            "actor_key_id": r.actor,
            "target_key_id": r.target_key_id or target_key_id,
            "ip": r.origin.ip,
            "user_agent": r.origin.user_agent,
            "details": {**(r.details or {}), **(more or {})} if r.details or more else None,
        }
        for r in records
    ]


def audit_page_query(
    account_id: str,
    *,
    key_id: str | None,
    action: str | None,
    since: datetime | None,
    limit: int,
    before_seq: int | None,
) -> Any:
    """One page of an account's entries, newest first, strictly before `before_seq`. `key_id` matches
    entries whose target or actor is that key: a page's worth of `seq` from each of the two indexes,
    merged (the index ranges are read in order and stop after a page, as the key list's branches)."""
    where: list[ColumnElement[bool]] = [AUDIT.account_id == account_id]
    if before_seq is not None:
        where.append(AUDIT.seq < before_seq)
    if action is not None:
        where.append(AUDIT.action == action)
    if since is not None:
        where.append(AUDIT.at >= since)
    newest_first = AUDIT.seq.desc()
    if key_id is None:
        return sa_select(*AUDIT_COLUMNS).where(*where).order_by(newest_first).limit(limit)
    parts = [
        sa_select(AUDIT.seq).where(*where, column == key_id).order_by(newest_first).limit(limit).subquery()
        for column in (AUDIT.target_key_id, AUDIT.actor_key_id)
    ]
    merged = union_all(*(sa_select(part.c.seq) for part in parts)).subquery()
    newest = sa_select(merged.c.seq).distinct().order_by(merged.c.seq.desc()).limit(limit)
    return sa_select(*AUDIT_COLUMNS).where(AUDIT.seq.in_(newest)).order_by(newest_first)
