"""What the issuer's use cases need of storage: a Protocol, answered by store.IssuerStore (SQLite or
PostgreSQL) and by any fake a test passes. Domain objects in, domain objects out (domain.Key, Account,
Caller; audit.AuditEntry): no table class crosses this line.

Every change and the events it causes are written in one transaction, which is what makes the outbox
transactional: `insert_key`, `mutate_key` and `change_account_plan` take the events with the change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from shared.events import Event

from .audit import AuditEntry, AuditRecord
from .domain import Account, Caller, Key

# A change to one key: mutates it, returns the events it causes (none: nothing changed, nothing written).
KeyChange = Callable[[Key], Sequence[Event]]


class IssuerStore(Protocol):
    # accounts

    async def get_or_create_account(self, account_id: str) -> Account: ...

    async def set_account_status(
        self, account_id: str, status: str, audit: AuditRecord | None = None
    ) -> bool:
        """True when the status changed (then `audit` is written with it)."""
        ...

    async def change_account_plan(
        self,
        account_id: str,
        plan: str,
        occurred_at: datetime | None,
        change: KeyChange,
        *,
        batch: int = 500,
        rate_limit: dict[str, Any] | None = None,
        audit: AuditRecord | None = None,
    ) -> int | None:
        """How many live keys `change` changed; None when `occurred_at` is older than the last applied."""
        ...

    async def rotate_webhook_secret(
        self, account_id: str, sealed: str, previous_until: datetime, audit: AuditRecord | None = None
    ) -> None: ...

    async def set_first_webhook_secret(
        self, account_id: str, sealed: str, audit: AuditRecord | None = None
    ) -> Account:
        """The account as stored: the secret another replica set first wins."""
        ...

    # keys

    async def find_caller(self, digests: Sequence[str]) -> Caller | None: ...

    async def insert_key(
        self,
        key: Key,
        events: Sequence[Event],
        *,
        live_limit: int | None = None,
        audit: Sequence[AuditRecord] = (),
    ) -> Key:
        """Raises domain.QuotaExceeded when the account has `live_limit` live keys already."""
        ...

    async def mutate_key(
        self,
        key_id: str,
        change: KeyChange,
        *,
        extra: Sequence[Key] = (),
        live_limit: int | None = None,
        audit: Sequence[AuditRecord] = (),
    ) -> Key | None: ...

    async def get_key(self, account_id: str, key_id: str) -> Key | None: ...

    async def get_key_by_id(self, key_id: str) -> Key | None: ...

    async def get_key_by_digest(self, digest: str) -> Key | None: ...

    async def key_ids_of_account(self, account_id: str) -> list[str]: ...

    async def count_keys(self, account_id: str) -> int: ...

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
        """Newest first, strictly before `before_seq`, whose effective status at `now` is `status`."""
        ...

    # usage

    async def record_usage(
        self,
        event_id: str,
        key_id: str,
        last_used_at: datetime,
        count: int,
        *,
        allowed: int | None = None,
        refused: int = 0,
    ) -> bool: ...

    async def usage_by_hour(self, key_id: str, since: datetime) -> list[tuple[datetime, int, int]]: ...

    # audit trail

    async def add_audit(self, records: Sequence[AuditRecord]) -> None: ...

    async def page_audit(
        self,
        account_id: str,
        *,
        key_id: str | None,
        action: str | None,
        since: datetime | None,
        limit: int,
        before_seq: int | None,
    ) -> list[AuditEntry]: ...
