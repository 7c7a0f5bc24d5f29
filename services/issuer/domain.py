"""Pure rules of the key catalog: what a valid key request is, what a key's status is at a time.

No I/O and no clock: `now` is always an argument.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import scopes as scope_rules
from shared.client_address import parse_address
from shared.errors import Forbidden, InvalidInput
from shared.events import PLAN_LIMITS, Environment, KeyStatus, Plan, RateLimit

MAX_LIFETIME = timedelta(days=365)
ADMIN_READ = "admin:read"
ADMIN_WRITE = "admin:write"
# A key manages keys of its own environment or a lower one, and sets no plan above its account's.
ENVIRONMENT_RANK = {"dev": 0, "stg": 1, "prod": 2}
PLAN_RANK = {"starter": 0, "professional": 1, "enterprise": 2}
PLANS: dict[str, Plan] = {"starter": "starter", "professional": "professional", "enterprise": "enterprise"}


@dataclass(slots=True)
class Key:
    """A key of the catalog, as the use cases see and change it (the store maps it to its table). The
    one place its fields are listed: the table, the API's key object and the events follow it."""

    id: str
    account_id: str
    digest: str
    prefix: str
    name: str
    environment: Environment
    scopes: list[str]
    plan: Plan
    status: KeyStatus
    created_at: datetime
    rate_limit: dict[str, Any] | None = None
    ip_allowlist: list[str] = field(default_factory=list)
    expires_at: datetime | None = None
    grace_until: datetime | None = None
    last_used_at: datetime | None = None
    use_count: int = 0
    auto_renew: bool = False
    lifetime_days: int | None = None
    # AES-GCM sealed JSON {email, webhook_url} (shared.events.NOTIFY_CONTEXT).
    notify_sealed: str | None = None
    key_metadata: dict[str, str] = field(default_factory=dict)
    rotated_from: str | None = None
    rotated_to: str | None = None
    revision: int = 1
    # Mirrors the account's suspension on the key, so the key's events tell validators to refuse it.
    suspended: bool = False
    # The catalog's insertion order (the list's keyset cursor); None until the store assigns it.
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """An account as the issuer knows it: its status, plan and webhook signing secrets (sealed)."""

    id: str
    plan: str = "professional"
    status: str = "active"
    webhook_secret_sealed: str | None = None
    webhook_secret_previous_sealed: str | None = None
    webhook_secret_previous_until: datetime | None = None
    rate_limit: dict[str, Any] | None = None
    # `occurred_at` of the last platform.plans.changed applied: an older one arriving late is ignored.
    plan_changed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """What authenticating a management API call needs of a key and its account, read in one statement."""

    key_id: str
    account_id: str
    scopes: list[str]
    environment: Environment
    ip_allowlist: list[str]
    status: KeyStatus
    expires_at: datetime | None
    grace_until: datetime | None
    # None when the account has no row yet (accounts are created lazily).
    account_status: str | None
    account_plan: str | None
    account_rate_limit: dict[str, Any] | None = None


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"


class IpNotAllowed(Forbidden):
    code = "ip_not_allowed"


def check_scopes(requested: list[str], granted: list[str]) -> list[str]:
    """Normalised scopes, refusing unknown ones (422) and any the caller does not hold itself (403)."""
    if not requested:
        raise InvalidInput("scopes must name at least one scope", field="scopes")
    try:
        normalized = scope_rules.normalize(requested)
    except scope_rules.UnknownScope as exc:
        raise InvalidInput(str(exc), field="scopes") from exc
    missing = scope_rules.covers(granted, normalized)
    if missing:
        raise Forbidden(f"a key cannot grant scopes it does not hold itself: {', '.join(missing)}")
    return normalized


