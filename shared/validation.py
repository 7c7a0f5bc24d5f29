"""The validation contract shared by the validator and its clients: codes, wire shapes, HTTP mapping."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import RateLimit

# Published by the billing platform; every validator replica consumes it (not a queue group) and answers
# the request; one issuer replica (queue group `issuer`) applies it to the catalog without answering.
SUBJECT_PLANS_CHANGED = "platform.plans.changed"


class Code(StrEnum):
    VALID = "VALID"
    MISSING = "MISSING"
    MALFORMED = "MALFORMED"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    SCOPE_DENIED = "SCOPE_DENIED"
    ENV_MISMATCH = "ENV_MISMATCH"
    RATE_LIMITED = "RATE_LIMITED"
    # Forward-auth only: no route of CNX_ROUTE_SCOPES and no `scope` of the auth URL covers the request.
    NO_ROUTE = "NO_ROUTE"


# 401 for "who are you?", 403 for "not this", 429 for "not now" (DESIGN.md, forward-auth).
HTTP_STATUS: dict[str, int] = {
    Code.VALID: 200,
    Code.MISSING: 401,
    Code.MALFORMED: 401,
    Code.NOT_FOUND: 401,
    Code.EXPIRED: 401,
    Code.REVOKED: 401,
    Code.IP_NOT_ALLOWED: 403,
    Code.SCOPE_DENIED: 403,
    Code.ENV_MISMATCH: 403,
    Code.RATE_LIMITED: 429,
    Code.NO_ROUTE: 403,
}

MESSAGES: dict[str, str] = {
    Code.VALID: "the key is valid",
    Code.MISSING: "no API key was given: send Authorization: Bearer <key>",
    Code.MALFORMED: "the API key is malformed or its checksum is wrong",
    Code.NOT_FOUND: "the API key is not known",
    Code.EXPIRED: "the API key has expired",
    Code.REVOKED: "the API key has been revoked",
    Code.IP_NOT_ALLOWED: "the API key may not be used from this address",
    Code.SCOPE_DENIED: "the API key lacks the scope this call needs",
    Code.ENV_MISMATCH: "the API key belongs to another environment",
    Code.RATE_LIMITED: "rate limit exceeded; retry later",
    Code.NO_ROUTE: "no forward-auth route covers this method and path (or the path is ambiguous)",
}


class ValidationRequest(BaseModel):
    """Body of a `keys.validate` request."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    scope: str | None = None
    ip: str | None = None
    environment: str | None = None


class RateLimitState(BaseModel):
    limit: int
    remaining: int
    reset_s: float


class ValidationResult(BaseModel):
    """Reply to `keys.validate`; only `valid` and `code` are always there."""

    valid: bool
    code: Code
    key_id: str | None = None
    account_id: str | None = None
    scopes: list[str] | None = None
    environment: str | None = None
    rate_limit: RateLimitState | None = None
    retry_after_s: float | None = Field(default=None, ge=0)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def message(self) -> str:
        return MESSAGES[self.code]


class PlansChanged(BaseModel):
    """`platform.plans.changed`: an account moved to another plan; its keys get that plan's limits.

    `rate_limit` is the custom limit of an `enterprise` plan (ignored for the fixed plans); an
    enterprise change without it leaves each key with the custom limit it was created with.
    `occurred_at`, when given, lets a validator ignore a change older than one it already applied.
    """

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"account_id": "acct_123", "plan": "professional"},
                {
                    "account_id": "acct_456",
                    "plan": "enterprise",
                    "rate_limit": {"requests_per_minute": 50000, "burst": None},
                    "occurred_at": "2026-11-30T10:00:00Z",
                },
            ]
        },
    )

    account_id: str = Field(min_length=1, max_length=200)
    plan: Literal["starter", "professional", "enterprise"]
    rate_limit: RateLimit | None = None
    occurred_at: datetime | None = None
    event_id: str | None = None
