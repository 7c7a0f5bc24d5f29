"""Factories for test data: a KeyView with sensible defaults, any field overridable."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared import tokens
from shared.events import KeyView
from shared.validation import Code


def key_view(now: datetime, revision: int = 1, **overrides: Any) -> KeyView:
    """An active starter prod key created at `now`, expiring 30 days later."""
    fields: dict[str, Any] = dict(
        key_id="key_1",
        account_id="acct",
        prefix="cnx_prod_abcd",
        digest="d" * 64,
        name="k",
        environment="prod",
        scopes=["compute:read"],
        plan="starter",
        status="active",
        created_at=now,
        expires_at=now + timedelta(days=30),
        revision=revision,
    )
    fields.update(overrides)
    return KeyView(**fields)


def token_view(token: str, pepper: bytes, now: datetime, revision: int = 1, **overrides: Any) -> KeyView:
    """`key_view` of a real token: its display prefix, its digest under `pepper` and its environment,
    expiring a day after `now`."""
    fields: dict[str, Any] = dict(
        prefix=tokens.display_prefix(token),
        digest=tokens.digest(pepper, token),
        environment=tokens.parse(token).environment,
        expires_at=now + timedelta(days=1),
    )
    return key_view(now, revision, **{**fields, **overrides})


# A VALID answer of the validator's service, as the forward-auth app is handed it.
VALID_ANSWER: dict[str, Any] = {
    "valid": True,
    "code": Code.VALID,
    "key_id": "key_1",
    "account_id": "acct",
    "scopes": ["compute:read"],
    "environment": "prod",
    "rate_limit": {"limit": 100, "remaining": 41, "reset_s": 59.2},
}
