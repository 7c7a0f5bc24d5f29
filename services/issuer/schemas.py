"""Request and response bodies of the management API (never the table models, never the events).

The OpenAPI document is generated from these, so each type says exactly what is accepted: strict
booleans and integers (no `0` for `false`, no `172.0` for 172), finite numbers only, scopes,
environments and plans as enums."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
)

from shared import email_address
from shared.events import Environment, KeyStatus, Plan, RateLimit
from shared.scopes import ALL_SCOPES
from shared.text import UNSAFE as _UNSAFE

# The classic URL limit pydantic's HttpUrl also applies, but pydantic checks it on the text as sent,
# before normalisation (`https://a.example` becomes `https://a.example/`, an IDN host becomes
# punycode): here it is checked on the normalised URL, the one that is stored and served back.
MAX_URL_LENGTH = 2083
_UNSAFE_MESSAGE = "must not contain control characters or bidirectional overrides"


def _safe(value: str) -> str:
    if _UNSAFE.search(value):
        raise ValueError(_UNSAFE_MESSAGE)
    return value


def _safe_metadata(value: dict[str, str]) -> dict[str, str]:
    # Checked as a whole, so the error names `metadata` and never echoes a hostile key in its path.
    if any(_UNSAFE.search(k) or _UNSAFE.search(v) for k, v in value.items()):
        raise ValueError(f"keys and values {_UNSAFE_MESSAGE}")
    return value


def _email(value: str) -> str:
    # The normalised address is what is validated, stored and served back (shared/email_address.py).
    try:
        return email_address.normalise(value)
    except email_address.InvalidEmail as exc:
        raise ValueError(str(exc)) from None


def _no_control_characters(value: object) -> object:
    # HttpUrl would silently drop a tab, CR or LF (WHATWG parsing): a URL sent with one is refused
    # instead, as every other string field refuses them.
    if isinstance(value, str) and _UNSAFE.search(value):
        raise ValueError(_UNSAFE_MESSAGE)
    return value


def _bounded_url(url: HttpUrl) -> HttpUrl:
    if len(str(url)) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters once normalised")
    return url


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _text_only(value: object) -> object:
    # A date-time is a string in JSON, shaped as RFC 3339 says: pydantic alone would also take a number,
    # or a string of one (every query parameter is a string), as a Unix time.
    if isinstance(value, datetime):  # built in Python (never from JSON): already a date-time
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
WebhookUrl = Annotated[HttpUrl, BeforeValidator(_no_control_characters), AfterValidator(_bounded_url)]
# Documented as the enum of every `<resource>:<action>`, validated as a string by the service, so an
# unknown scope still gets the 422 that names it (DESIGN.md) rather than a list of 15 choices.
ScopeName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(ALL_SCOPES)})]
DateTimeText = Annotated[datetime, BeforeValidator(_text_only)]
SafeText = Annotated[str, AfterValidator(_safe)]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=40)], Annotated[str, Field(max_length=500)]],
    Field(max_length=20),
    AfterValidator(_safe_metadata),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrictRateLimit(RateLimit):
    """A request's rate limit: RateLimit's bounds, integers only (events keep the lax parent)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="RateLimitRequest")

    requests_per_minute: StrictInt = Field(gt=0, le=10_000_000)
    burst: StrictInt | None = Field(default=None, ge=0, le=100_000_000)


class Notify(Strict):
    email: Email | None = None
    webhook_url: WebhookUrl | None = None


# Output models. What was stored is served back as it is, never re-validated against today's input
# rules: a row written before a rule was tightened (or a value a normalisation made longer) must not
# turn every list page holding it into a 500. So these carry types, not bounds.


class StoredNotify(BaseModel):
    """Notification targets as stored (sealed JSON) and as served back."""

    model_config = ConfigDict(extra="ignore")

    email: str | None = None
    webhook_url: str | None = None


class ServedRateLimit(BaseModel):
    requests_per_minute: int
    burst: int | None = None


class CreateKey(Strict):
    name: SafeText = Field(min_length=1, max_length=200)
    environment: Environment
    scopes: list[ScopeName] = Field(min_length=1, max_length=20)
    expires_in_days: StrictInt | None = Field(default=None, ge=1, le=365)
    expires_at: DateTimeText | None = None
    plan: Plan | None = None
    rate_limit: StrictRateLimit | None = None
    ip_allowlist: list[str] = Field(default_factory=list, max_length=100)
    auto_renew: StrictBool = False
    notify: Notify | None = None
    metadata: Metadata = Field(default_factory=dict)


class UpdateKey(Strict):
    name: SafeText | None = Field(default=None, min_length=1, max_length=200)
    ip_allowlist: list[str] | None = Field(default=None, max_length=100)
    auto_renew: StrictBool | None = None
    notify: Notify | None = None
    metadata: Metadata | None = None


class RotateKey(Strict):
    key_id: str = Field(min_length=1, max_length=40)
    # StrictFloat takes a JSON integer too (1 is a number); never a string, a boolean, NaN or Infinity.
    grace_period_hours: StrictFloat | None = Field(default=None, ge=0, le=168, allow_inf_nan=False)


class RenewKey(Strict):
    extend_days: StrictInt | None = Field(default=None, ge=1, le=365)


class RevokeKey(Strict):
    reason: SafeText | None = Field(default=None, max_length=200)


class VerifyKey(Strict):
    key: str | None = Field(default=None, max_length=200)
    scope: str | None = Field(default=None, max_length=40)
    ip: str | None = Field(default=None, max_length=64)
    environment: Environment | None = None


class KeyObject(BaseModel):
    id: str
    prefix: str
    name: str
    environment: Environment
    scopes: list[ScopeName]
    plan: Plan
    rate_limit: ServedRateLimit | None
    ip_allowlist: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    status: KeyStatus
    auto_renew: bool
    grace_until: datetime | None = None
    notify: StoredNotify | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class CreatedKey(KeyObject):
    key: str = Field(description="The secret. Shown this once; only its HMAC digest is stored.")


class PreviousKey(BaseModel):
    id: str
    status: Literal["rotating", "revoked"]
    grace_until: datetime


class RotatedKey(CreatedKey):
    previous: PreviousKey


class KeyList(BaseModel):
    data: list[KeyObject]
    next_cursor: str | None


class WebhookSecret(BaseModel):
    secret: str = Field(description="whsec_... signing secret, shown once")


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class AuditEntryObject(BaseModel):
    """One entry of the audit trail. `actor_key_id` is the caller's key, or the platform source of a
    change nobody's key made (`platform:accounts`, `platform:plans`, `platform:secrets`,
    `github-secret-scanning`, `rotator`, `keys.cmd.revoke`, `notifier`, `bootstrap`); null for a denial
    of a key that is not one of ours."""

    id: str
    at: datetime
    action: str
    actor_key_id: str | None
    target_key_id: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, object] | None = None


class AuditList(BaseModel):
    data: list[AuditEntryObject]
    next_cursor: str | None
