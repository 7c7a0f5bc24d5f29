"""The issuer's tables (SQLModel) and their mapping to the domain's `Key` and `Account`.

Only the store modules import this: the use cases, the API and the handlers see domain objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, Text, cast
from sqlmodel import Field, SQLModel

from shared.db import table_of
from shared.outbox import OutboxBase
from shared.timeutil import as_utc

from .domain import Account, Key


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


class IssuerAccount(SQLModel, table=True):
    __tablename__ = "issuer_accounts"

    id: str = Field(primary_key=True, max_length=64)
    plan: str = Field(default="professional", max_length=32)
    status: str = Field(default="active", max_length=16)
    webhook_secret_sealed: str | None = None
    # After a rotation, the secret replaced keeps signing beside the new one until `..._until`.
    webhook_secret_previous_sealed: str | None = None
    webhook_secret_previous_until: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False)
    # `occurred_at` of the last platform.plans.changed applied: an older one arriving late is ignored.
    plan_changed_at: datetime | None = _ts(nullable=True)
    # The custom limit of an enterprise account (platform.plans.changed), the ceiling of its keys' own.
    rate_limit: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class IssuerKey(SQLModel, table=True):
    __tablename__ = "issuer_keys"
    # Listing walks one account's keys newest first, page by page (keyset on `seq`), and each filter
    # has an index whose equality columns come before `seq`, so a page reads only the rows it returns,
    # however many keys of the account do not match (`page_keys`).
    __table_args__ = (
        Index("ix_issuer_keys_account_seq", "account_id", "seq"),
        Index("ix_issuer_keys_account_status_seq", "account_id", "status", "seq"),
        Index("ix_issuer_keys_account_env_status_seq", "account_id", "environment", "status", "seq"),
        # The quota's count of an account's live keys reads this index alone (`count_live`).
        Index("ix_issuer_keys_account_status_expiry", "account_id", "status", "expires_at", "grace_until"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=40, unique=True, index=True)
    account_id: str = Field(max_length=64)
    digest: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=20)
    name: str = Field(max_length=200)
    environment: str = Field(max_length=8)
    scopes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    plan: str = Field(max_length=32)
    rate_limit: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    ip_allowlist: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime | None = _ts(nullable=True)
    grace_until: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)
    use_count: int = 0
    auto_renew: bool = False
    lifetime_days: int | None = None
    notify_sealed: str | None = None
    key_metadata: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    rotated_from: str | None = Field(default=None, max_length=40)
    rotated_to: str | None = Field(default=None, max_length=40)
    revision: int = 1
    # Mirrors the account's suspension on the key, so the key's events tell validators to refuse it.
    suspended: bool = False


class IssuerOutbox(OutboxBase, table=True):
    __tablename__ = "issuer_outbox"


class IssuerProcessed(SQLModel, table=True):
    """Ids of events this service consumed, for idempotent handling of redeliveries."""

    __tablename__ = "issuer_processed"

    event_id: str = Field(primary_key=True, max_length=64)
    processed_at: datetime = _ts(nullable=False)


class IssuerAudit(SQLModel, table=True):
    """The audit trail: append-only (nothing updates or deletes a row), each row written in the
    transaction of the change it records. `account_id` is null only for a denial of an unknown key,
    which no account's listing shows."""

    __tablename__ = "issuer_audit"
    # GET /v2/audit walks one account's entries newest first by `seq` (keyset, as the key list), each
    # filter with an index whose equality columns come before `seq`; `since` reads (account_id, at).
    __table_args__ = (
        Index("ix_issuer_audit_account_seq", "account_id", "seq"),
        Index("ix_issuer_audit_account_action_seq", "account_id", "action", "seq"),
        Index("ix_issuer_audit_account_target_seq", "account_id", "target_key_id", "seq"),
        Index("ix_issuer_audit_account_actor_seq", "account_id", "actor_key_id", "seq"),
        Index("ix_issuer_audit_account_at", "account_id", "at"),
    )

    # 64 bits on PostgreSQL (denials add up); SQLite's INTEGER PRIMARY KEY is 64 bits already, and only
    # that exact type makes it the rowid that numbers rows by itself.
    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    )
    id: str = Field(max_length=40)
    at: datetime = _ts(nullable=False)
    account_id: str | None = Field(default=None, max_length=64)
    action: str = Field(max_length=40)
    actor_key_id: str | None = Field(default=None, max_length=64)
    target_key_id: str | None = Field(default=None, max_length=40)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=256)
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class IssuerKeyUsage(SQLModel, table=True):
    """Validations of a key per hour by outcome, added up from the validators' KeyUsed reports (the
    console's usage chart). One row per key and hour that saw use; rows older than `USAGE_KEEP` go."""

    __tablename__ = "issuer_key_usage"

    key_id: str = Field(primary_key=True, max_length=40)
    hour: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    allowed: int = 0
    refused: int = 0


KEY_TABLE = table_of(IssuerKey)
KEYS = KEY_TABLE.c
# (Key attribute, column) of every field of `Key`, in its order; `key_metadata` is the `metadata` column.
KEY_FIELDS = [f.name for f in fields(Key)]
KEY_COLUMNS = [getattr(KEYS, "metadata" if name == "key_metadata" else name) for name in KEY_FIELDS]
_JSON_FIELDS = {"scopes", "rate_limit", "ip_allowlist", "key_metadata"}
_TIME_FIELDS = {"created_at", "expires_at", "grace_until", "last_used_at"}
# A key read as plain columns, not ORM objects (building and normalising 101 ORM rows was most of a
# 100-key page's time). The JSON columns are read as their text and parsed with orjson: the JSON type's
# json.loads, four per row, cost more than the query itself (asyncpg's json codec would use json.loads).
KEY_SELECT = tuple(
    cast(column, Text) if name in _JSON_FIELDS else column
    for name, column in zip(KEY_FIELDS, KEY_COLUMNS, strict=True)
)


def json_or_none(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


_CONVERT = tuple(
    json_or_none if name in _JSON_FIELDS else (as_utc if name in _TIME_FIELDS else None)
    for name in KEY_FIELDS
)


def key_of(row: Sequence[Any]) -> Key:
    """A `Key` from a row of KEY_SELECT."""
    key = Key(
        *(value if convert is None else convert(value) for convert, value in zip(_CONVERT, row, strict=True))
    )
    if key.ip_allowlist is None:
        key.ip_allowlist = []
    if key.key_metadata is None:
        key.key_metadata = {}
    return key


def key_row(key: Key) -> dict[str, Any]:
    """The column values of `key`, for an INSERT or UPDATE (all but `seq`, which the database assigns)."""
    return {
        column.name: getattr(key, name)
        for name, column in zip(KEY_FIELDS, KEY_COLUMNS, strict=True)
        if name != "seq"
    }


def account_of(row: IssuerAccount) -> Account:
    return Account(
        id=row.id,
        plan=row.plan,
        status=row.status,
        webhook_secret_sealed=row.webhook_secret_sealed,
        webhook_secret_previous_sealed=row.webhook_secret_previous_sealed,
        webhook_secret_previous_until=as_utc(row.webhook_secret_previous_until),
        rate_limit=row.rate_limit,
        plan_changed_at=as_utc(row.plan_changed_at),
    )
