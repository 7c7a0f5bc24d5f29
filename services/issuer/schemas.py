"""Request and response bodies of the management API (never the table models, never the events)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl

from shared import email_address
from shared.events import Environment, Plan, RateLimit
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


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
WebhookUrl = Annotated[HttpUrl, BeforeValidator(_no_control_characters), AfterValidator(_bounded_url)]
SafeText = Annotated[str, AfterValidator(_safe)]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=40)], Annotated[str, Field(max_length=500)]],
    Field(max_length=20),
    AfterValidator(_safe_metadata),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    scopes: list[str] = Field(min_length=1, max_length=20)
    expires_in_days: int | None = Field(default=None, ge=1, le=365)
    expires_at: datetime | None = None
    plan: Plan | None = None
    rate_limit: RateLimit | None = None
    ip_allowlist: list[str] = Field(default_factory=list, max_length=100)
    auto_renew: bool = False
    notify: Notify | None = None
    metadata: Metadata = Field(default_factory=dict)


class UpdateKey(Strict):
    name: SafeText | None = Field(default=None, min_length=1, max_length=200)
    ip_allowlist: list[str] | None = Field(default=None, max_length=100)
    auto_renew: bool | None = None
    notify: Notify | None = None
    metadata: Metadata | None = None


class RotateKey(Strict):
    key_id: str = Field(min_length=1, max_length=40)
    grace_period_hours: float | None = Field(default=None, ge=0, le=168)


class RenewKey(Strict):
    extend_days: int | None = Field(default=None, ge=1, le=365)


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
    environment: str
    scopes: list[str]
    plan: str
    rate_limit: ServedRateLimit | None
    ip_allowlist: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    status: Literal["active", "rotating", "expired", "revoked"]
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
