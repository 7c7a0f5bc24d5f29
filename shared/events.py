"""The public event contract: frozen, versioned pydantic models and the subjects they travel on.

Every event carries `event_id` (also its `Nats-Msg-Id`, so the server drops duplicates),
`type`, `version`, `occurred_at`, `account_id` and `key_id`. Key events carry a full `KeyView`
with a per-key `revision`: a consumer applies an event only when its revision is newer than what it
holds, which makes redelivery, duplicates and replays change nothing. Within a version only optional
fields may be added; a breaking change is a new version with an upcaster in `_UPCASTERS`.
No event ever carries a token: only its HMAC digest and display prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared import correlation
from shared.timeutil import utcnow

STREAM_EVENTS = "KEYS_EVENTS"
EVENTS_SUBJECTS = "keys.events.>"
STREAM_SCHEDULES = "KEYS_SCHEDULES"
SCHEDULE_SUBJECTS = ("keys.schedule.>", "keys.fired.>")
DEAD_LETTER_PREFIX = "keys.dlq"

SUBJECT_VALIDATE = "keys.validate"
SUBJECT_USAGE = "keys.events.key.used"
# The context the issuer seals `KeyView.notify_sealed` under; only the notifier opens it.
NOTIFY_CONTEXT = "notify"

Plan = Literal["starter", "professional", "enterprise"]
Environment = Literal["prod", "stg", "dev"]
KeyStatus = Literal["active", "rotating", "expired", "revoked"]


def new_event_id() -> str:
    return uuid.uuid4().hex


class RateLimit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int = Field(gt=0, le=10_000_000)
    burst: int | None = Field(default=None, ge=0, le=100_000_000)


PLAN_LIMITS: dict[str, RateLimit] = {
    "starter": RateLimit(requests_per_minute=60, burst=100),
    "professional": RateLimit(requests_per_minute=1000, burst=2000),
}


class KeyView(BaseModel):
    """What consumers may know of a key: never the secret, only its digest and display prefix."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    account_id: str
    prefix: str
    digest: str
    name: str
    environment: Environment
    scopes: list[str]
    plan: Plan
    rate_limit: RateLimit | None = None
    ip_allowlist: list[str] = Field(default_factory=list)
    status: KeyStatus
    created_at: datetime
    expires_at: datetime | None = None
    grace_until: datetime | None = None
    auto_renew: bool = False
    lifetime_days: int | None = None
    # AES-GCM sealed JSON {email, webhook_url}: only the notifier opens it.
    notify_sealed: str | None = None
    revision: int = Field(ge=1)
    # The account is suspended (platform.accounts.suspended): refuse the key until it is resumed.
    suspended: bool = False


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    subject_suffix: ClassVar[str] = ""

    event_id: str = Field(default_factory=new_event_id)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)
    account_id: str
    key_id: str
    # Added within version 1 (optional): the correlation id of the API call or event that caused this
    # one (shared/correlation.py), so the logs of every service it passes through can be joined.
    correlation_id: str | None = Field(default_factory=correlation.current)

    @property
    def subject(self) -> str:
        return f"keys.events.{self.subject_suffix}"


class KeyEvent(Event):
    """An event that changes a key: carries the key as it is after the change."""

    key: KeyView


class KeyCreated(KeyEvent):
    subject_suffix: ClassVar[str] = "key.created"
    type: Literal["KeyCreated"] = "KeyCreated"
    rotated_from: str | None = None


class KeyUpdated(KeyEvent):
    subject_suffix: ClassVar[str] = "key.updated"
    type: Literal["KeyUpdated"] = "KeyUpdated"
    changed: list[str] = Field(default_factory=list)


