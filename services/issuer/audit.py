"""The audit trail's rules: which actions are recorded, who the actor is, and what an entry may hold.

Pure (no store, no HTTP): the service builds `AuditRecord`s with these and the store writes them in the
transaction of the change they record. An entry never holds a secret or personal data: no key, no
`whsec_` secret, no notification address, no key name or metadata (free text an owner may fill with
either); only ids, action names, field names, the caller's address and a cleaned user agent.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from shared import tokens
from shared.client_address import parse_address
from shared.text import UNSAFE

from .ratelimit import ManagementLimiter

# Every action an entry can record (the `action` filter of GET /v2/audit takes exactly these).
KEY_CREATED: Final = "key.created"
KEY_UPDATED: Final = "key.updated"
KEY_ROTATED: Final = "key.rotated"
KEY_REVOKED: Final = "key.revoked"
KEY_DELETED: Final = "key.deleted"
KEY_RENEWED: Final = "key.renewed"
KEY_EXPIRED: Final = "key.expired"
KEY_REVOKED_BY_LEAK: Final = "key.revoked_by_leak"
WEBHOOK_SECRET_ROTATED: Final = "webhook_secret.rotated"
WEBHOOK_SECRET_CREATED: Final = "webhook_secret.created"
ACCOUNT_SUSPENDED: Final = "account.suspended"
ACCOUNT_RESUMED: Final = "account.resumed"
ACCOUNT_DELETED: Final = "account.deleted"
PLAN_CHANGED: Final = "plan.changed"
AUTH_DENIED: Final = "auth.denied"
ACTIONS: Final = (
    KEY_CREATED,
    KEY_UPDATED,
    KEY_ROTATED,
    KEY_REVOKED,
    KEY_DELETED,
    KEY_RENEWED,
    KEY_EXPIRED,
    KEY_REVOKED_BY_LEAK,
    WEBHOOK_SECRET_ROTATED,
    WEBHOOK_SECRET_CREATED,
    ACCOUNT_SUSPENDED,
    ACCOUNT_RESUMED,
    ACCOUNT_DELETED,
    PLAN_CHANGED,
    AUTH_DENIED,
)

# The actor of a change nobody's key made: the platform source that caused it.
ACTOR_ACCOUNTS: Final = "platform:accounts"  # platform.accounts.deleted|suspended|resumed
ACTOR_PLANS: Final = "platform:plans"  # platform.plans.changed
ACTOR_SECRETS: Final = "platform:secrets"  # platform.secrets.leaked
ACTOR_GITHUB: Final = "github-secret-scanning"  # POST /v2/secret-scanning/github
ACTOR_ROTATOR: Final = "rotator"  # grace ended, expiry recorded, auto-renew (keys.cmd.*)
ACTOR_COMMAND: Final = "keys.cmd.revoke"  # a revocation requested over NATS by an operator's tool
ACTOR_NOTIFIER: Final = "notifier"  # the first webhook secret, made when a webhook first needs one
ACTOR_BOOTSTRAP: Final = "bootstrap"  # the bootstrap admin key `make up` mints

MAX_USER_AGENT: Final = 256
MAX_IP: Final = 64
MAX_REASON: Final = 300

# What shared/text.py refuses everywhere (controls, line separators, bidi overrides), and here also the
# characters that hide text (zero-width ones, word joiners, the BOM): an entry shown in a console or a
# log must not be able to rewrite or hide what is shown around it.
_UNSAFE = re.compile(f"{UNSAFE.pattern}|[\u200b-\u200f\u2060-\u2065\ufeff]")
# Secrets a client could put in a header it controls: keys (also cut short, which `tokens.redact`
# does not catch), webhook secrets, and whatever follows a `Bearer`.
_KEYLIKE = re.compile(r"cnx_(?:prod|stg|dev)_[0-9A-Za-z]{4,}")
_WHSEC = re.compile(r"whsec_[0-9A-Za-z+/=_-]*")
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
# An email address is personal data: an entry names the key, never its owner's address.
_EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+")


def new_entry_id() -> str:
    return "aud_" + "".join(secrets.choice(tokens.ALPHABET) for _ in range(24))


def scrub(text: str, limit: int) -> str:
    """Text from a client or a message, safe to keep and show: one line, no control or reordering
    characters, no secret, at most `limit` characters."""
    text = _UNSAFE.sub("", text)
    text = _KEYLIKE.sub(lambda m: m.group(0)[: m.group(0).index("_", 4) + 1] + "…", text)
    text = _WHSEC.sub("whsec_…", text)
    text = _BEARER.sub("Bearer …", text)
    text = _EMAIL.sub("…@…", text)
    return text.strip()[:limit]


def clean_user_agent(user_agent: str | None) -> str | None:
    if not user_agent:
        return None
    return scrub(user_agent, MAX_USER_AGENT) or None


def clean_ip(address: str | None) -> str | None:
    """The address as the trusted-proxy rules resolved it, in its canonical form; a hop that is not an
    address (X-Forwarded-For text from behind a trusted proxy) is kept scrubbed and bounded."""
    if not address:
        return None
    parsed = parse_address(address)
    if parsed is not None:
        return str(parsed)
    return scrub(address, MAX_IP) or None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a management call came from, as the audit trail records it (already cleaned)."""

    ip: str | None = None
    user_agent: str | None = None
    # The call, for a denial: its method and route template (never the raw path, which a client wrote).
    method: str | None = None
    route: str | None = None

    @classmethod
    def of(
        cls, ip: str | None, user_agent: str | None, method: str | None = None, route: str | None = None
    ) -> Origin:
        return cls(clean_ip(ip), clean_user_agent(user_agent), method, route)


