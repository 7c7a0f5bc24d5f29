"""The issuer's key creation and management-API authentication on SQLite and PostgreSQL, through its
use cases and store (no HTTP, no NATS): a key and its event commit together or not at all, the secret
is stored only as a digest and never put in the event, and each call's key and account are read fresh
(revocation, suspension and plan changes count from the next call)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from services.issuer.domain import Key
from services.issuer.schemas import CreateKey
from services.issuer.service import IssuerService, Principal
from services.issuer.store import IssuerStore
from services.issuer.tables import IssuerAccount
from shared import tokens
from shared.crypto import FieldCipher
from shared.errors import Unauthorized
from shared.events import KeyCreated, parse_event

OLD_PEPPER, NEW_PEPPER = b"old-pepper-" + b"o" * 21, b"new-pepper-" + b"n" * 21
CIPHER = FieldCipher([base64.b64encode(b"k" * 32).decode()])
BODY = CreateKey(name="ci", environment="prod", scopes=["compute:read"])


def service_for(issuer_store: IssuerStore, *peppers: bytes) -> IssuerService:
    return IssuerService(issuer_store, peppers=list(peppers or [NEW_PEPPER]), cipher=CIPHER)


async def test_a_created_key_and_its_event_are_committed_together(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store)
    admin = await service.bootstrap_admin("acct")
    assert admin is not None
    caller = await service.authenticate(admin)
    before = await issuer_store.pending_count()

    key, secret = await service.create_key(caller, BODY)

    stored = await issuer_store.get_key_by_id(key.id)
    assert stored is not None and stored.digest == tokens.digest(NEW_PEPPER, secret)
    assert stored.scopes == ["compute:read"] and stored.plan == "professional" and stored.seq is not None
    assert stored.rate_limit == key.rate_limit and stored.key_metadata == {} and stored.revision == 1
    pending = await issuer_store.pending_events(500)
    assert await issuer_store.pending_count() == before + 1
    event = parse_event(pending[-1].payload)
    assert isinstance(event, KeyCreated) and event.key_id == key.id and event.key.digest == stored.digest
    assert secret.encode() not in pending[-1].payload and secret not in repr(stored)


async def test_a_key_whose_event_cannot_be_written_is_not_stored(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store)
    now = datetime.now(UTC)

    def new_key(key_id: str, digest: str) -> Key:
        return Key(
            id=key_id,
            account_id="acct",
            digest=digest,
            prefix="cnx_prod_abcd",
            name="k",
            environment="prod",
            scopes=["compute:read"],
            plan="starter",
            status="active",
            created_at=now,
            expires_at=now + timedelta(days=1),
        )

    first = new_key("key_first", "1" * 64)
    event = KeyCreated(account_id="acct", key_id=first.id, key=service.view(first))
    await issuer_store.insert_key(first, [event])
    # The same event id again: the outbox refuses it, so the second key must not be there either.
    second = new_key("key_second", "2" * 64)
    with pytest.raises(Exception):  # noqa: B017 - the driver's IntegrityError, whichever backend
        await issuer_store.insert_key(second, [event])
    assert await issuer_store.get_key_by_id("key_second") is None
    assert await issuer_store.get_key_by_id("key_first") is not None
    assert [r.event_id for r in await issuer_store.pending_events(500)] == [event.event_id]


async def test_authentication_reads_the_key_and_account_on_every_call(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store)
    admin = await service.bootstrap_admin("acct")
    assert admin is not None
    caller = await service.authenticate(admin)
    assert caller.account_id == "acct" and caller.plan == "professional" and "admin:admin" in caller.scopes

    # A plan change is seen by the next creation.
    async with issuer_store.engine.begin() as conn:
        await conn.execute(update(IssuerAccount).where(IssuerAccount.id == "acct").values(plan="starter"))  # type: ignore[arg-type]
    key, _ = await service.create_key(await service.authenticate(admin), BODY)
    assert key.plan == "starter" and key.rate_limit == {"requests_per_minute": 60, "burst": 100}

    await issuer_store.set_account_status("acct", "suspended")
    with pytest.raises(Unauthorized, match="account is suspended"):
        await service.authenticate(admin)
    await issuer_store.set_account_status("acct", "active")
    await service.revoke(caller.key_id, "test")
    with pytest.raises(Unauthorized, match="revoked"):
        await service.authenticate(admin)
    with pytest.raises(Unauthorized, match="not valid"):
        await service.authenticate(tokens.generate("prod"))
    with pytest.raises(Unauthorized, match="malformed"):
        await service.authenticate(admin[:-1] + ("A" if admin[-1] != "A" else "B"))


async def test_a_key_digested_with_an_older_pepper_still_authenticates(issuer_store: IssuerStore) -> None:
    minted = await service_for(issuer_store, OLD_PEPPER).bootstrap_admin("acct")
    assert minted is not None
    rotated = service_for(issuer_store, NEW_PEPPER, OLD_PEPPER)
    caller = await rotated.authenticate(minted)
    key, secret = await rotated.create_key(caller, BODY)
    # New keys are digested with the first (current) pepper.
    assert key.digest == tokens.digest(NEW_PEPPER, secret)
    assert (await rotated.authenticate(secret)).key_id == key.id


async def test_a_key_of_an_account_without_a_row_creates_the_account(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store)
    root = Principal(account_id="fresh", key_id="bootstrap", scopes=["admin:admin", "compute:admin"])
    _, secret = await service.create_key(root, BODY.model_copy(update={"scopes": ["admin:write"]}))
    async with issuer_store.engine.begin() as conn:
        await conn.execute(IssuerAccount.__table__.delete())  # type: ignore[attr-defined]
    caller = await service.authenticate(secret)
    assert caller.account_id == "fresh" and caller.plan == "professional"
    assert (await issuer_store.get_or_create_account("fresh")).status == "active"


async def test_the_relay_marks_only_what_it_published(issuer_store: IssuerStore) -> None:
    service = service_for(issuer_store)
    admin = await service.bootstrap_admin("acct")
    assert admin is not None
    caller = await service.authenticate(admin)
    for _ in range(3):
        await service.create_key(caller, BODY)
    pending = await issuer_store.pending_events(500)
    assert len(pending) == 4 and [r.id for r in pending] == sorted(r.id for r in pending)  # type: ignore[type-var]
    assert [r.id for r in await issuer_store.pending_events(2)] == [r.id for r in pending[:2]]
    await issuer_store.mark_published([pending[0].id, pending[2].id])  # type: ignore[list-item]
    assert [r.id for r in await issuer_store.pending_events(500)] == [pending[1].id, pending[3].id]


async def test_an_expiry_given_with_an_offset_is_kept_as_the_same_instant(issuer_store: IssuerStore) -> None:
    """SQLite keeps no offset in a datetime column: 00:00+02:00 must not come back as 00:00 UTC."""
    service = service_for(issuer_store)
    admin = await service.bootstrap_admin("acct")
    assert admin is not None
    caller = await service.authenticate(admin)
    local = (
        (datetime.now(UTC) + timedelta(days=30))
        .replace(microsecond=0)
        .astimezone(timezone(timedelta(hours=2)))
    )
    body = CreateKey(name="offset", environment="prod", scopes=["compute:read"], expires_at=local)

    key, _ = await service.create_key(caller, body)

    stored = await issuer_store.get_key_by_id(key.id)
    assert stored is not None and stored.expires_at is not None
    expires_at = stored.expires_at if stored.expires_at.tzinfo else stored.expires_at.replace(tzinfo=UTC)
    assert expires_at == local
    event = parse_event((await issuer_store.pending_events(500))[-1].payload)
    assert isinstance(event, KeyCreated) and event.key.expires_at == local
