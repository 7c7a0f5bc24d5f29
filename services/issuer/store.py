"""The issuer's store: the key catalog, accounts and the outbox. The only place sessions are opened.

A change and the events it causes are written in one transaction (`mutate_key`, `insert_key`), which is
what makes the outbox transactional. The tables and their mapping to domain objects are in tables.py,
the key list's queries in listing.py, the audit trail's rows in audit_rows.py, usage in usage_rows.py;
what comes out of here is a domain object (`Key`, `Account`, `AuditEntry`), never a table row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select

from shared.db import StoreBase, table_of
from shared.events import Event, encode_event
from shared.timeutil import as_utc, utcnow

from .audit import AuditEntry, AuditRecord
from .audit_rows import INSERT_AUDIT, audit_page_query, audit_rows
from .domain import Account, Caller, Key, check_quota
from .listing import page_query
from .tables import (
    KEY_SELECT,
    KEY_TABLE,
    KEYS,
    IssuerAccount,
    IssuerKey,
    IssuerOutbox,
    IssuerProcessed,
    account_of,
    json_or_none,
    key_of,
    key_row,
)
from .usage_rows import add_to_hour, usage_query, usage_rows

# The statements of a key creation, built once: building them per request cost more CPU than running
# them (SQLAlchemy caches the compiled SQL, not the Python construct).
_FIND_CALLER = (
    sa_select(
        IssuerKey.id,  # type: ignore[call-overload]  # SQLModel types these as values; rows are Any, as key_of's
        IssuerKey.account_id,
        IssuerKey.scopes,
        IssuerKey.environment,
        IssuerKey.ip_allowlist,
        IssuerKey.status,
        IssuerKey.expires_at,
        IssuerKey.grace_until,
        IssuerAccount.status,
        IssuerAccount.plan,
        IssuerAccount.rate_limit,
    )
    .outerjoin(IssuerAccount, col(IssuerAccount.id) == col(IssuerKey.account_id))
    .where(col(IssuerKey.digest).in_(bindparam("digests", expanding=True)))
    .limit(1)
)
# An account's keys that are not revoked or expired at `now` (their effective status, as
# `domain.effective_status`), counted no further than `cap`: every column is in
# ix_issuer_keys_account_status_expiry, so the count reads that index and no table row.
_LIVE = (
    sa_select(KEYS.account_id)
    .where(
        KEYS.account_id == bindparam("account_id"),
        KEYS.status.in_(("active", "rotating")),
        or_(KEYS.expires_at.is_(None), KEYS.expires_at > bindparam("now")),
        or_(KEYS.grace_until.is_(None), KEYS.grace_until > bindparam("now")),
    )
    .limit(bindparam("cap"))
    .subquery()
)
_COUNT_LIVE = sa_select(func.count()).select_from(_LIVE)
_LOCK_ACCOUNT = (
    sa_select(col(IssuerAccount.id)).where(col(IssuerAccount.id) == bindparam("account_id")).with_for_update()
)
_INSERT_KEY = insert(KEY_TABLE)
_INSERT_OUTBOX = insert(table_of(IssuerOutbox))
_PENDING = (
    select(IssuerOutbox)
    .where(col(IssuerOutbox.published_at).is_(None))
    .order_by(col(IssuerOutbox.id))
    .limit(bindparam("limit"))
)
_MARK_PUBLISHED = (
    update(IssuerOutbox)
    .where(col(IssuerOutbox.id).in_(bindparam("ids", expanding=True)))
    .values(published_at=bindparam("now"))
)
_KEY_BY = {
    name: sa_select(*KEY_SELECT).where(getattr(KEYS, name) == bindparam("value")) for name in ("id", "digest")
}
_KEY_IDS_OF_ACCOUNT = sa_select(KEYS.id).where(KEYS.account_id == bindparam("account_id")).order_by(KEYS.seq)


def _outbox_values(events: Sequence[Event]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {"event_id": e.event_id, "subject": e.subject, "payload": encode_event(e), "created_at": now}
        for e in events
    ]


def _update_key(key: Key) -> Any:
    return update(KEY_TABLE).where(KEYS.seq == key.seq).values(key_row(key))


class IssuerStore(StoreBase):
    service = "issuer"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.on_commit: Callable[[], None] = lambda: None

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one read statement. On PostgreSQL in autocommit: a single statement sees one
        snapshot anyway, and BEGIN and ROLLBACK would be two more round trips."""
        async with self.engine.connect() as conn:
            if self._lock_rows:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    # accounts

    async def get_or_create_account(self, account_id: str) -> Account:
        return account_of(await self._account_row(account_id))

    async def _account_row(self, account_id: str) -> IssuerAccount:
        async with self._session() as session:
            account = await session.get(IssuerAccount, account_id)
        if account is not None:
            return account
        # Writes take turns (StoreBase._writing): on SQLite, concurrent writers of this process otherwise
        # sleep in SQLite's busy handler, and under load those sleeps set the pace.
        async with self._writing() as session:
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

    async def set_account_status(
        self, account_id: str, status: str, audit: AuditRecord | None = None
    ) -> bool:
        """Set the account's status; `audit` is written with it when the status changed (a replayed
        event changes nothing and records nothing). True when it changed."""
        await self.get_or_create_account(account_id)
        async with self._writing() as session:
            result = await session.exec(
                update(IssuerAccount)
                .where(col(IssuerAccount.id) == account_id, col(IssuerAccount.status) != status)
                .values(status=status)
            )
            changed = bool(result.rowcount)
            if changed and audit is not None:
                await session.execute(INSERT_AUDIT, audit_rows([audit], account_id=account_id))
            await session.commit()
        return changed

    async def change_account_plan(
        self,
        account_id: str,
        plan: str,
        occurred_at: datetime | None,
        change: Callable[[Key], Sequence[Event]],
        *,
        batch: int = 500,
        rate_limit: dict[str, Any] | None = None,
        audit: AuditRecord | None = None,
    ) -> int | None:
        """Move an account to `plan` and apply `change` to each of its live keys, in one transaction with
        the events `change` returns. None when `occurred_at` is older than the last change applied (a
        late delivery), else how many keys changed. Keys are read `batch` at a time by `seq` and let go
        once written, so a large account does not hold every key in memory."""
        await self.get_or_create_account(account_id)
        occurred_at = as_utc(occurred_at)  # a time given without an offset is taken as UTC
        changed = 0
        async with self._writing() as session:
            query = select(IssuerAccount).where(IssuerAccount.id == account_id)
            if self._lock_rows:
                # Two replicas' changes for one account (or one and a suspension) apply one after the other.
                query = query.with_for_update()
            account = (await session.exec(query)).one()
            last = as_utc(account.plan_changed_at)
            if occurred_at is not None and last is not None and occurred_at < last:
                return None
            account.plan = plan
            if plan != "enterprise":
                account.rate_limit = None
            elif rate_limit is not None:
                # An enterprise change without a limit keeps the one the account had.
                account.rate_limit = rate_limit
            if occurred_at is not None:
                account.plan_changed_at = occurred_at
            session.add(account)
            await session.flush()
            after = 0
            while True:
                keys_query = (
                    sa_select(*KEY_SELECT)
                    .where(
                        KEYS.account_id == account_id,
                        KEYS.seq > after,
                        KEYS.status.not_in(("revoked", "expired")),
                    )
                    .order_by(KEYS.seq)
                    .limit(batch)
                )
                if self._lock_rows:
                    keys_query = keys_query.with_for_update()
                keys = [key_of(row) for row in (await session.execute(keys_query)).all()]
                if not keys:
                    break
                after = keys[-1].seq or after
                for key in keys:
                    events = change(key)
                    if events:
                        await session.execute(_update_key(key))
                        await session.execute(_INSERT_OUTBOX, _outbox_values(events))
                        changed += 1
            if audit is not None:
                rows = audit_rows([audit], account_id=account_id, more={"keys_changed": changed})
                await session.execute(INSERT_AUDIT, rows)
            await session.commit()
        if changed:
            self.on_commit()
        return changed

    async def key_ids_of_account(self, account_id: str) -> list[str]:
        async with self._reading() as conn:
            result = await conn.execute(_KEY_IDS_OF_ACCOUNT, {"account_id": account_id})
            return list(result.scalars().all())

    async def rotate_webhook_secret(
        self, account_id: str, sealed: str, previous_until: datetime, audit: AuditRecord | None = None
    ) -> None:
        """The new secret becomes current and the current one previous, until `previous_until`. One
        UPDATE (its right-hand sides read the row as it was), so concurrent rotations cannot lose one."""
        async with self._writing() as session:
            await session.execute(
                update(IssuerAccount)
                .where(col(IssuerAccount.id) == account_id)
                .values(
                    webhook_secret_previous_sealed=col(IssuerAccount.webhook_secret_sealed),
                    webhook_secret_previous_until=previous_until,
                    webhook_secret_sealed=sealed,
                )
            )
            if audit is not None:
                await session.execute(INSERT_AUDIT, audit_rows([audit], account_id=account_id))
            await session.commit()

    async def set_first_webhook_secret(
        self, account_id: str, sealed: str, audit: AuditRecord | None = None
    ) -> Account:
        """Give the account `sealed` unless it has a secret already; returns the account as stored (the
        secret another replica set first wins, and only the one that set it writes `audit`)."""
        async with self._writing() as session:
            result = await session.exec(
                update(IssuerAccount)
                .where(
                    col(IssuerAccount.id) == account_id,
                    col(IssuerAccount.webhook_secret_sealed).is_(None),
                )
                .values(webhook_secret_sealed=sealed)
            )
            if result.rowcount and audit is not None:
                await session.execute(INSERT_AUDIT, audit_rows([audit], account_id=account_id))
            await session.commit()
            account = await session.get(IssuerAccount, account_id)
            assert account is not None
            return account_of(account)

    # keys

    async def _check_live(self, conn: Any, account_id: str, live_limit: int | None) -> None:
        """Refuse (QuotaExceeded) when the account already has `live_limit` live keys. Runs in the
        transaction that adds the key: on SQLite this process's writers take turns, on PostgreSQL the
        account row is locked first, so two creations cannot both take the last place."""
        if live_limit is None:
            return
        if self._lock_rows:
            await conn.execute(_LOCK_ACCOUNT, {"account_id": account_id})
        now = utcnow()
        live = (
            await conn.execute(_COUNT_LIVE, {"account_id": account_id, "now": now, "cap": live_limit})
        ).scalar_one()
        check_quota(int(live), live_limit)

    async def insert_key(
        self,
        key: Key,
        events: Sequence[Event],
        *,
        live_limit: int | None = None,
        audit: Sequence[AuditRecord] = (),
    ) -> Key:
        """Insert a new key, its events and its audit entries in one transaction. Plain INSERTs rather
        than an ORM flush (measured: 0.3 ms of a creation's 1.4 ms CPU); the returned key has no `seq`,
        which nothing reads of a new key. `live_limit`: refuse when the account has that many live keys
        already."""
        row = key_row(key)
        outbox = _outbox_values(events)
        async with self._write_turn, self.engine.begin() as conn:
            await self._check_live(conn, key.account_id, live_limit)
            await conn.execute(_INSERT_KEY, row)
            await conn.execute(_INSERT_OUTBOX, outbox)
            if audit:
                rows = audit_rows(audit, account_id=key.account_id, target_key_id=key.id)
                await conn.execute(INSERT_AUDIT, rows)
        self.on_commit()
        return key

    async def _key_by(self, column: str, value: str) -> Key | None:
        async with self._reading() as conn:
            row = (await conn.execute(_KEY_BY[column], {"value": value})).first()
        return key_of(row) if row is not None else None

    async def get_key(self, account_id: str, key_id: str) -> Key | None:
        """The key, if it is the account's: another account's key is as missing as an unknown one."""
        key = await self._key_by("id", key_id)
        return key if key is not None and key.account_id == account_id else None

    async def get_key_by_id(self, key_id: str) -> Key | None:
        return await self._key_by("id", key_id)

    async def find_caller(self, digests: Sequence[str]) -> Caller | None:
        """The key with one of these digests and its account's status and plan: one statement and one
        session per management API call (it was three sessions, two of them the same account read)."""
        async with self._reading() as conn:
            row = (await conn.execute(_FIND_CALLER, {"digests": list(digests)})).first()
        if row is None:
            return None
        (key_id, account_id, scopes, environment, allowlist, status) = row[:6]
        (expires_at, grace_until, account_status, plan, account_rate_limit) = row[6:]
        return Caller(
            key_id=key_id,
            account_id=account_id,
            scopes=scopes,
            environment=environment,
            ip_allowlist=allowlist or [],
            status=status,
            expires_at=as_utc(expires_at),
            grace_until=as_utc(grace_until),
            account_status=account_status,
            account_plan=plan,
            account_rate_limit=account_rate_limit,
        )

    async def get_key_by_digest(self, digest: str) -> Key | None:
        return await self._key_by("digest", digest)

    async def count_keys(self, account_id: str) -> int:
        async with self._reading() as conn:
            result = await conn.execute(
                sa_select(func.count()).select_from(KEY_TABLE).where(KEYS.account_id == account_id)
            )
            return int(result.scalar_one())

    async def page_keys(
        self,
        account_id: str,
        *,
        status: str | None,
        environment: str | None,
        now: datetime,
        limit: int,
        before_seq: int | None,
    ) -> list[Key]:
        """A page of the key list: keys whose effective status at `now` is `status` (any when None)."""
        now = now.astimezone(UTC)  # SQLite stores UTC wall times and compares them as text
        query = page_query(
            account_id, status=status, environment=environment, now=now, limit=limit, before_seq=before_seq
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [key_of(row) for row in rows]

    async def mutate_key(
        self,
        key_id: str,
        change: Callable[[Key], Sequence[Event]],
        *,
        extra: Sequence[Key] = (),
        live_limit: int | None = None,
        audit: Sequence[AuditRecord] = (),
    ) -> Key | None:
        """Load a key (locked on PostgreSQL), apply `change`, write it and its events in one transaction.

        `change` returns the events to publish; returning none means nothing changed and nothing is
        written (`audit` neither). `extra` keys (a rotation's new key) are inserted in the same
        transaction, after the account's live keys are checked against `live_limit` (when given); so are
        the `audit` entries, their account and target being the key's unless they name their own.
        """
        query = _KEY_BY["id"].with_for_update() if self._lock_rows else _KEY_BY["id"]
        async with self._write_turn, self.engine.begin() as conn:
            if live_limit is not None and extra:
                await self._check_live(conn, extra[0].account_id, live_limit)
            row = (await conn.execute(query, {"value": key_id})).first()
            if row is None:
                return None
            key = key_of(row)
            events = change(key)
            if not events:
                return key
            await conn.execute(_update_key(key))
            if extra:
                await conn.execute(_INSERT_KEY, [key_row(new) for new in extra])
            await conn.execute(_INSERT_OUTBOX, _outbox_values(events))
            if audit:
                rows = audit_rows(audit, account_id=key.account_id, target_key_id=key.id)
                await conn.execute(INSERT_AUDIT, rows)
        self.on_commit()
        return key

    async def record_usage(
        self,
        event_id: str,
        key_id: str,
        last_used_at: datetime,
        count: int,
        *,
        allowed: int | None = None,
        refused: int = 0,
    ) -> bool:
        """Apply one KeyUsed event once; later times win, counts add up. False when seen before.
        `allowed` (default: `count`) and `refused` go to the key's bucket of the hour of `last_used_at`;
        only an allowed use moves `last_used_at` (a refused presentation is no use of the key)."""
        allowed = count if allowed is None else allowed
        async with self._writing() as session:
            if await session.get(IssuerProcessed, event_id) is not None:
                return False
            session.add(IssuerProcessed(event_id=event_id, processed_at=utcnow()))
            key = (await session.exec(select(IssuerKey).where(IssuerKey.id == key_id))).first()
            if key is not None:
                if allowed > 0:
                    current = as_utc(key.last_used_at)
                    if current is None or last_used_at > current:
                        key.last_used_at = last_used_at
                    key.use_count += allowed
                    session.add(key)
                await add_to_hour(session, key_id, last_used_at, allowed, refused)
            await session.commit()
            return True

    async def usage_by_hour(self, key_id: str, since: datetime) -> list[tuple[datetime, int, int]]:
        """(hour, allowed, refused) of the key's buckets from `since` on, oldest first."""
        async with self._reading() as conn:
            return usage_rows((await conn.execute(usage_query(key_id, since))).all())

    # audit trail

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        """Entries that record no change of their own (denials)."""
        async with self._write_turn, self.engine.begin() as conn:
            await conn.execute(INSERT_AUDIT, audit_rows(records))

    async def page_audit(
        self,
        account_id: str,
        *,
        key_id: str | None,
        action: str | None,
        since: datetime | None,
        limit: int,
        before_seq: int | None,
    ) -> list[AuditEntry]:
        if since is not None:
            since = since.astimezone(UTC)  # SQLite stores UTC wall times and compares them as text
        query = audit_page_query(
            account_id, key_id=key_id, action=action, since=since, limit=limit, before_seq=before_seq
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AuditEntry(seq, id_, as_utc(at), action_, actor, target, ip, agent, json_or_none(details))
            for (seq, id_, at, action_, actor, target, ip, agent, details) in rows
        ]

    # outbox

    # The relay runs these once or twice per round, and under load a round carries only the few events
    # committed since the last one: prebuilt statements, and the update as a plain UPDATE.

    async def pending_events(self, limit: int) -> Sequence[IssuerOutbox]:
        async with self._session() as session:
            return (await session.exec(_PENDING, params={"limit": limit})).all()

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self._write_turn, self.engine.begin() as conn:
            await conn.execute(_MARK_PUBLISHED, {"ids": list(ids), "now": utcnow()})

    async def pending_count(self) -> int:
        async with self._session() as session:
            result = await session.exec(
                select(func.count()).select_from(IssuerOutbox).where(col(IssuerOutbox.published_at).is_(None))
            )
            return int(result.one())
