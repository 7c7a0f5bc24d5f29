"""platform.plans.changed in the issuer's catalog on SQLite and PostgreSQL, through the use case and the
store (no NATS): the account and its live keys move to the new plan in one transaction with one
KeyUpdated per changed key; a late (older) change is ignored and a repeated one emits nothing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.issuer.domain import Account
from services.issuer.schemas import CreateKey
from services.issuer.service import IssuerService, Principal
from services.issuer.store import IssuerStore
from shared.crypto import FieldCipher
from shared.events import PLAN_LIMITS, KeyUpdated, RateLimit, parse_event
from shared.validation import PlansChanged

PEPPER = b"plan-pepper-" + b"p" * 20
CIPHER = FieldCipher([base64.b64encode(b"k" * 32).decode()])
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
async def service(issuer_store: IssuerStore) -> IssuerService:
    return IssuerService(issuer_store, peppers=[PEPPER], cipher=CIPHER)


async def admin_of(service: IssuerService, account: str) -> tuple[str, Principal]:
    secret = await service.bootstrap_admin(account)
    assert secret is not None
    return secret, await service.authenticate(secret)


async def new_key(service: IssuerService, admin: Principal, **fields: Any) -> str:
    key, _ = await service.create_key(
        admin, CreateKey(name="k", environment="prod", scopes=["compute:read"], **fields)
    )
    return key.id


async def updates_since(issuer_store: IssuerStore, seen: int) -> list[KeyUpdated]:
    events = [parse_event(row.payload) for row in (await issuer_store.pending_events(10_000))[seen:]]
    assert all(isinstance(e, KeyUpdated) for e in events), events
    return events  # type: ignore[return-value]


async def test_the_account_and_its_live_keys_move_to_the_new_plan(
    issuer_store: IssuerStore, service: IssuerService
) -> None:
    secret, admin = await admin_of(service, "acct")
    bootstrap = admin.key_id
    starter = [await new_key(service, admin, plan="starter") for _ in range(6)]
    revoked = await new_key(service, admin, plan="starter")
    await service.revoke(revoked, "test")
    _, other_admin = await admin_of(service, "other")
    elsewhere = await new_key(service, other_admin, plan="starter")
    seen = await issuer_store.pending_count()

    # A batch of 4 over 8 live keys: the change crosses batches and still commits as one.
    changed = await service.change_plan(
        PlansChanged(account_id="acct", plan="professional", occurred_at=T0), batch=4
    )

    assert changed == 6, "the bootstrap key was professional already; the revoked one is left alone"
    for key_id in starter:
        key = await issuer_store.get_key_by_id(key_id)
        assert key is not None and key.plan == "professional" and key.revision == 2
        assert key.rate_limit == PLAN_LIMITS["professional"].model_dump()
    untouched = await issuer_store.get_key_by_id(revoked)
    assert untouched is not None and untouched.plan == "starter" and untouched.status == "revoked"
    other = await issuer_store.get_key_by_id(elsewhere)
    assert other is not None and other.plan == "starter" and other.revision == 1
    unchanged = await issuer_store.get_key_by_id(bootstrap)
    assert unchanged is not None and unchanged.revision == 1
    events = await updates_since(issuer_store, seen)
    assert sorted(e.key_id for e in events) == sorted(starter)
    assert all(e.changed == ["plan", "rate_limit"] and e.key.plan == "professional" for e in events)
    assert all(e.key.revision == 2 and e.key.rate_limit == PLAN_LIMITS["professional"] for e in events)

    # New keys default to the account's new plan (the caller's account is read with its key).
    fresh = await issuer_store.get_key_by_id(await new_key(service, await service.authenticate(secret)))
    assert fresh is not None and fresh.plan == "professional"
    account = await issuer_store.get_or_create_account("acct")
    assert account.plan == "professional"


async def test_a_repeated_change_emits_nothing_and_an_older_one_is_ignored(
    issuer_store: IssuerStore, service: IssuerService
) -> None:
    _, admin = await admin_of(service, "acct")
    keys = [await new_key(service, admin) for _ in range(3)]
    to_starter = PlansChanged(account_id="acct", plan="starter", occurred_at=T0 + timedelta(minutes=5))
    assert await service.change_plan(to_starter) == 4
    seen = await issuer_store.pending_count()

    assert await service.change_plan(to_starter) == 0, "the same change again (a redelivery)"
    assert await issuer_store.pending_count() == seen
    late = PlansChanged(account_id="acct", plan="professional", occurred_at=T0)
    assert await service.change_plan(late) is None, "older than the change already applied"
    assert await issuer_store.pending_count() == seen
    account = await issuer_store.get_or_create_account("acct")
    assert account.plan == "starter"
    for key_id in keys:
        key = await issuer_store.get_key_by_id(key_id)
        assert key is not None and key.plan == "starter" and key.revision == 2

    # A time without an offset is UTC; one at the same instant as the last is not "older".
    same_instant = PlansChanged(
        account_id="acct", plan="professional", occurred_at=datetime(2026, 12, 1, 10, 5)
    )
    assert await service.change_plan(same_instant) == 4
    newer = PlansChanged(account_id="acct", plan="starter", occurred_at=T0 + timedelta(hours=1))
    assert await service.change_plan(newer) == 4
    # One without a time cannot be ordered: applied, like the validators do.
    assert await service.change_plan(PlansChanged(account_id="acct", plan="professional")) == 4
    stored = await issuer_store.get_or_create_account("acct")
    assert stored.plan == "professional"
    assert stored.plan_changed_at is not None and stored.plan_changed_at.replace(
        tzinfo=UTC
    ) == T0 + timedelta(hours=1)


async def test_enterprise_takes_the_custom_limit_or_keeps_each_keys_own(
    issuer_store: IssuerStore, service: IssuerService
) -> None:
    secret, admin = await admin_of(service, "acct")
    starter = await new_key(service, admin, plan="starter")
    seen = await issuer_store.pending_count()

    # Without a custom limit each key keeps the limits it has; only the plan changes.
    assert await service.change_plan(PlansChanged(account_id="acct", plan="enterprise")) == 2
    kept = await issuer_store.get_key_by_id(starter)
    assert (
        kept is not None
        and kept.plan == "enterprise"
        and kept.rate_limit == PLAN_LIMITS["starter"].model_dump()
    )
    assert {tuple(e.changed) for e in await updates_since(issuer_store, seen)} == {("plan",)}
    # Only now (the platform raised the account) may a key of it be enterprise.
    custom = RateLimit(requests_per_minute=7000, burst=None)
    enterprise = await new_key(
        service, await service.authenticate(secret), plan="enterprise", rate_limit=custom.model_dump()
    )
    assert await service.change_plan(PlansChanged(account_id="acct", plan="enterprise")) == 0
    own = await issuer_store.get_key_by_id(enterprise)
    assert own is not None and own.revision == 1 and own.rate_limit == custom.model_dump()

    seen = await issuer_store.pending_count()
    limit = RateLimit(requests_per_minute=50_000, burst=None)
    change = PlansChanged(account_id="acct", plan="enterprise", rate_limit=limit)
    assert await service.change_plan(change) == 3
    for key_id in (starter, enterprise):
        key = await issuer_store.get_key_by_id(key_id)
        assert key is not None and key.rate_limit == limit.model_dump()
    assert {tuple(e.changed) for e in await updates_since(issuer_store, seen)} == {("rate_limit",)}

    # A custom limit sent with a fixed plan is ignored: the plan's own limits apply.
    assert await service.change_plan(PlansChanged(account_id="acct", plan="starter", rate_limit=limit)) == 3
    back = await issuer_store.get_key_by_id(enterprise)
    assert (
        back is not None and back.plan == "starter" and back.rate_limit == PLAN_LIMITS["starter"].model_dump()
    )


async def test_a_change_for_an_account_with_no_row_yet_sets_its_plan(
    issuer_store: IssuerStore, service: IssuerService
) -> None:
    assert await service.change_plan(PlansChanged(account_id="new-acct", plan="starter", occurred_at=T0)) == 0
    account = await issuer_store.get_or_create_account("new-acct")
    assert isinstance(account, Account) and account.plan == "starter"
    assert await service.bootstrap_admin("new-acct") is not None
    listed = await issuer_store.page_keys(
        "new-acct", status=None, environment=None, now=datetime.now(UTC), limit=5, before_seq=None
    )
    assert [k.plan for k in listed] == ["starter"]
