"""Usage by hour and outcome in the issuer's store: what `GET /v2/keys/{id}/usage` and the console's
chart read. On every backend."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from services.issuer.schemas import CreateKey
from services.issuer.service import IssuerService
from services.issuer.store import IssuerStore
from services.issuer.usage_rows import USAGE_KEEP
from shared.crypto import FieldCipher
from shared.errors import NotFound

CIPHER = FieldCipher([base64.b64encode(b"k" * 32).decode()])
NOW = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)


async def a_key(store: IssuerStore) -> tuple[IssuerService, object, str]:
    service = IssuerService(store, peppers=[b"p" * 32], cipher=CIPHER, clock=lambda: NOW)
    admin = await service.bootstrap_admin("acct")
    assert admin is not None
    caller = await service.authenticate(admin)
    key, _ = await service.create_key(
        caller, CreateKey(name="used", environment="prod", scopes=["compute:read"])
    )
    return service, caller, key.id


async def test_reports_add_up_per_hour_by_outcome_once_each(issuer_store: IssuerStore) -> None:
    service, caller, key_id = await a_key(issuer_store)
    at = NOW - timedelta(minutes=10)
    assert await issuer_store.record_usage("e1", key_id, at, 5, allowed=3, refused=2)
    assert not await issuer_store.record_usage("e1", key_id, at, 5, allowed=3, refused=2)  # redelivered
    assert await issuer_store.record_usage("e2", key_id, at + timedelta(minutes=1), 4, allowed=4, refused=0)
    # An older validator's report (no outcomes): all allowed.
    assert await issuer_store.record_usage("e3", key_id, NOW - timedelta(hours=2), 2)
    # Refusals only: counted, and "Last Used" stays the last allowed use.
    assert await issuer_store.record_usage("e4", key_id, NOW, 1, allowed=0, refused=1)

    hours = await service.key_usage(caller, key_id, 24)  # type: ignore[arg-type]
    assert len(hours) == 24 and hours[-1][0] == NOW.replace(minute=0)
    assert hours[0][0] == NOW.replace(minute=0) - timedelta(hours=23)
    assert hours[-1][1:] == (7, 3) and hours[-3][1:] == (2, 0)
    assert sum(h[1] for h in hours) == 9 and sum(h[2] for h in hours) == 3
    key = await issuer_store.get_key_by_id(key_id)
    assert key is not None and key.last_used_at == at + timedelta(minutes=1) and key.use_count == 9


async def test_old_buckets_go_and_other_accounts_see_nothing(issuer_store: IssuerStore) -> None:
    service, _caller, key_id = await a_key(issuer_store)
    old = NOW - USAGE_KEEP - timedelta(hours=2)
    await issuer_store.record_usage("old", key_id, old, 1, allowed=1, refused=0)
    assert await issuer_store.usage_by_hour(key_id, old - timedelta(hours=1)) != []
    await issuer_store.record_usage("new", key_id, NOW, 1, allowed=1, refused=0)  # a new hour prunes
    assert [h for h, _, _ in await issuer_store.usage_by_hour(key_id, old - timedelta(hours=1))] == [
        NOW.replace(minute=0)
    ]
    other = await service.bootstrap_admin("other")
    assert other is not None
    stranger = await service.authenticate(other)
    with pytest.raises(NotFound):
        await service.key_usage(stranger, key_id, 24)
