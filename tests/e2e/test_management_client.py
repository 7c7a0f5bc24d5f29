"""The typed management client (cnx_keys), sync and async, against a real issuer and validator as
processes: every route, typed results, the API's errors as exceptions, and 429 handled with Retry-After
and exponential backoff against an issuer whose own management rate limit is small.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest

from cnx_keys import (
    NO_RETRY,
    ApiConnectionError,
    AsyncManagementClient,
    AuthenticationError,
    Conflict,
    InvalidRequest,
    ManagementClient,
    NotFound,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
)
from cnx_keys.models import AuditList, CreatedKey, KeyList, KeyObject, RotatedKey, ValidationResult
from shared.natsserver import free_port

from .stack import ProcessStack, stack_with_own_nats


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    with stack_with_own_nats(
        tmp_path_factory.mktemp("client"), ["issuer", "validator"], CNX_MANAGEMENT_RATE_LIMIT="0"
    ) as running:
        yield running


# 60 a minute is one token a second; a bucket of 2: the third call in a row is refused, Retry-After: 1.
LIMIT_PER_MINUTE = 60
LIMIT_BURST = 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    """An issuer of its own (own NATS, own store) with a small management rate limit."""
    with stack_with_own_nats(
        tmp_path_factory.mktemp("client-limited"),
        ["issuer"],
        CNX_MANAGEMENT_RATE_LIMIT=str(LIMIT_PER_MINUTE),
        CNX_MANAGEMENT_RATE_BURST=str(LIMIT_BURST),
    ) as running:
        yield running


@pytest.fixture
def client(stack: ProcessStack) -> Iterator[ManagementClient]:
    with ManagementClient(stack.url("issuer"), stack.admin_key) as cnx:
        yield cnx


def test_every_route_with_typed_results(client: ManagementClient, stack: ProcessStack) -> None:
    created = client.create_key(
        name="client key",
        environment="prod",
        scopes=["compute:read", "storage:write"],
        expires_in_days=30,
        ip_allowlist=["10.0.0.0/8"],
        notify={"email": "ops@example.com"},
        metadata={"team": "payments"},
    )
    assert isinstance(created, CreatedKey) and isinstance(created.created_at, datetime)
    assert created.key.startswith("cnx_prod_") and created.prefix == created.key[:13]
    assert created.metadata == {"team": "payments"} and created.notify and created.notify.email

    got = client.get_key(created.id)
    assert isinstance(got, KeyObject) and got.id == created.id and got.status == "active"

    # Only what is given changes (UNSET fields are not sent): the name, and nothing else.
    renamed = client.update_key(created.id, name="renamed")
    assert renamed.name == "renamed" and renamed.ip_allowlist == ["10.0.0.0/8"] and renamed.notify
    updated = client.update_key(created.id, auto_renew=True, ip_allowlist=[], notify=None)
    assert updated.auto_renew and updated.ip_allowlist == [] and updated.notify is None

    renewed = client.renew_key(created.id, extend_days=5)
    assert renewed.expires_at and created.expires_at
    assert renewed.expires_at - created.expires_at == timedelta(days=5)

    verified = client.verify_key(created.key, scope="compute:read")
    assert isinstance(verified, ValidationResult) and verified.valid and verified.key_id == created.id
    assert client.verify_key(created.key, scope="billing:read").code == "SCOPE_DENIED"

    rotated = client.rotate_key(created.id, grace_period_hours=1)
    assert isinstance(rotated, RotatedKey) and rotated.key != created.key
    assert rotated.previous.id == created.id and rotated.previous.status == "rotating"
    assert client.get_key(created.id).grace_until == rotated.previous.grace_until

    revoked = client.revoke_key(rotated.id, reason="done")
    assert revoked.status == "revoked"
    deleted = client.delete_key(created.id)
    assert deleted.status == "revoked"

    secret = client.new_webhook_secret()
    assert secret.secret.startswith("whsec_")

    audit = client.list_audit(key_id=created.id)
    assert isinstance(audit, AuditList)
    actions = [entry.action for entry in audit.data]
    assert actions[0] == "key.deleted" and actions[-1] == "key.created" and "key.rotated" in actions
    assert client.list_audit(key_id=created.id, action="key.renewed").data[0].target_key_id == created.id
    since = client.list_audit(key_id=created.id, since=audit.data[0].at)
    assert [e.id for e in since.data] == [audit.data[0].id]


def test_pages(client: ManagementClient) -> None:
    ids = {
        client.create_key(name=f"page {n}", environment="dev", scopes=["compute:read"]).id for n in range(5)
    }
    first = client.list_keys(environment="dev", limit=2)
    assert isinstance(first, KeyList) and len(first.data) == 2 and first.next_cursor
    second = client.list_keys(environment="dev", limit=2, cursor=first.next_cursor)
    assert not {k.id for k in first.data} & {k.id for k in second.data}
    every = [key.id for key in client.iter_keys(environment="dev", page_size=2)]
    assert len(every) == len(set(every)) and set(every) >= ids
    assert all(k.status == "active" for k in client.iter_keys(status="active", page_size=3))


def test_errors_carry_the_apis_code_message_and_field(client: ManagementClient, stack: ProcessStack) -> None:
    with pytest.raises(InvalidRequest) as bad_scope:
        client.create_key(name="bad", environment="prod", scopes=["compute:fly"])
    assert bad_scope.value.status == 422 and bad_scope.value.code == "invalid_request"
    assert bad_scope.value.field == "scopes" and "compute:fly" in bad_scope.value.message

    with pytest.raises(InvalidRequest) as bad_days:
        client.create_key(name="bad", environment="prod", scopes=["compute:read"], expires_in_days=400)
    assert bad_days.value.field == "expires_in_days"

    with pytest.raises(NotFound) as missing:
        client.get_key("key_doesnotexist")
    assert missing.value.code == "not_found"
    # A path inside an id stays one segment: the request is for that (unknown) id, not another route.
    with pytest.raises(NotFound):
        client.get_key("../account/webhook-secret")

    revoked = client.create_key(name="to revoke", environment="prod", scopes=["compute:read"])
    client.revoke_key(revoked.id)
    with pytest.raises(Conflict):
        client.renew_key(revoked.id)

    plain = client.create_key(name="no admin", environment="prod", scopes=["compute:read"])
    with ManagementClient(stack.url("issuer"), plain.key) as weak, pytest.raises(PermissionDenied) as denied:
        weak.list_keys()
    assert denied.value.status == 403 and plain.key not in str(denied.value)

    unknown = "cnx_prod_" + "A" * 36
    with ManagementClient(stack.url("issuer"), unknown) as nobody, pytest.raises(AuthenticationError) as who:
        nobody.list_keys()
    assert who.value.status == 401 and unknown not in str(who.value) and unknown not in repr(who.value)
    assert unknown not in repr(nobody)


def test_connection_errors() -> None:
    with ManagementClient(f"http://127.0.0.1:{free_port()}", "cnx_prod_x") as nowhere:
        with pytest.raises(ApiConnectionError, match="cannot reach"):
            nowhere.list_keys()


async def test_async_client(stack: ProcessStack) -> None:
    async with AsyncManagementClient(stack.url("issuer"), stack.admin_key) as cnx:
        created = await cnx.create_key(name="async key", environment="stg", scopes=["compute:read"])
        assert isinstance(created, CreatedKey)
        assert (await cnx.get_key(created.id)).name == "async key"
        assert (await cnx.update_key(created.id, auto_renew=True)).auto_renew
        assert (await cnx.verify_key(created.key)).valid
        assert (await cnx.renew_key(created.id, extend_days=1)).expires_at
        listed = [key.id async for key in cnx.iter_keys(environment="stg", page_size=1)]
        assert created.id in listed
        rotated = await cnx.rotate_key(created.id, grace_period_hours=0)
        assert rotated.previous.status in ("rotating", "revoked")
        assert (await cnx.revoke_key(rotated.id)).status == "revoked"
        assert (await cnx.delete_key(created.id)).status == "revoked"
        assert (await cnx.new_webhook_secret()).secret.startswith("whsec_")
        assert (await cnx.list_audit(key_id=created.id)).data
        assert (await cnx.list_keys(limit=1)).data
        with pytest.raises(InvalidRequest) as bad:
            await cnx.create_key(name="bad", environment="prod", scopes=["compute:fly"])
        assert bad.value.field == "scopes"
    async with AsyncManagementClient(f"http://127.0.0.1:{free_port()}", "cnx_prod_x") as nowhere:
        with pytest.raises(ApiConnectionError):
            await nowhere.list_keys()


# 429: Retry-After and exponential backoff


def exhaust(limited: ProcessStack) -> None:
    """Take every token of the admin key's bucket: the next call is refused."""
    for _ in range(LIMIT_BURST + 1):
        httpx.get(f"{limited.url('issuer')}/v2/keys?limit=1", headers=limited.admin(), timeout=10)