NO_ORIGIN: Final = Origin()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry to write. `account_id` and `target_key_id` may be left None for the store to fill with
    the key the change is about (`IssuerStore.mutate_key`)."""

    action: str
    actor: str | None
    at: datetime
    origin: Origin = NO_ORIGIN
    account_id: str | None = None
    target_key_id: str | None = None
    details: Mapping[str, Any] | None = None
    id: str = field(default_factory=new_entry_id)


def denial_details(status: int, code: str, message: str, origin: Origin, repeated: int) -> dict[str, Any]:
    details: dict[str, Any] = {"status": status, "code": code, "reason": scrub(message, MAX_REASON)}
    if origin.method:
        details["method"] = origin.method
    if origin.route:
        details["route"] = origin.route
    if repeated:
        details["repeated"] = repeated
    return details


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An entry as GET /v2/audit shows it."""

    seq: int
    id: str
    at: datetime
    action: str
    actor_key_id: str | None
    target_key_id: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any] | None


class DenialGate:
    """How many `auth.denied` entries are written, so a flood of refused calls cannot grow the table
    without bound: at most `per_minute` a minute (bursts of as many) per caller key, and as many for
    every unknown key together (per issuer process). A denial over the limit is counted, not written;
    the next entry written for that key (or for unknown keys) says how many were left out
    (`details.repeated`). Pure: the clock is an argument."""

    UNKNOWN: Final = ""
    MAX_COUNTS = 100_000

    def __init__(self, per_minute: int) -> None:
        self._limiter = ManagementLimiter(per_minute, max(1, per_minute))
        self.enabled = per_minute > 0
        self._left_out: dict[str, int] = {}

    def admit(self, key_id: str | None, now: float) -> int | None:
        """None: do not write this denial (counted instead). Else the number of denials of this key left
        out since its last entry (0 if none), which the entry carries."""
        if not self.enabled:
            return None
        bucket = key_id or self.UNKNOWN
        if self._limiter.take(bucket, now) > 0:
            if len(self._left_out) >= self.MAX_COUNTS and bucket not in self._left_out:
                self._left_out.clear()  # bounded memory; the counts are a courtesy, not the record
            self._left_out[bucket] = self._left_out.get(bucket, 0) + 1
            return None
        return self._left_out.pop(bucket, 0)
