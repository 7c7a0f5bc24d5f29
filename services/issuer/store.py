"""The issuer's store: the key catalog, accounts and the outbox. The only module that opens sessions.

A change and the events it causes are written in one transaction (`mutate_key`, `insert_key`), which is
what makes the outbox transactional.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, func, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, col, select

from shared.db import StoreBase
from shared.events import Event, encode_event
from shared.outbox import OutboxBase
from shared.timeutil import as_utc, utcnow


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


class IssuerAccount(SQLModel, table=True):
    __tablename__ = "issuer_accounts"

    id: str = Field(primary_key=True, max_length=64)
    plan: str = Field(default="professional", max_length=32)
    status: str = Field(default="active", max_length=16)
    webhook_secret_sealed: str | None = None
    created_at: datetime = _ts(nullable=False)


class IssuerKey(SQLModel, table=True):
    __tablename__ = "issuer_keys"
    # Listing walks one account's keys newest first, page by page.
    __table_args__ = (Index("ix_issuer_keys_account_seq", "account_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=40, unique=True, index=True)
    account_id: str = Field(max_length=64, index=True)
    digest: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=20)
    name: str = Field(max_length=200)
    environment: str = Field(max_length=8)
    scopes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    plan: str = Field(max_length=32)
    rate_limit: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    ip_allowlist: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16, index=True)
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

    def normalize_times(self) -> IssuerKey:
        for name in ("created_at", "expires_at", "grace_until", "last_used_at"):
            setattr(self, name, as_utc(getattr(self, name)))
        return self


class IssuerOutbox(OutboxBase, table=True):
    __tablename__ = "issuer_outbox"


class IssuerProcessed(SQLModel, table=True):
    """Ids of events this service consumed, for idempotent handling of redeliveries."""

    __tablename__ = "issuer_processed"

    event_id: str = Field(primary_key=True, max_length=64)
    processed_at: datetime = _ts(nullable=False)


TABLES = [IssuerAccount.__table__, IssuerKey.__table__, IssuerOutbox.__table__, IssuerProcessed.__table__]


def _outbox_rows(events: Sequence[Event]) -> list[IssuerOutbox]:
    now = utcnow()
    return [
        IssuerOutbox(event_id=e.event_id, subject=e.subject, payload=encode_event(e), created_at=now)
        for e in events
    ]


class IssuerStore(StoreBase):
    service = "issuer"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.on_commit: Callable[[], None] = lambda: None

    # accounts

    async def get_or_create_account(self, account_id: str) -> IssuerAccount:
        async with self._session() as session:
            account = await session.get(IssuerAccount, account_id)
            if account is None:
                account = IssuerAccount(id=account_id, created_at=utcnow())
                session.add(account)
                try:
                    await session.commit()
                except Exception:
                    await session.rollback()
                    account = await session.get(IssuerAccount, account_id)
                    assert account is not None
            return account

    async def set_account_status(self, account_id: str, status: str) -> None:
        await self.get_or_create_account(account_id)
        async with self._session() as session:
            await session.execute(
                update(IssuerAccount).where(col(IssuerAccount.id) == account_id).values(status=status)
            )
            await session.commit()

    async def key_ids_of_account(self, account_id: str) -> list[str]:
        async with self._session() as session:
            result = await session.exec(
                select(IssuerKey.id).where(IssuerKey.account_id == account_id).order_by(col(IssuerKey.seq))
            )
            return list(result.all())

    async def set_webhook_secret(self, account_id: str, sealed: str) -> None:
        async with self._session() as session:
            await session.execute(
                update(IssuerAccount)
                .where(col(IssuerAccount.id) == account_id)
                .values(webhook_secret_sealed=sealed)
            )
            await session.commit()

    # keys

    async def insert_key(self, key: IssuerKey, events: Sequence[Event]) -> IssuerKey:
        async with self._session() as session:
            session.add(key)
            session.add_all(_outbox_rows(events))
            await session.commit()
        self.on_commit()
        return key.normalize_times()

    async def get_key(self, account_id: str, key_id: str) -> IssuerKey | None:
        async with self._session() as session:
            result = await session.exec(
                select(IssuerKey).where(IssuerKey.id == key_id, IssuerKey.account_id == account_id)
            )
            key = result.first()
            return key.normalize_times() if key else None

    async def get_key_by_id(self, key_id: str) -> IssuerKey | None:
        async with self._session() as session:
            result = await session.exec(select(IssuerKey).where(IssuerKey.id == key_id))
            key = result.first()
            return key.normalize_times() if key else None

    async def get_key_by_digest(self, digest: str) -> IssuerKey | None:
        async with self._session() as session:
            result = await session.exec(select(IssuerKey).where(IssuerKey.digest == digest))
            key = result.first()
            return key.normalize_times() if key else None

    async def count_keys(self, account_id: str) -> int:
        async with self._session() as session:
            result = await session.exec(
                select(func.count()).select_from(IssuerKey).where(IssuerKey.account_id == account_id)
            )
            return int(result.one())

    async def list_keys(
        self,
        account_id: str,
        *,
        statuses: Sequence[str] | None,
        environment: str | None,
        limit: int,
        before_seq: int | None,
    ) -> list[IssuerKey]:
        query = select(IssuerKey).where(IssuerKey.account_id == account_id)
        if statuses:
            query = query.where(col(IssuerKey.status).in_(statuses))
        if environment:
            query = query.where(IssuerKey.environment == environment)
        if before_seq is not None:
            query = query.where(col(IssuerKey.seq) < before_seq)
        query = query.order_by(col(IssuerKey.seq).desc()).limit(limit)
        async with self._session() as session:
            result = await session.exec(query)
            return [k.normalize_times() for k in result.all()]

    async def mutate_key(
        self, key_id: str, change: Callable[[IssuerKey], Sequence[Event]], *, extra: Sequence[IssuerKey] = ()
    ) -> IssuerKey | None:
        """Load a key (locked on PostgreSQL), apply `change`, write it and its events in one transaction.

        `change` returns the events to publish; returning none means nothing changed and nothing is
        written. `extra` rows (a rotation's new key) are inserted in the same transaction.
        """
        async with self._session() as session:
            query = select(IssuerKey).where(IssuerKey.id == key_id)
            if self._lock_rows:
                query = query.with_for_update()
            key = (await session.exec(query)).first()
            if key is None:
                return None
            key.normalize_times()
            events = change(key)
            if not events:
                # Detach so the unchanged key stays readable after the session closes (and rolls back).
                session.expunge(key)
                return key
            session.add(key)
            session.add_all(extra)
            session.add_all(_outbox_rows(events))
            await session.commit()
        self.on_commit()
        return key.normalize_times()

    async def record_usage(self, event_id: str, key_id: str, last_used_at: datetime, count: int) -> bool:
        """Apply one KeyUsed event once; later times win, counts add up. False when seen before."""
        async with self._session() as session:
            if await session.get(IssuerProcessed, event_id) is not None:
                return False
            session.add(IssuerProcessed(event_id=event_id, processed_at=utcnow()))
            key = (await session.exec(select(IssuerKey).where(IssuerKey.id == key_id))).first()
            if key is not None:
                current = as_utc(key.last_used_at)
                if current is None or last_used_at > current:
                    key.last_used_at = last_used_at
                key.use_count += count
                session.add(key)
            await session.commit()
            return True

    # outbox

    async def pending_events(self, limit: int) -> Sequence[IssuerOutbox]:
        async with self._session() as session:
            result = await session.exec(
                select(IssuerOutbox)
                .where(col(IssuerOutbox.published_at).is_(None))
                .order_by(col(IssuerOutbox.id))
                .limit(limit)
            )
            return result.all()

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self._session() as session:
            await session.execute(
                update(IssuerOutbox).where(col(IssuerOutbox.id).in_(ids)).values(published_at=utcnow())
            )
            await session.commit()

    async def pending_count(self) -> int:
        async with self._session() as session:
            result = await session.exec(
                select(func.count()).select_from(IssuerOutbox).where(col(IssuerOutbox.published_at).is_(None))
            )
            return int(result.one())
