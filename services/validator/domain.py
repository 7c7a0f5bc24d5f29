"""The validator's decision function and the in-memory projection it reads: pure, no I/O, no clock.

`decide` runs on every request, so it works on plain dicts and slotted objects, answers malformed
tokens before any digest or lookup, and caches parsed scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shared import scopes as scope_rules
from shared import tokens
from shared.events import KeyView
from shared.validation import Code

from .ratelimit import Shape, shape_of

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class Entry:
    """What validation needs of one key, in the cheapest form to check."""

    key_id: str
    account_id: str
    environment: str
    scopes: list[str]
    grants: dict[str, int]
    status: str
    expires_at: float | None
    grace_until: float | None
    networks: tuple[IPNetwork, ...]
    revision: int
    plan: str = "starter"
    # The key's own token bucket (rate per second, capacity); an account's plan change overrides it.
    shape: Shape | None = None

    @classmethod
    def from_view(cls, view: KeyView) -> Entry:
        return cls(
            key_id=view.key_id,
            account_id=view.account_id,
            environment=view.environment,
            scopes=list(view.scopes),
            grants=scope_rules.grants(view.scopes),
            status=view.status,
            expires_at=view.expires_at.timestamp() if view.expires_at else None,
            grace_until=view.grace_until.timestamp() if view.grace_until else None,
            networks=tuple(ipaddress.ip_network(c, strict=False) for c in view.ip_allowlist),
            revision=view.revision,
            plan=view.plan,
            shape=shape_of(view.plan, view.rate_limit),
        )


class Projection:
    """digest -> Entry for every key ever seen (revoked ones too, to answer REVOKED not NOT_FOUND)."""

    def __init__(self) -> None:
        self.by_digest: dict[str, Entry] = {}
        self._digest_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.by_digest)

    def revision_of(self, key_id: str) -> int:
        digest = self._digest_of.get(key_id)
        return self.by_digest[digest].revision if digest else 0

    def apply(self, view: KeyView) -> bool:
        """Take the view if it is newer than what we hold; False for a duplicate or stale event."""
        if view.revision <= self.revision_of(view.key_id):
            return False
        self.by_digest[view.digest] = Entry.from_view(view)
        self._digest_of[view.key_id] = view.digest
        return True

    def entry(self, key_id: str) -> Entry | None:
        digest = self._digest_of.get(key_id)
        return self.by_digest.get(digest) if digest else None


@lru_cache(maxsize=1024)
def required_scope(scope: str) -> tuple[str, int]:
    return scope_rules.parse(scope)


@lru_cache(maxsize=4096)
def parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def _refuse(code: Code, entry: Entry | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"valid": False, "code": code}
    if entry is not None:
        reply["key_id"] = entry.key_id
        reply["account_id"] = entry.account_id
    return reply


def decide(
    projection: Projection,
    peppers: Sequence[bytes],
    key: str | None,
    scope: str | None,
    ip: str | None,
    environment: str | None,
    now: float,
) -> tuple[dict[str, Any], Entry | None]:
    """The answer to one validation request, and the entry it concerned (for usage and rate limits)."""
    if not key:
        return _refuse(Code.MISSING), None
    if len(key) > tokens.MAX_TOKEN_LEN or not tokens.is_well_formed(key):
        return _refuse(Code.MALFORMED), None
    entry = None
    for pepper in peppers:
        entry = projection.by_digest.get(hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest())
        if entry is not None:
            break
    if entry is None:
        return _refuse(Code.NOT_FOUND), None
    status = entry.status
    grace_until = entry.grace_until
    if status == "revoked" or (status == "rotating" and grace_until is not None and now >= grace_until):
        return _refuse(Code.REVOKED, entry), entry
    if status == "expired" or (entry.expires_at is not None and now >= entry.expires_at):
        return _refuse(Code.EXPIRED, entry), entry
    if entry.networks:
        address = parse_ip(ip) if ip else None
        if address is None or not any(address in net for net in entry.networks):
            return _refuse(Code.IP_NOT_ALLOWED, entry), entry
    if environment and environment != entry.environment:
        return _refuse(Code.ENV_MISMATCH, entry), entry
    if scope:
        try:
            resource, level = required_scope(scope)
        except scope_rules.UnknownScope:
            return _refuse(Code.SCOPE_DENIED, entry), entry
        if entry.grants.get(resource, 0) < level:
            return _refuse(Code.SCOPE_DENIED, entry), entry
    return {
        "valid": True,
        "code": Code.VALID,
        "key_id": entry.key_id,
        "account_id": entry.account_id,
        "scopes": entry.scopes,
        "environment": entry.environment,
    }, entry
