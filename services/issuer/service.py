"""Issuer use cases: mint, list, change, rotate, renew, revoke keys. No NATS, no HTTP here.

Each change bumps the key's `revision` and records its event in the outbox and its audit trail entry
(services/issuer/audit.py) in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from shared import scopes as scope_rules
from shared import tokens
from shared.commands import WEBHOOK_SECRET_CONTEXT
from shared.crypto import FieldCipher
from shared.errors import Conflict, DomainError, InvalidInput, NotFound, Unauthorized
from shared.events import (
    NOTIFY_CONTEXT,
    Event,
    KeyCreated,
    KeyExpired,
    KeyRenewed,
    KeyRevoked,
    KeyRotated,
    KeyStatus,
    KeyUpdated,
    KeyView,
    RateLimit,
    RevocationCause,
)
from shared.timeutil import Clock, as_utc, ceil_second, utcnow
from shared.validation import PlansChanged
from shared.webhook_targets import TargetPolicy, TargetRefused, TargetUnresolved

from . import audit, domain, leaks
from .audit import NO_ORIGIN, AuditEntry, AuditRecord, DenialGate, Origin
from .domain import Key
from .ports import IssuerStore
from .schemas import CreateKey, Notify, StoredNotify, UpdateKey


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of the management API, as proven by its key."""

    account_id: str
    key_id: str
    scopes: list[str]
    # The caller key's environment: it manages keys of this environment or a lower one.
    environment: str = "prod"
    # The account's plan and custom limit as read with the key (plan None: not read, ask the store), so
    # a creation needs no second read of the account in the same request.
    plan: str | None = None
    account_rate_limit: dict[str, Any] | None = None
    # Where the call came from, for the audit trail.
    origin: Origin = NO_ORIGIN


