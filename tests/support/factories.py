"""Factories for test data: a KeyView with sensible defaults, any field overridable."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.events import KeyView


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