def test_429_raises_rate_limited_with_retry_after_when_not_retrying(limited: ProcessStack) -> None:
    exhaust(limited)
    with ManagementClient(limited.url("issuer"), limited.admin_key, retry=NO_RETRY) as cnx:
        with pytest.raises(RateLimited) as refused:
            cnx.list_keys(limit=1)
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert refused.value.retry_after == 1.0


def test_429_backs_off_exponentially_never_sooner_than_retry_after(limited: ProcessStack) -> None:
    # A sleep that does not wait: the bucket stays empty, so every try is refused and each delay the
    # client chose is seen. At least Retry-After each time, and growing with the attempt.
    delays: list[float] = []
    policy = RetryPolicy(max_retries=3, backoff=1.0, max_delay=30)
    exhaust(limited)
    with ManagementClient(limited.url("issuer"), limited.admin_key, retry=policy, sleep=delays.append) as cnx:
        with pytest.raises(RateLimited):
            cnx.list_keys(limit=1)
    assert len(delays) == 3
    assert all(delay >= 1.0 for delay in delays)  # Retry-After: 1
    assert delays == sorted(delays) and delays[2] >= 2.0  # backoff 1 * 2**2, less at most half as jitter


def test_429_is_retried_until_the_call_succeeds(limited: ProcessStack) -> None:
    exhaust(limited)
    started = time.monotonic()
    with ManagementClient(limited.url("issuer"), limited.admin_key) as cnx:
        page = cnx.list_keys(limit=1)
    assert page.data and time.monotonic() - started >= 0.9  # it waited for the token


async def test_429_async(limited: ProcessStack) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    exhaust(limited)
    policy = RetryPolicy(max_retries=2, backoff=0.1)
    async with AsyncManagementClient(
        limited.url("issuer"), limited.admin_key, retry=policy, sleep=record
    ) as cnx:
        with pytest.raises(RateLimited) as refused:
            await cnx.list_keys(limit=1)
    assert refused.value.retry_after == 1.0 and len(delays) == 2 and min(delays) >= 1.0

    exhaust(limited)
    started = time.monotonic()
    async with AsyncManagementClient(limited.url("issuer"), limited.admin_key) as cnx:
        assert (await cnx.list_keys(limit=1)).data
    assert time.monotonic() - started >= 0.9


def test_from_env(stack: ProcessStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNX_API_URL", stack.url("issuer"))
    monkeypatch.setenv("CNX_API_KEY", stack.admin_key)
    with ManagementClient.from_env() as cnx:
        assert cnx.list_keys(limit=1).data