def make_webhook_secret() -> str:
    """`whsec_` and 32 random bytes in base64 (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def _nothing_to_wait_for(events: Sequence[Event]) -> None:
    return None


def new_key_id() -> str:
    return "key_" + "".join(secrets.choice(tokens.ALPHABET) for _ in range(24))


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode().rstrip("=")


_CURSOR = re.compile(r"s:([1-9][0-9]{0,18})")
# The largest key `seq` every store can hold: the column is an INTEGER, 32 bits on PostgreSQL.
MAX_SEQ = 2**31 - 1
# The largest audit entry `seq`: a BIGINT.
MAX_AUDIT_SEQ = 2**63 - 1


def decode_cursor(cursor: str, max_seq: int = MAX_SEQ) -> int:
    """The `seq` a cursor of `encode_cursor` holds; anything else (not base64, not `s:<n>` in its
    canonical form, n outside 1..max_seq) is a 422, never a query with a number the store cannot hold."""
    refused = InvalidInput("cursor is not one this API returned", field="cursor")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        match = _CURSOR.fullmatch(raw.decode("ascii"))
    except (binascii.Error, ValueError) as exc:
        raise refused from exc
    if match is None or int(match.group(1)) > max_seq or encode_cursor(int(match.group(1))) != cursor:
        raise refused
    return int(match.group(1))


class IssuerService:
    def __init__(
        self,
        store: IssuerStore,
        *,
        peppers: Sequence[bytes],
        cipher: FieldCipher,
        default_expiry_days: int = 90,
        rotation_grace: timedelta = timedelta(hours=24),
        max_keys_per_account: int = 10_000,
        clock: Clock = utcnow,
        webhook_targets: TargetPolicy | None = None,
        webhook_secret_overlap: timedelta = timedelta(hours=24),
        audit_denials_per_minute: int = 30,
    ) -> None:
        self.store = store
        self.max_keys_per_account = max_keys_per_account
        self._peppers = list(peppers)
        self._cipher = cipher
        self._default_expiry_days = default_expiry_days
        self._rotation_grace = rotation_grace
        self._clock = clock
        # Secure unless told otherwise: the composition root passes CNX_WEBHOOK_ALLOW_PRIVATE.
        self._webhook_targets = webhook_targets or TargetPolicy(allow_private=False)
        self._webhook_secret_overlap = webhook_secret_overlap
        self._denials = DenialGate(audit_denials_per_minute)
        # Awaited once a new key is committed, with its KeyCreated: app.py waits there until the event is
        # in the stream, so the key works at every validator the moment the 201 returns.
        self.new_key_committed: Callable[[Sequence[Event]], Awaitable[object]] = _nothing_to_wait_for

    # views

    def view(self, key: Key) -> KeyView:
        return KeyView(
            key_id=key.id,
            account_id=key.account_id,
            prefix=key.prefix,
            digest=key.digest,
            name=key.name,
            environment=key.environment,
            scopes=key.scopes,
            plan=key.plan,
            rate_limit=RateLimit(**key.rate_limit) if key.rate_limit else None,
            ip_allowlist=key.ip_allowlist,
            status=key.status,
            created_at=key.created_at,
            expires_at=key.expires_at,
            grace_until=key.grace_until,
            auto_renew=key.auto_renew,
            lifetime_days=key.lifetime_days,
            notify_sealed=key.notify_sealed,
            revision=key.revision,
            suspended=key.suspended,
        )

    def status_of(self, key: Key) -> KeyStatus:
        return domain.effective_status(key.status, key.expires_at, key.grace_until, self._clock())

    def notify_of(self, key: Key) -> StoredNotify | None:
        """The stored targets as they are: read with the lenient output model, never the input one, so
        a row written under older rules (a URL over today's bound) still serves."""
        if not key.notify_sealed:
            return None
        return StoredNotify.model_validate_json(
            self._cipher.decrypt(key.notify_sealed, context=NOTIFY_CONTEXT)
        )

    async def _check_webhook_target(self, notify: Notify | None) -> None:
        """The SSRF rule (shared/webhook_targets.py) on a new webhook URL: 422 naming the field when the
        target is internal. A name that does not resolve (yet, or within the bound) is accepted: DNS may
        be set up later, and the notifier applies the same rule to the address it connects to."""
        if notify is None or notify.webhook_url is None:
            return
        try:
            await self._webhook_targets.check(str(notify.webhook_url))
        except TargetRefused as exc:
            raise InvalidInput(f"notify.webhook_url: {exc}", field="notify.webhook_url") from exc
        except TargetUnresolved:
            pass

    def _seal_notify(self, notify: Notify | None) -> str | None:
        if notify is None or (notify.email is None and notify.webhook_url is None):
            return None
        return self._cipher.encrypt(notify.model_dump_json(exclude_none=True), context=NOTIFY_CONTEXT)

    # authentication

    def digest(self, token: str) -> str:
        return tokens.digest(self._peppers[0], token)

    async def authenticate(
        self, token: str | None, client_ip: str | None = None, *, origin: Origin = NO_ORIGIN
    ) -> Principal:
        """The management API trusts its own catalog: a revoked key is refused the moment it commits.
        The key is held to its own limits as forward-auth holds it: its expiry and its IP allowlist
        (`client_ip`: the address CNX_TRUSTED_PROXIES lets us believe). A refusal is recorded as
        `auth.denied`: in the key's account when the key is one of ours, else without an account."""
        if not token:
            await self._refuse(
                Unauthorized("an API key is required: send Authorization: Bearer <key>"), origin
            )
        if not tokens.is_well_formed(token):
            await self._refuse(Unauthorized("the API key is malformed"), origin)
        # Every pepper still accepted, in one statement: the key and its account are read together.
        caller = await self.store.find_caller([tokens.digest(pepper, token) for pepper in self._peppers])
        if caller is None:
            await self._refuse(Unauthorized("the API key is not valid"), origin)
        assert caller is not None
        known = {"account_id": caller.account_id, "key_id": caller.key_id}
        status = domain.effective_status(caller.status, caller.expires_at, caller.grace_until, self._clock())
        if status not in ("active", "rotating"):
            await self._refuse(Unauthorized(f"the API key is {status}"), origin, **known)
        account_status, plan = caller.account_status, caller.account_plan
        if account_status is None:
            account = await self.store.get_or_create_account(caller.account_id)
            account_status, plan = account.status, account.plan
        if account_status != "active":
            await self._refuse(Unauthorized(f"the account is {account_status}"), origin, **known)
        if not domain.address_allowed(client_ip, caller.ip_allowlist):
            await self._refuse(
                domain.IpNotAllowed("the API key may not be used from this address"), origin, **known
            )
        return Principal(
            account_id=caller.account_id,
            key_id=caller.key_id,
            scopes=caller.scopes,
            environment=caller.environment,
            plan=plan,
            account_rate_limit=caller.account_rate_limit,
            origin=origin,
        )

    async def _refuse(
        self, error: DomainError, origin: Origin, *, account_id: str | None = None, key_id: str | None = None
    ) -> NoReturn:
        await self.record_denial(error, origin, account_id=account_id, key_id=key_id)
        raise error

    async def record_denial(
        self, error: DomainError, origin: Origin, *, account_id: str | None = None, key_id: str | None = None
    ) -> None:
        """An `auth.denied` entry for a refused management call (401/403), within DenialGate's limits.
        Without a known key (`key_id` None) the entry has no account: kept for operators, listed to no
        one, since no account can be told apart from another by a key that is not ours."""
        repeated = self._denials.admit(key_id, time.monotonic())
        if repeated is None:
            return
        details = audit.denial_details(error.status, error.code, error.message, origin, repeated)
        record = AuditRecord(
            audit.AUTH_DENIED, key_id, self._clock(), origin, account_id=account_id, details=details
        )
        await self.store.add_audit([record])

    # use cases

    async def create_key(self, principal: Principal, request: CreateKey) -> tuple[Key, str]:
        domain.require_admin(principal.scopes, domain.ADMIN_WRITE)
        now = self._clock()
        domain.check_environment(principal.environment, request.environment)
        scopes = domain.check_scopes(request.scopes, principal.scopes)
        await self._check_webhook_target(request.notify)
        # Read (and made) with the caller's key unless the caller was not authenticated (bootstrap).
        account_plan, account_limit = principal.plan, principal.account_rate_limit
        if account_plan is None:
            account = await self.store.get_or_create_account(principal.account_id)
            account_plan, account_limit = account.plan, account.rate_limit
        plan = domain.check_plan(request.plan or account_plan, account_plan)
        rate_limit = domain.resolve_rate_limit(plan, request.rate_limit)
        if plan == "enterprise":
            domain.check_custom_limit(rate_limit, RateLimit(**account_limit) if account_limit else None)
        expires_at, lifetime = domain.resolve_expiry(
            now, request.expires_in_days, request.expires_at, self._default_expiry_days
        )
        secret = tokens.generate(request.environment)
        key = Key(
            id=new_key_id(),
            account_id=principal.account_id,
            digest=self.digest(secret),
            prefix=tokens.display_prefix(secret),
            name=request.name,
            environment=request.environment,
            scopes=scopes,
            plan=plan,
            rate_limit=rate_limit.model_dump(),
            ip_allowlist=domain.check_cidrs(request.ip_allowlist),
            status="active",
            created_at=now,
            expires_at=expires_at,
            auto_renew=request.auto_renew,
            lifetime_days=lifetime,
            notify_sealed=self._seal_notify(request.notify),
            key_metadata=dict(request.metadata),
        )
        event = KeyCreated(account_id=key.account_id, key_id=key.id, key=self.view(key))
        entry = AuditRecord(
            audit.KEY_CREATED,
            principal.key_id,
            now,
            principal.origin,
            details={"environment": key.environment, "scopes": scopes, "plan": plan},
        )
        stored = await self.store.insert_key(
            key, [event], live_limit=self.max_keys_per_account, audit=[entry]
        )
        await self.new_key_committed([event])
        return stored, secret

    async def bootstrap_admin(self, account_id: str) -> str | None:
        """Mint the first full-access key of an empty account; None when the account has keys."""
        if await self.store.count_keys(account_id) > 0:
            return None
        root = Principal(
            account_id=account_id, key_id=audit.ACTOR_BOOTSTRAP, scopes=list(scope_rules.FULL_ACCESS)
        )
        request = CreateKey(
            name="Bootstrap admin",
            environment="prod",
            scopes=list(scope_rules.FULL_ACCESS),
            expires_in_days=365,
        )
        _, secret = await self.create_key(root, request)
        return secret

    def authorize_verify(self, principal: Principal) -> None:
        """`POST /v2/keys/verify` tells whether a secret is a live key: an admin:read question."""
        domain.require_admin(principal.scopes, domain.ADMIN_READ)

    async def get_key(self, principal: Principal, key_id: str) -> Key:
        domain.require_admin(principal.scopes, domain.ADMIN_READ)
        key = await self.store.get_key(principal.account_id, key_id)
        if key is None:
            # Another account's key is indistinguishable from a missing one.
            raise NotFound(f"no key {key_id!r} in this account")
        return key

    async def list_keys(
        self,
        principal: Principal,
        *,
        status: str | None,
        environment: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Key], str | None]:
        """One page, newest first, and the cursor of the next (None on the last page). The store filters
        on the effective status (stored status and times), so a page is one statement however many keys
        of the account do not match."""
        domain.require_admin(principal.scopes, domain.ADMIN_READ)
        before = decode_cursor(cursor) if cursor else None
        keys = await self.store.page_keys(
            principal.account_id,
            status=status,
            environment=environment,
            now=self._clock(),
            limit=limit + 1,
            before_seq=before,
        )
        if len(keys) > limit:
            last = keys[limit - 1].seq
            assert last is not None  # a key read from the store has its seq
            return keys[:limit], encode_cursor(last)
        return keys, None

    async def list_audit(
        self,
        principal: Principal,
        *,
        key_id: str | None,
        action: str | None,
        since: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[AuditEntry], str | None]:
        """One page of the caller's account's audit trail, newest first, and the next page's cursor."""
        domain.require_admin(principal.scopes, domain.ADMIN_READ)
        before = decode_cursor(cursor, MAX_AUDIT_SEQ) if cursor else None
        entries = await self.store.page_audit(
            principal.account_id,
            key_id=key_id,
            action=action,
            since=as_utc(since),
            limit=limit + 1,
            before_seq=before,
        )
        if len(entries) > limit:
            return entries[:limit], encode_cursor(entries[limit - 1].seq)
        return entries, None

    async def _target(self, principal: Principal, key_id: str) -> Key:
        """A key of the caller's account that the caller may write: admin:write, and a key of its own
        environment or a lower one whose scopes its own cover."""
        domain.require_admin(principal.scopes, domain.ADMIN_WRITE)
        key = await self.get_key(principal, key_id)
        domain.check_manages(principal.environment, principal.scopes, key.environment, key.scopes)
        return key

    async def _change(
        self,
        principal: Principal,
        key_id: str,
        change: Callable[[Key], Sequence[Event]],
        *,
        extra: Sequence[Key] = (),
        live_limit: int | None = None,
        audit: Sequence[AuditRecord] = (),
    ) -> Key:
        await self._target(principal, key_id)
        key = await self.store.mutate_key(key_id, change, extra=extra, live_limit=live_limit, audit=audit)
        assert key is not None
        return key

    async def update_key(self, principal: Principal, key_id: str, patch: UpdateKey) -> Key:
        domain.require_admin(principal.scopes, domain.ADMIN_WRITE)
        fields = patch.model_dump(exclude_unset=True)
        allowlist = domain.check_cidrs(patch.ip_allowlist) if patch.ip_allowlist is not None else None
        if "notify" in fields:
            await self._check_webhook_target(patch.notify)

        def change(key: Key) -> list[Event]:
            if self.status_of(key) in ("revoked", "expired"):
                raise Conflict(f"key {key.id} is {self.status_of(key)} and can no longer be changed")
            if "name" in fields and patch.name is not None:
                key.name = patch.name
            if allowlist is not None:
                key.ip_allowlist = allowlist
            if "auto_renew" in fields and patch.auto_renew is not None:
                key.auto_renew = patch.auto_renew
            if "notify" in fields:
                key.notify_sealed = self._seal_notify(patch.notify)
            if "metadata" in fields and patch.metadata is not None:
                key.key_metadata = dict(patch.metadata)
            if not fields:
                return []
            key.revision += 1
            return [
                KeyUpdated(
                    account_id=key.account_id, key_id=key.id, key=self.view(key), changed=sorted(fields)
                )
            ]

        # Which fields changed, never their values (a notification address is personal data).
        entry = self._entry(principal, audit.KEY_UPDATED, changed=sorted(fields))
        return await self._change(principal, key_id, change, audit=[entry])

    def _entry(self, principal: Principal, action: str, **details: Any) -> AuditRecord:
        """An entry of a change the caller's key makes (its account and target filled by the store)."""
        return AuditRecord(action, principal.key_id, self._clock(), principal.origin, details=details or None)

    async def revoke_key(
        self, principal: Principal, key_id: str, reason: str | None = None, *, action: str = audit.KEY_REVOKED
    ) -> Key:
        await self._target(principal, key_id)
        key = await self.revoke(
            key_id,
            reason or "revoked by user",
            cause=RevocationCause.USER,
            actor=principal.key_id,
            origin=principal.origin,
            action=action,
        )
        assert key is not None
        return key

    async def delete_key(self, principal: Principal, key_id: str) -> Key:
        """DELETE: a revocation, recorded as `key.deleted` (keys are never erased)."""
        return await self.revoke_key(principal, key_id, action=audit.KEY_DELETED)

    async def revoke_by_command(self, key_id: str, reason: str | None) -> Key | None:
        """keys.cmd.revoke: an operator's tool revokes a key, whichever account it is in."""
        return await self.revoke(key_id, reason or "revoked", cause=RevocationCause.COMMAND)

    async def key_by_id(self, key_id: str) -> Key | None:
        """The key as the system of record has it now (keys.cmd.status), whichever account it is in."""
        return await self.store.get_key_by_id(key_id)

    async def revoke(
        self,
        key_id: str,
        reason: str,
        *,
        cause: RevocationCause = RevocationCause.COMMAND,
        leak_source: str | None = None,
        leak_url: str | None = None,
        actor: str = audit.ACTOR_COMMAND,
        origin: Origin = NO_ORIGIN,
        action: str | None = None,
    ) -> Key | None:
        """Revoke whatever state the key is in; revoking twice changes nothing (and records nothing).
        `actor`: the key or platform source the audit trail names."""
        details: dict[str, Any] = {"reason": audit.scrub(reason, audit.MAX_REASON)}
        if leak_source is not None:
            where = {"leak_source": leak_source, "leak_url": leak_url}
            details |= {name: audit.scrub(text, 500) if text else None for name, text in where.items()}
        action = action or (audit.KEY_REVOKED_BY_LEAK if leak_source is not None else audit.KEY_REVOKED)
        entry = AuditRecord(action, actor, self._clock(), origin, details=details)

        def change(key: Key) -> list[Event]:
            if key.status == "revoked":
                return []
            key.status = "revoked"
            key.revision += 1
            return [
                KeyRevoked(
                    account_id=key.account_id,
                    key_id=key.id,
                    key=self.view(key),
                    reason=reason,
                    cause=cause,
                    leak_source=leak_source,
                    leak_url=leak_url,
                )
            ]

        return await self.store.mutate_key(key_id, change, audit=[entry])

    async def rotate_key(
        self, principal: Principal, key_id: str, grace_period_hours: float | None
    ) -> tuple[Key, str, Key]:
        """A new key with the old one's settings; the old stays valid until `grace_until`."""
        old = await self._target(principal, key_id)
        now = self._clock()
        grace = self._rotation_grace if grace_period_hours is None else timedelta(hours=grace_period_hours)
        grace_until = ceil_second(now + grace)
        lifetime = (
            timedelta(days=old.lifetime_days)
            if old.lifetime_days
            else (
                old.expires_at - old.created_at
                if old.expires_at
                else timedelta(days=self._default_expiry_days)
            )
        )
        secret = tokens.generate(old.environment)
        # The old key's settings; what makes it a new key is written here.
        new = replace(
            old,
            id=new_key_id(),
            digest=self.digest(secret),
            prefix=tokens.display_prefix(secret),
            status="active",
            created_at=now,
            expires_at=now + min(lifetime, domain.MAX_LIFETIME),
            grace_until=None,
            last_used_at=None,
            use_count=0,
            rotated_from=old.id,
            rotated_to=None,
            revision=1,
            seq=None,
        )

        created = KeyCreated(
            account_id=new.account_id, key_id=new.id, key=self.view(new), rotated_from=old.id
        )

        def change(key: Key) -> list[Event]:
            status = self.status_of(key)
            if status != "active":
                raise Conflict(f"key {key.id} is {status}; only an active key can be rotated")
            key.status = "rotating" if grace_until > now else "revoked"
            key.grace_until = grace_until
            key.rotated_to = new.id
            key.revision += 1
            old_view = self.view(key)
            return [
                created,
                KeyRotated(
                    account_id=key.account_id,
                    key_id=key.id,
                    key=old_view,
                    new_key_id=new.id,
                    grace_until=grace_until,
                ),
                *(
                    [
                        KeyRevoked(
                            account_id=key.account_id,
                            key_id=key.id,
                            key=old_view,
                            reason="rotated with no grace period",
                            cause=RevocationCause.ROTATED,
                        )
                    ]
                    if key.status == "revoked"
                    else []
                ),
            ]

        # With a grace period the old key stays live beside the new one, so the rotation counts against
        # the quota (else rotating again and again would grow an account past it); without one it
        # replaces the key and is never refused, so an account at its cap can still replace a leak.
        # (`grace_until` is rounded up to the second, so a rotation without grace leaves the old key
        # rotating for less than a second: its own grace, not counted.)
        live_limit = self.max_keys_per_account if grace > timedelta(0) else None
        entries = [
            AuditRecord(
                audit.KEY_ROTATED,
                principal.key_id,
                now,
                principal.origin,
                details={"new_key_id": new.id, "grace_until": grace_until.isoformat()},
            ),
            AuditRecord(
                audit.KEY_CREATED,
                principal.key_id,
                now,
                principal.origin,
                target_key_id=new.id,
                details={"rotated_from": old.id, "environment": new.environment, "scopes": new.scopes},
            ),
        ]
        old = await self._change(principal, key_id, change, extra=[new], live_limit=live_limit, audit=entries)
        await self.new_key_committed([created])
        return new, secret, old

    async def renew_key(self, principal: Principal, key_id: str, extend_days: int | None) -> Key:
        await self._target(principal, key_id)
        key = await self.renew(
            key_id, extend_days, strict=True, actor=principal.key_id, origin=principal.origin
        )
        assert key is not None
        return key

    async def renew(
        self,
        key_id: str,
        extend_days: int | None,
        *,
        strict: bool = False,
        actor: str = audit.ACTOR_ROTATOR,
        origin: Origin = NO_ORIGIN,
    ) -> Key | None:
        """Push expiry out by `extend_days` (default: the key's own lifetime), within a year from now.
        Without `actor`, it is the rotator's auto-renew."""
        now = self._clock()
        entries: list[AuditRecord] = []

        def change(key: Key) -> list[Event]:
            status = self.status_of(key)
            if status != "active":
                if strict:
                    raise Conflict(f"key {key.id} is {status}; only an active key can be renewed")
                return []
            days = extend_days or key.lifetime_days or self._default_expiry_days
            previous = key.expires_at
            base = max(previous or now, now)
            key.expires_at = min(base + timedelta(days=days), now + domain.MAX_LIFETIME)
            key.revision += 1
            details = {"expires_at": key.expires_at.isoformat()}
            entries.append(AuditRecord(audit.KEY_RENEWED, actor, now, origin, details=details))
            return [
                KeyRenewed(
                    account_id=key.account_id, key_id=key.id, key=self.view(key), previous_expires_at=previous
                )
            ]

        # `entries` is filled by `change`, which the store runs before it writes them.
        return await self.store.mutate_key(key_id, change, audit=entries)

    async def expire(self, key_id: str) -> Key | None:
        """Record an expiry that is due; a key renewed since is left alone."""
        now = self._clock()

        def change(key: Key) -> list[Event]:
            if key.status not in ("active", "rotating") or key.expires_at is None or now < key.expires_at:
                return []
            key.status = "expired"
            key.revision += 1
            return [KeyExpired(account_id=key.account_id, key_id=key.id, key=self.view(key))]

        entry = AuditRecord(audit.KEY_EXPIRED, audit.ACTOR_ROTATOR, now)
        return await self.store.mutate_key(key_id, change, audit=[entry])

    async def end_grace(self, key_id: str) -> Key | None:
        """Revoke a rotated key whose grace period is over; anything else is left alone."""
        now = self._clock()

        def change(key: Key) -> list[Event]:
            if key.status != "rotating" or key.grace_until is None or now < key.grace_until:
                return []
            key.status = "revoked"
            key.revision += 1
            return [
                KeyRevoked(
                    account_id=key.account_id,
                    key_id=key.id,
                    key=self.view(key),
                    reason="rotation grace period ended",
                    cause=RevocationCause.GRACE_ENDED,
                )
            ]

        details = {"reason": "rotation grace period ended"}
        entry = AuditRecord(audit.KEY_REVOKED, audit.ACTOR_ROTATOR, now, details=details)
        return await self.store.mutate_key(key_id, change, audit=[entry])

    # platform events

    async def delete_account(self, account_id: str, reason: str | None = None) -> int:
        """Revoke every key of a deleted account; returns how many changed (0 when replayed)."""
        reason = reason or "account deleted"
        details = {"reason": audit.scrub(reason, audit.MAX_REASON)}
        entry = AuditRecord(audit.ACCOUNT_DELETED, audit.ACTOR_ACCOUNTS, self._clock(), details=details)
        await self.store.set_account_status(account_id, "deleted", audit=entry)
        changed = 0
        for key_id in await self.store.key_ids_of_account(account_id):
            before = await self.store.get_key_by_id(key_id)
            key = await self.revoke(
                key_id, reason, cause=RevocationCause.ACCOUNT_DELETED, actor=audit.ACTOR_ACCOUNTS
            )
            changed += int(before is not None and key is not None and before.revision != key.revision)
        return changed

    async def set_account_suspended(self, account_id: str, suspended: bool) -> int:
        """Refuse (or restore) every key of an account; the keys keep their own status."""
        action = audit.ACCOUNT_SUSPENDED if suspended else audit.ACCOUNT_RESUMED
        # One entry for the account: its keys' mirrored flag is not a change of theirs worth one each.
        entry = AuditRecord(action, audit.ACTOR_ACCOUNTS, self._clock())
        await self.store.set_account_status(account_id, "suspended" if suspended else "active", audit=entry)
        changed = 0

        def change(key: Key) -> list[Event]:
            if key.suspended == suspended or key.status in ("revoked", "expired"):
                return []
            key.suspended = suspended
            key.revision += 1
            return [
                KeyUpdated(
                    account_id=key.account_id, key_id=key.id, key=self.view(key), changed=["suspended"]
                )
            ]

        for key_id in await self.store.key_ids_of_account(account_id):
            before = await self.store.get_key_by_id(key_id)
            after = await self.store.mutate_key(key_id, change)
            changed += int(before is not None and after is not None and before.revision != after.revision)
        return changed

    async def change_plan(self, change: PlansChanged, *, batch: int = 500) -> int | None:
        """platform.plans.changed: the account's plan (the default of its new keys) and the plan and
        limits of each of its live keys, each changed key with a KeyUpdated. Returns how many keys
        changed (0 when repeated), or None when the change is older than one already applied."""

        def change_key(key: Key) -> list[Event]:
            current = RateLimit(**key.rate_limit) if key.rate_limit else None
            limit = domain.plan_rate_limit(change.plan, change.rate_limit, current)
            changed = [
                name
                for name, differs in (("plan", key.plan != change.plan), ("rate_limit", limit != current))
                if differs
            ]
            if not changed:
                return []
            key.plan = change.plan
            key.rate_limit = limit.model_dump() if limit else None
            key.revision += 1
            return [KeyUpdated(account_id=key.account_id, key_id=key.id, key=self.view(key), changed=changed)]

        return await self.store.change_account_plan(
            change.account_id,
            change.plan,
            change.occurred_at,
            change_key,
            batch=batch,
            rate_limit=change.rate_limit.model_dump() if change.rate_limit else None,
            audit=AuditRecord(
                audit.PLAN_CHANGED,
                audit.ACTOR_PLANS,
                self._clock(),
                details={
                    "plan": change.plan,
                    "rate_limit": change.rate_limit.model_dump() if change.rate_limit else None,
                },
            ),
        )

    async def report_leak(
        self,
        token: str | None,
        digest: str | None,
        source: str | None,
        url: str | None = None,
        *,
        actor: str = audit.ACTOR_SECRETS,
        origin: Origin = NO_ORIGIN,
    ) -> Key | None:
        """Revoke a live key whose secret was found in the open; the notifier tells the owner (KeyRevoked,
        saying where). Returns the key (revoked, expired or live) or None when it is not one of ours."""
        digests = [digest] if digest else [tokens.digest(p, token or "") for p in self._peppers]
        for candidate in digests:
            key = await self.store.get_key_by_digest(candidate)
            if key is not None:
                if self.status_of(key) not in ("active", "rotating"):
                    return key
                where = {
                    "leak_source": leaks.clean_source(source) or "a secret scanner",
                    "leak_url": leaks.clean_url(url),
                }
                return await self.revoke(
                    key.id,
                    leaks.reason(source, url),
                    cause=RevocationCause.LEAKED,
                    actor=actor,
                    origin=origin,
                    **where,
                )
        return None

    async def record_usage(
        self,
        event_id: str,
        key_id: str,
        last_used_at: datetime,
        count: int,
        *,
        allowed: int | None = None,
        refused: int = 0,
    ) -> None:
        await self.store.record_usage(event_id, key_id, last_used_at, count, allowed=allowed, refused=refused)

    async def key_usage(
        self, principal: Principal, key_id: str, hours: int
    ) -> list[tuple[datetime, int, int]]:
        """The key's validations per hour over the last `hours` hours, oldest first, every hour present
        (zeros where nothing was reported): (hour start, allowed, refused). Needs admin:read, as reading
        the key does."""
        await self.get_key(principal, key_id)
        now = self._clock().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        first = now - timedelta(hours=hours - 1)
        found = {
            hour: (allowed, refused)
            for hour, allowed, refused in await self.store.usage_by_hour(key_id, first)
        }
        hours_list = [first + timedelta(hours=i) for i in range(hours)]
        return [(hour, *found.get(hour, (0, 0))) for hour in hours_list]

    async def new_webhook_secret(self, principal: Principal) -> str:
        """Rotate the account's signing secret: the new one signs from now on, the one it replaces keeps
        signing beside it for the overlap, so receivers can switch without missing a webhook."""
        domain.require_admin(principal.scopes, domain.ADMIN_WRITE)
        await self.store.get_or_create_account(principal.account_id)
        secret = make_webhook_secret()
        sealed = self._cipher.encrypt(secret, context=WEBHOOK_SECRET_CONTEXT)
        previous_until = self._clock() + self._webhook_secret_overlap
        entry = self._entry(
            principal, audit.WEBHOOK_SECRET_ROTATED, previous_until=previous_until.isoformat()
        )
        await self.store.rotate_webhook_secret(principal.account_id, sealed, previous_until, audit=entry)
        return secret

    async def webhook_secrets(self, account_id: str) -> list[str]:
        """The secrets that sign the account's webhooks now: the current one first, then the previous
        one while its overlap lasts. An account without one gets one here, so no webhook goes out
        unsigned (its owner gets a secret they can read by rotating)."""
        account = await self.store.get_or_create_account(account_id)
        if not account.webhook_secret_sealed:
            sealed = self._cipher.encrypt(make_webhook_secret(), context=WEBHOOK_SECRET_CONTEXT)
            entry = AuditRecord(audit.WEBHOOK_SECRET_CREATED, audit.ACTOR_NOTIFIER, self._clock())
            account = await self.store.set_first_webhook_secret(account_id, sealed, audit=entry)
        assert account.webhook_secret_sealed is not None
        signing = [self._cipher.decrypt(account.webhook_secret_sealed, context=WEBHOOK_SECRET_CONTEXT)]
        until = as_utc(account.webhook_secret_previous_until)
        previous = account.webhook_secret_previous_sealed
        if previous and until is not None and self._clock() < until:
            signing.append(self._cipher.decrypt(previous, context=WEBHOOK_SECRET_CONTEXT))
        return signing

    def seal_for_transport(self, secret: str) -> str:
        return self._cipher.encrypt(secret, context=WEBHOOK_SECRET_CONTEXT)