class RevocationCause(StrEnum):
    """Why a key was revoked, for machines (`reason` is the text for people)."""

    USER = "user"  # by its owner through the management API (revoke or delete)
    COMMAND = "command"  # keys.cmd.revoke, an operator's tool
    ROTATED = "rotated"  # rotated with no grace period
    GRACE_ENDED = "grace_ended"  # a rotation's grace period ended
    ACCOUNT_DELETED = "account_deleted"  # platform.accounts.deleted
    LEAKED = "leaked"  # its secret was reported found in the open (leak_source, leak_url)


class KeyRevoked(KeyEvent):
    """`cause` was added within version 1, so it is optional: an older issuer's event has none, and a
    consumer then reads `reason` (a grace end said "rotation grace period ended")."""

    subject_suffix: ClassVar[str] = "key.revoked"
    type: Literal["KeyRevoked"] = "KeyRevoked"
    reason: str = "revoked by user"
    cause: RevocationCause | None = None
    # Set when the secret was reported leaked: who found it and where (never the secret itself).
    leak_source: str | None = None
    leak_url: str | None = None


class KeyRotated(KeyEvent):
    """`key` is the old key, now `rotating` until `grace_until`."""

    subject_suffix: ClassVar[str] = "key.rotated"
    type: Literal["KeyRotated"] = "KeyRotated"
    new_key_id: str
    grace_until: datetime


class KeyRenewed(KeyEvent):
    subject_suffix: ClassVar[str] = "key.renewed"
    type: Literal["KeyRenewed"] = "KeyRenewed"
    previous_expires_at: datetime | None = None


class KeyExpired(KeyEvent):
    subject_suffix: ClassVar[str] = "key.expired"
    type: Literal["KeyExpired"] = "KeyExpired"


class KeyExpiring(KeyEvent):
    """A notice: the key expires at `key.expires_at`, `notice` before it."""

    subject_suffix: ClassVar[str] = "key.expiring"
    type: Literal["KeyExpiring"] = "KeyExpiring"
    notice: str


class GraceEnded(KeyEvent):
    subject_suffix: ClassVar[str] = "key.grace_ended"
    type: Literal["GraceEnded"] = "GraceEnded"


class KeyUsed(Event):
    """Batched usage from a validator: how often the key was presented in a window, and when last.

    `count`: validations of the key in the window. `allowed` and `refused` (added within version 1, so
    optional) split it by outcome: refused means the key was found but turned away (scope, address,
    environment, rate limit, expired or revoked). An event without them comes from an older validator,
    which reported allowed uses only (allowed = count). `last_used_at` is the latest allowed use, or,
    when the window had none (`allowed` = 0), the latest refusal."""

    subject_suffix: ClassVar[str] = "key.used"
    type: Literal["KeyUsed"] = "KeyUsed"
    last_used_at: datetime
    count: int = Field(ge=1)
    allowed: int | None = Field(default=None, ge=0)
    refused: int | None = Field(default=None, ge=0)

    @property
    def outcomes(self) -> tuple[int, int]:
        """(allowed, refused), reading an older validator's event as all allowed."""
        if self.allowed is None and self.refused is None:
            return self.count, 0
        refused = self.refused or 0
        return (self.allowed if self.allowed is not None else self.count - refused), refused


AnyEvent = Annotated[
    KeyCreated
    | KeyUpdated
    | KeyRevoked
    | KeyRotated
    | KeyRenewed
    | KeyExpired
    | KeyExpiring
    | GraceEnded
    | KeyUsed,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)

# (type, version) -> function turning that version's dict into the next version's dict.
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}
CURRENT_VERSION = 1


# Built once: a TypeAdapter per call cost every consumer ~10% of its CPU (py-spy, the rotator).
_JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Decode any event, upcasting older versions first. Raises pydantic.ValidationError."""
    data: dict[str, Any] = raw if isinstance(raw, dict) else _JSON_OBJECT.validate_json(raw)
    while (data.get("type"), data.get("version", 1)) in _UPCASTERS:
        data = _UPCASTERS[(data["type"], data.get("version", 1))](data)
    return _ADAPTER.validate_python(data)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()