def check_cidrs(cidrs: list[str]) -> list[str]:
    """Canonical network strings for IPv4 and IPv6 CIDRs; a bad one is a 422 naming it."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError as exc:
            raise InvalidInput(f"invalid CIDR {cidr!r} in ip_allowlist", field="ip_allowlist") from exc
    return list(dict.fromkeys(networks))


def resolve_expiry(
    now: datetime, expires_in_days: int | None, expires_at: datetime | None, default_days: int
) -> tuple[datetime, int | None]:
    """(expires_at, lifetime_days): `expires_at` wins when given; it must lie within a year from now."""
    if expires_in_days is not None and expires_at is not None:
        raise InvalidInput("give expires_in_days or expires_at, not both", field="expires_at")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidInput("expires_at needs a time zone, e.g. 2026-12-31T00:00:00Z", field="expires_at")
        if expires_at <= now:
            raise InvalidInput("expires_at must be in the future", field="expires_at")
        if expires_at - now > MAX_LIFETIME:
            raise InvalidInput("expires_at must be at most 365 days away", field="expires_at")
        # The same instant in UTC: SQLite's datetime columns keep no offset, so 00:00+02:00 stored as
        # given would come back as 00:00 UTC, two hours late.
        return expires_at.astimezone(UTC), None
    days = default_days if expires_in_days is None else expires_in_days
    return now + timedelta(days=days), days


def resolve_rate_limit(plan: str, rate_limit: RateLimit | None) -> RateLimit:
    if plan == "enterprise":
        if rate_limit is None:
            raise InvalidInput("an enterprise key needs rate_limit.requests_per_minute", field="rate_limit")
        return rate_limit
    if rate_limit is not None:
        raise InvalidInput("a custom rate_limit is for enterprise keys only", field="rate_limit")
    return PLAN_LIMITS[plan]


def plan_rate_limit(plan: str, custom: RateLimit | None, current: RateLimit | None) -> RateLimit | None:
    """A key's limits once its account moves to `plan` (platform.plans.changed): the plan's own for the
    fixed plans (a custom limit is ignored there); for enterprise the custom limit given, or, without
    one, the key's current limits (what the validators enforce in the same case)."""
    if plan != "enterprise":
        return PLAN_LIMITS[plan]
    return custom if custom is not None else current


def effective_status(
    status: KeyStatus, expires_at: datetime | None, grace_until: datetime | None, now: datetime
) -> KeyStatus:
    """What a key is right now, even before the scheduled event that will record it has fired."""
    if status in ("revoked", "expired"):
        return status
    if status == "rotating" and grace_until is not None and now >= grace_until:
        return "revoked"
    if expires_at is not None and now >= expires_at:
        return "expired"
    return status


def require_admin(granted: list[str], needed: str) -> None:
    if not scope_rules.satisfies(scope_rules.grants(granted), needed):
        raise Forbidden(f"this call needs the {needed} scope")


def address_allowed(address: str | None, allowlist: list[str]) -> bool:
    """An empty allowlist allows any address; otherwise the address must be in one of its networks
    (no address, or text that is not one, is in none)."""
    if not allowlist:
        return True
    parsed = parse_address(address)
    if parsed is None:
        return False
    return any(parsed in ipaddress.ip_network(cidr, strict=False) for cidr in allowlist)


def check_environment(caller: str, target: str) -> None:
    """dev < stg < prod: a key reaches keys of its own environment or a lower one."""
    if ENVIRONMENT_RANK[target] > ENVIRONMENT_RANK[caller]:
        raise Forbidden(f"a {caller} key cannot manage {target} keys (dev < stg < prod)")


def check_manages(
    caller_environment: str, caller_scopes: list[str], target_environment: str, target_scopes: list[str]
) -> None:
    """May a key change, rotate, renew, revoke or delete this one? Only one of its own environment or a
    lower one whose scopes its own cover: otherwise a narrow admin key could strip a broader key's
    allowlist, point its webhook elsewhere, or revoke the keys that manage it."""
    check_environment(caller_environment, target_environment)
    missing = scope_rules.covers(caller_scopes, target_scopes)
    if missing:
        raise Forbidden(f"this key cannot manage a key with scopes it does not hold: {', '.join(missing)}")


def check_plan(plan: str, account_plan: str) -> Plan:
    """starter < professional < enterprise: a key may take its account's plan or a lower one; only
    platform.plans.changed raises an account. Returns `plan`, as a Plan."""
    if PLAN_RANK[plan] > PLAN_RANK.get(account_plan, 0):
        raise Forbidden(f"plan {plan!r} is above this account's plan ({account_plan})", field="plan")
    return PLANS[plan]


def check_custom_limit(rate_limit: RateLimit, account_limit: RateLimit | None) -> None:
    """An enterprise key's custom limit stays within the account's own custom limit, when the platform
    gave one (platform.plans.changed); a burst of None means the per-minute rate, as the validator
    shapes the bucket."""
    if account_limit is None:
        return
    if rate_limit.requests_per_minute > account_limit.requests_per_minute:
        raise Forbidden(
            f"rate_limit.requests_per_minute is above this account's {account_limit.requests_per_minute}",
            field="rate_limit",
        )
    ceiling = account_limit.burst if account_limit.burst is not None else account_limit.requests_per_minute
    burst = rate_limit.burst if rate_limit.burst is not None else rate_limit.requests_per_minute
    if burst > ceiling:
        raise Forbidden(f"rate_limit.burst is above this account's {ceiling}", field="rate_limit")


def check_quota(live_keys: int, limit: int) -> None:
    """`live_keys`: the account's keys that are not revoked or expired, before this one."""
    if live_keys >= limit:
        raise QuotaExceeded(
            f"this account has {limit} keys that are not revoked or expired, the most it may have "
            "(CNX_MAX_KEYS_PER_ACCOUNT); revoke some first"
        )
