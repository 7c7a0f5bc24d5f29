"""The notifier's store: the delivery log. One row per (key, purpose, expiry, channel), and every attempt.

The only module that opens sessions, and the only one that sees the table classes: it answers
ports.NotifierStore with domain objects (Delivery, Attempt). A delivery row is written before its first
attempt and each attempt is logged as `started` before sending and with its outcome after, so a
redelivered event finds what was already done and never sends a delivered notice again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, select

from shared.db import StoreBase, timestamp_field
from shared.timeutil import as_utc, utcnow

from .domain import MAX_DETAIL, Attempt, Delivery, Notice


class NotifierDelivery(SQLModel, table=True):
    __tablename__ = "notifier_deliveries"

    id: str = Field(primary_key=True, max_length=40)
    key_id: str = Field(max_length=40, index=True)
    account_id: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    purpose: str = Field(max_length=40)
    type: str = Field(max_length=32)
    expires_at: datetime | None = timestamp_field(nullable=True)
    status: str = Field(max_length=16, index=True)  # pending | retrying | delivered | failed
    attempts: int = 0
    first_attempt_at: datetime | None = timestamp_field(nullable=True)
    next_attempt_at: datetime | None = timestamp_field(nullable=True)
    last_error: str | None = Field(default=None, max_length=MAX_DETAIL)
    created_at: datetime = timestamp_field(nullable=False)
    updated_at: datetime = timestamp_field(nullable=False)

    def delivery(self) -> Delivery:
        return Delivery(
            id=self.id,
            key_id=self.key_id,
            account_id=self.account_id,
            channel=self.channel,
            purpose=self.purpose,
            type=self.type,
            expires_at=as_utc(self.expires_at),
            status=self.status,
            attempts=self.attempts,
            first_attempt_at=as_utc(self.first_attempt_at),
            next_attempt_at=as_utc(self.next_attempt_at),
            last_error=self.last_error,
            created_at=as_utc(self.created_at),
            updated_at=as_utc(self.updated_at),
        )


class NotifierAttempt(SQLModel, table=True):
    __tablename__ = "notifier_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(max_length=40, index=True)
    attempt: int
    started_at: datetime = timestamp_field(nullable=False)
    finished_at: datetime | None = timestamp_field(nullable=True)
    outcome: str = Field(max_length=16)  # started | delivered | retry | failed
    detail: str | None = Field(default=None, max_length=MAX_DETAIL)

    def entry(self) -> Attempt:
        assert self.id is not None  # read back from the table: it has its id
        return Attempt(
            id=self.id,
            delivery_id=self.delivery_id,
            attempt=self.attempt,
            started_at=as_utc(self.started_at),
            finished_at=as_utc(self.finished_at),
            outcome=self.outcome,
            detail=self.detail,
        )


class NotifierStore(StoreBase):
    service = "notifier"

    async def ensure_delivery(self, notice: Notice, channel: str) -> Delivery:
        """The delivery row of (key, purpose, expiry, channel), created `pending` the first time."""
        delivery_id = notice.dedupe_key(channel)
        async with self._session() as session:
            row = await session.get(NotifierDelivery, delivery_id)
            if row is not None:
                return row.delivery()
            now = utcnow()
            row = NotifierDelivery(
                id=delivery_id,
                key_id=notice.key_id,
                account_id=notice.account_id,
                channel=channel,
                purpose=notice.purpose,
                type=notice.type,
                expires_at=notice.expires_at,
                status="pending",
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                row = await session.get(NotifierDelivery, delivery_id)
                assert row is not None
            return row.delivery()

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Log an attempt before it is made; returns the attempt's row id."""
        async with self._session() as session:
            row = await session.get(NotifierDelivery, delivery_id)
            assert row is not None
            row.attempts += 1
            row.first_attempt_at = row.first_attempt_at or now
            row.updated_at = now
            attempt = NotifierAttempt(
                delivery_id=delivery_id, attempt=row.attempts, started_at=now, outcome="started"
            )
            session.add_all([row, attempt])
            await session.commit()
            assert attempt.id is not None
            return attempt.id

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
        async with self._session() as session:
            await session.execute(
                update(NotifierAttempt)
                .where(col(NotifierAttempt.id) == attempt_id)
                .values(outcome=outcome, detail=(detail or "")[:MAX_DETAIL] or None, finished_at=now)
            )
            await session.execute(
                update(NotifierDelivery)
                .where(col(NotifierDelivery.id) == delivery_id)
                .values(
                    status=status,
                    next_attempt_at=next_attempt_at,
                    updated_at=now,
                    last_error=None if outcome == "delivered" else (detail or "")[:MAX_DETAIL],
                )
            )
            await session.commit()

    async def deliveries(self, key_id: str | None = None) -> list[Delivery]:
        """Oldest first."""
        query = select(NotifierDelivery).order_by(col(NotifierDelivery.created_at))
        if key_id is not None:
            query = query.where(NotifierDelivery.key_id == key_id)
        async with self._session() as session:
            return [r.delivery() for r in (await session.exec(query)).all()]

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        """In the order they were made."""
        query = select(NotifierAttempt).where(NotifierAttempt.delivery_id == delivery_id)
        async with self._session() as session:
            return [r.entry() for r in (await session.exec(query.order_by(col(NotifierAttempt.id)))).all()]

    async def count(self, status: str) -> int:
        query = select(func.count()).select_from(NotifierDelivery).where(NotifierDelivery.status == status)
        async with self._session() as session:
            return int((await session.exec(query)).one())
