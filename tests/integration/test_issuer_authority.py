"""The management API holds every caller to its own key's limits, through the real HTTP API on real
stores (SQLite and PostgreSQL) and a real validator on a real nats-server: the caller key's IP allowlist
(with CNX_TRUSTED_PROXIES deciding when X-Forwarded-For is believed), environments dev < stg < prod,
writes only on keys whose scopes the caller's cover, no plan above the account's, verify for admin:read
with the throttle on the caller's real address, the key from the Authorization header only,
`Cache-Control: no-store` on secrets, strict cursors and text, the live-key quota and the per-key
management rate limit."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from services.issuer.service import MAX_SEQ, encode_cursor
from services.issuer.tables import IssuerKey
from shared.natsserver import free_port
from shared.validation import PlansChanged
from tests.support.processes import ServiceProcess

from .stack import Stack, eventually, running_stack, stack_settings

ADMIN_BODY = {"scopes": ["admin:write", "compute:read"]}


@pytest.fixture
def make_stack(nats_server: Any, make_database_url: Any, backend: str, tmp_path: Path) -> Callable[..., Any]:
    """make_stack(**settings) -> a running stack on the test's backend with those settings changed."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Stack]:
        name = uuid.uuid4().hex[:8]
        data = tmp_path / name
        settings = stack_settings(
            nats_server.url,
            data,
            make_database_url("issuer", backend),
            make_database_url("validator", backend),
            f"auth-{name}",
        ).model_copy(update=overrides)
        async with running_stack(settings) as running:
            yield running

    return make


@pytest.fixture
async def stack(make_stack: Callable[..., Any]) -> AsyncIterator[Stack]:
    async with make_stack(trusted_proxies=["127.0.0.1/32"]) as running:
        yield running


def from_peer(stack: Stack, address: str) -> httpx.AsyncClient:
    """A client of the issuer whose connections come from `address` (not one of our proxies)."""
    transport = httpx.ASGITransport(app=stack.issuer_app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://issuer")


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]  # type: ignore[no-any-return]


async def key_of(stack: Stack, key_id: str) -> dict[str, Any]:
    response = await stack.issuer.get(f"/v2/keys/{key_id}", headers=stack.auth())
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def bootstrap_key(stack: Stack) -> dict[str, Any]:
    listed = (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()
    return next(k for k in listed["data"] if k["name"] == "Bootstrap admin")  # type: ignore[no-any-return]


# 1. The caller key's IP allowlist, with trusted proxies.


async def test_an_admin_key_pinned_to_an_address_works_only_from_there(stack: Stack) -> None:
    pinned = await stack.create_key(scopes=["admin:read"], ip_allowlist=["10.9.9.9/32"])
    auth = stack.auth(pinned["key"])

    direct = await stack.issuer.get("/v2/keys", headers=auth)
    assert direct.status_code == 403 and error_of(direct)["code"] == "ip_not_allowed", direct.text
    # 127.0.0.1 is a trusted proxy here: its X-Forwarded-For is believed, walked right to left past
    # our own proxies; the first hop that is not one of them is the client.
    for forwarded in ("10.9.9.9", "10.9.9.9, 127.0.0.1", "203.0.113.5, 10.9.9.9"):
        response = await stack.issuer.get("/v2/keys", headers={**auth, "X-Forwarded-For": forwarded})
        assert response.status_code == 200, (forwarded, response.text)
    for forwarded in ("10.9.9.9, 198.51.100.1", "not-an-address", "10.9.9.9/32"):
        response = await stack.issuer.get("/v2/keys", headers={**auth, "X-Forwarded-For": forwarded})
        assert response.status_code == 403, (forwarded, response.text)
    # Two X-Forwarded-For headers are one list: the client cannot hide its hop in the first one.
    two = [("Authorization", auth["Authorization"]), ("X-Forwarded-For", "10.9.9.9")]
    two.append(("X-Forwarded-For", "198.51.100.1"))
    assert (await stack.issuer.get("/v2/keys", headers=two)).status_code == 403

    # From a peer that is not one of our proxies, X-Forwarded-For is not read at all.
    async with from_peer(stack, "203.0.113.7") as outsider:
        spoofed = await outsider.get("/v2/keys", headers={**auth, "X-Forwarded-For": "10.9.9.9"})
        assert spoofed.status_code == 403 and error_of(spoofed)["code"] == "ip_not_allowed"
        there = await stack.create_key(scopes=["admin:read"], ip_allowlist=["203.0.113.0/24"])
        assert (await outsider.get("/v2/keys", headers=stack.auth(there["key"]))).status_code == 200


async def test_without_trusted_proxies_forwarded_for_is_ignored(make_stack: Callable[..., Any]) -> None:
    async with make_stack() as stack:
        pinned = await stack.create_key(scopes=["admin:read"], ip_allowlist=["10.9.9.9/32"])
        headers = {**stack.auth(pinned["key"]), "X-Forwarded-For": "10.9.9.9"}
        assert (await stack.issuer.get("/v2/keys", headers=headers)).status_code == 403
        local = await stack.create_key(scopes=["admin:read"], ip_allowlist=["127.0.0.0/8", "::1/128"])
        assert (await stack.issuer.get("/v2/keys", headers=stack.auth(local["key"]))).status_code == 200


async def test_an_expired_admin_key_is_refused(stack: Stack) -> None:
    key = await stack.create_key(scopes=["admin:read"])
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth(key["key"]))).status_code == 200
    # Its expiry moved into the past in the catalog (the clock is real): refused at once, 401.
    store = stack.issuer_app.state.service.store
    async with store.engine.begin() as conn:
        await conn.execute(
            update(IssuerKey.__table__)  # type: ignore[arg-type]
            .where(IssuerKey.__table__.c.id == key["id"])  # type: ignore[attr-defined]
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    refused = await stack.issuer.get("/v2/keys", headers=stack.auth(key["key"]))
    assert refused.status_code == 401 and "expired" in error_of(refused)["message"]


def test_uvicorn_does_not_rewrite_the_client_address(
    nats_server: Any, make_database_url: Any, tmp_path: Path
) -> None:
    """The issuer as it is served (python -m services.issuer, uvicorn): uvicorn's own proxy-header
    handling would take X-Forwarded-For from 127.0.0.1 (or from anyone, with FORWARDED_ALLOW_IPS=*)
    and hand the app a client address of the client's choosing; it is off, so only
    CNX_TRUSTED_PROXIES decides."""
    port = free_port()
    env = {
        "CNX_NATS_URL": nats_server.url,
        "CNX_DATA_DIR": str(tmp_path),
        "CNX_ISSUER_PORT": str(port),
        "CNX_ISSUER_DATABASE_URL": make_database_url("issuer", "sqlite"),
        "CNX_BOOTSTRAP_ADMIN_KEY_FILE": str(tmp_path / "admin-key"),
        "FORWARDED_ALLOW_IPS": "*",
    }
    with ServiceProcess("services.issuer", env, port, log_file=tmp_path / "issuer.log").start():
        admin = {"Authorization": f"Bearer {(tmp_path / 'admin-key').read_text().strip()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            body = {"name": "pinned", "environment": "prod", "scopes": ["admin:read"]}
            created = http.post("/v2/keys", headers=admin, json={**body, "ip_allowlist": ["10.9.9.9/32"]})
            assert created.status_code == 201, created.text
            pinned = {"Authorization": f"Bearer {created.json()['key']}"}
            for forwarded in ("10.9.9.9", "203.0.113.1, 10.9.9.9"):
                response = http.get("/v2/keys", headers={**pinned, "X-Forwarded-For": forwarded})
                assert response.status_code == 403, (forwarded, response.text)
            for header in ({"X-Real-IP": "10.9.9.9"}, {"Forwarded": "for=10.9.9.9"}):
                assert http.get("/v2/keys", headers={**pinned, **header}).status_code == 403


# 2. Environments dev < stg < prod.


async def test_a_key_manages_only_its_own_environment_or_a_lower_one(stack: Stack) -> None:
    dev_admin = await stack.create_key(environment="dev", scopes=["admin:write", "compute:read"])
    stg_admin = await stack.create_key(environment="stg", scopes=["admin:write", "compute:read"])
    prod_key = await stack.create_key(environment="prod")
    stg_key = await stack.create_key(environment="stg")
    dev_key = await stack.create_key(environment="dev")
    dev, stg = stack.auth(dev_admin["key"]), stack.auth(stg_admin["key"])
    body = {"name": "minted", "scopes": ["compute:read"]}

    for env, status in (("prod", 403), ("stg", 403), ("dev", 201)):
        response = await stack.issuer.post("/v2/keys", headers=dev, json={**body, "environment": env})
        assert response.status_code == status, (env, response.text)
    for env, status in (("prod", 403), ("stg", 201), ("dev", 201)):
        response = await stack.issuer.post("/v2/keys", headers=stg, json={**body, "environment": env})
        assert response.status_code == status, (env, response.text)

    for target in (prod_key, stg_key):
        for method, path, payload in writes(target["id"]):
            response = await stack.issuer.request(method, path, headers=dev, json=payload)
            assert response.status_code == 403, (method, path, response.text)
        assert (await key_of(stack, target["id"]))["status"] == "active"
    for method, path, payload in writes(prod_key["id"]):
        assert (await stack.issuer.request(method, path, headers=stg, json=payload)).status_code == 403
    # Its own environment and lower ones: allowed (the last write revokes).
    for target, auth in ((dev_key, dev), (stg_key, stg)):
        for method, path, payload in writes(target["id"]):
            response = await stack.issuer.request(method, path, headers=auth, json=payload)
            assert response.status_code in (200, 201), (method, path, response.text)
    # Reading is not managing: a dev admin key still reads the account's other keys (no secret there).
    assert (await stack.issuer.get(f"/v2/keys/{prod_key['id']}", headers=dev)).status_code == 200


def writes(key_id: str) -> list[tuple[str, str, Any]]:
    """Every write on a key, revocation last (the ones before need a live key)."""
    return [
        ("PATCH", f"/v2/keys/{key_id}", {"ip_allowlist": ["0.0.0.0/0"]}),
        ("POST", f"/v2/keys/{key_id}/renew", {"extend_days": 30}),
        ("POST", "/v2/keys/rotate", {"key_id": key_id, "grace_period_hours": 1}),
        ("POST", f"/v2/keys/{key_id}/revoke", {"reason": "test"}),
        ("DELETE", f"/v2/keys/{key_id}", None),
    ]


# 3. Writes need the caller's scopes to cover the target's.


async def test_a_narrow_admin_key_cannot_touch_a_broader_key(stack: Stack) -> None:
    narrow = await stack.create_key(**ADMIN_BODY)
    auth = stack.auth(narrow["key"])
    root = await bootstrap_key(stack)
    storage = await stack.create_key(scopes=["storage:read"])
    for target in (root, storage):
        for method, path, payload in writes(target["id"]):
            response = await stack.issuer.request(method, path, headers=auth, json=payload)
            assert response.status_code == 403, (method, path, response.text)
    after = await key_of(stack, root["id"])
    assert after["status"] == "active" and after["ip_allowlist"] == root["ip_allowlist"]
    assert after["expires_at"] == root["expires_at"] and after["notify"] == root["notify"]
    assert (await key_of(stack, storage["id"]))["status"] == "active"
    # A key its scopes cover: every write goes through.
    covered = await stack.create_key(scopes=["compute:read"])
    for method, path, payload in writes(covered["id"])[:2] + writes(covered["id"])[3:4]:
        response = await stack.issuer.request(method, path, headers=auth, json=payload)
        assert response.status_code == 200, (method, path, response.text)


# 4. No plan or rate limit above the account's.


async def test_no_key_takes_a_plan_above_its_account(stack: Stack) -> None:
    def body(**extra: Any) -> dict[str, Any]:
        return {"name": "planned", "environment": "prod", "scopes": ["compute:read"], **extra}

    custom = {"requests_per_minute": 10_000_000, "burst": None}
    refused = await stack.issuer.post(
        "/v2/keys", headers=stack.auth(), json=body(plan="enterprise", rate_limit=custom)
    )
    assert refused.status_code == 403 and error_of(refused)["field"] == "plan", refused.text
    for plan in ("starter", "professional"):
        assert (
            await stack.issuer.post("/v2/keys", headers=stack.auth(), json=body(plan=plan))
        ).status_code == 201

    # The platform raises the account, with a custom limit that caps its keys' own.
    service = stack.issuer_app.state.service
    limit = {"requests_per_minute": 5000, "burst": 8000}
    await service.change_plan(PlansChanged(account_id="default", plan="enterprise", rate_limit=limit))
    for rate_limit, status in (
        ({"requests_per_minute": 5000, "burst": 8000}, 201),
        ({"requests_per_minute": 100, "burst": None}, 201),
        ({"requests_per_minute": 5001, "burst": None}, 403),
        ({"requests_per_minute": 5000, "burst": 8001}, 403),
        (custom, 403),
    ):
        response = await stack.issuer.post(
            "/v2/keys", headers=stack.auth(), json=body(plan="enterprise", rate_limit=rate_limit)
        )
        assert response.status_code == status, (rate_limit, response.text)
    # Lowered again: enterprise is refused once more.
    await service.change_plan(PlansChanged(account_id="default", plan="starter"))
    for plan, status in (("professional", 403), ("starter", 201)):
        response = await stack.issuer.post("/v2/keys", headers=stack.auth(), json=body(plan=plan))
        assert response.status_code == status, (plan, response.text)


# 5. Verify: admin:read, and the throttle counts the caller's real address.


async def test_verify_needs_admin_read(stack: Stack) -> None:
    reader = await stack.create_key(scopes=["compute:read"])
    admin = await stack.create_key(scopes=["admin:read"])
    await stack.wait_demo_status(reader["key"], 200)
    body = {"key": reader["key"], "scope": "compute:read"}
    refused = await stack.issuer.post("/v2/keys/verify", headers=stack.auth(reader["key"]), json=body)
    assert refused.status_code == 403 and "admin:read" in error_of(refused)["message"]
    answered = await stack.issuer.post("/v2/keys/verify", headers=stack.auth(admin["key"]), json=body)
    assert answered.status_code == 200 and answered.json()["code"] == "VALID", answered.text


async def test_verify_guesses_are_counted_on_the_callers_address_not_the_body_ip(
    make_stack: Callable[..., Any],
) -> None:
    async with make_stack(failed_auth_per_minute=3) as stack:
        pinned = await stack.create_key(plan="starter", ip_allowlist=["198.51.100.0/24"])
        await eventually(lambda: _known(stack, pinned["id"]), timeout=5.0)
        verify = stack.auth()
        # A body `ip` is the address the key would be used from, answered for a real key...
        inside = {"key": pinned["key"], "ip": "198.51.100.9", "scope": "compute:read"}
        first = (await stack.issuer.post("/v2/keys/verify", headers=verify, json=inside)).json()
        assert first["code"] == "VALID" and first["rate_limit"]["remaining"] == 99, first
        outside = (
            await stack.issuer.post("/v2/keys/verify", headers=verify, json={**inside, "ip": "192.0.2.1"})
        ).json()
        assert outside["code"] == "IP_NOT_ALLOWED", outside
        # ...and the probe with the caller's own address took no token of the key's limit.
        again = (await stack.issuer.post("/v2/keys/verify", headers=verify, json=inside)).json()
        assert again["code"] == "VALID" and again["rate_limit"]["remaining"] == 98, again

        # Guesses sprayed over made-up body addresses all count on the caller's real address.
        throttle = stack.validator.service.throttle
        codes = []
        for n in range(5):
            guess = {
                "key": pinned["key"][:-1] + ("A" if pinned["key"][-1] != "A" else "B"),
                "ip": f"192.0.2.{n}",
            }
            codes.append(
                (await stack.issuer.post("/v2/keys/verify", headers=verify, json=guess)).json()["code"]
            )
        assert codes[:3] == ["MALFORMED"] * 3 and codes[3:] == ["RATE_LIMITED"] * 2, codes
        assert "127.0.0.1" in throttle.addresses
        assert not any(a.startswith("192.0.2.") for a in throttle.addresses), throttle.addresses


async def _known(stack: Stack, key_id: str) -> bool:
    return stack.validator.service.projection.entry(key_id) is not None


# 6. Keys only from the Authorization header.


async def test_the_management_api_takes_the_key_from_the_header_only(stack: Stack) -> None:
    by_query = await stack.issuer.get("/v2/keys", params={"api_key": stack.admin_key})
    assert by_query.status_code == 401 and "Authorization" in error_of(by_query)["message"]
    assert stack.admin_key not in by_query.text
    both = await stack.issuer.get("/v2/keys", params={"api_key": stack.admin_key}, headers=stack.auth())
    assert both.status_code == 401
    two = [("Authorization", f"Bearer {stack.admin_key}"), ("Authorization", f"Bearer {stack.admin_key}")]
    twice = await stack.issuer.get("/v2/keys", headers=two)
    assert twice.status_code == 400 and error_of(twice)["code"] == "ambiguous_credentials"
    assert (
        await stack.issuer.get("/v2/keys", headers={"Authorization": f"Basic {stack.admin_key}"})
    ).status_code == 401
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth())).status_code == 200
    # The demo API (and forward-auth) keep taking ?api_key=, as the product page says.
    reader = await stack.create_key()
    await stack.wait_demo_status(reader["key"], 200)
    assert (await stack.demo.get("/v2/instances", params={"api_key": reader["key"]})).status_code == 200


# 7. Cache-Control: no-store on secrets.


async def test_responses_with_a_secret_are_not_stored(stack: Stack) -> None:
    created = await stack.issuer.post(
        "/v2/keys",
        headers=stack.auth(),
        json={"name": "n", "environment": "prod", "scopes": ["compute:read"]},
    )
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    rotated = await stack.issuer.post(
        "/v2/keys/rotate", headers=stack.auth(), json={"key_id": created.json()["id"]}
    )
    assert rotated.status_code == 201 and rotated.headers["cache-control"] == "no-store"
    secret = await stack.issuer.post("/v2/account/webhook-secret", headers=stack.auth())
    assert secret.status_code == 201 and secret.headers["cache-control"] == "no-store"


# 8. Input: cursors and text.


def raw_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_a_cursor_that_is_no_sane_position_is_422(stack: Stack) -> None:
    bad = [
        raw_cursor(f"s:{10**30}"),
        raw_cursor("s:-1"),
        raw_cursor("s:0"),
        raw_cursor(f"s:{2**63}"),
        raw_cursor(f"s:{2**63 - 1}"),
        raw_cursor(f"s:{MAX_SEQ + 1}"),
        raw_cursor("s:+5"),
        raw_cursor("s:1_0"),
        raw_cursor("s:\u0663"),  # an Arabic-Indic digit: int() would take it
        raw_cursor("x:5"),
        "!!!!",
        "czo1===",
        encode_cursor(5) + "!",
    ]
    for cursor in bad:
        response = await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"cursor": cursor})
        assert response.status_code == 422 and error_of(response)["field"] == "cursor", (
            cursor,
            response.text,
        )
    for seq in (1, MAX_SEQ):
        response = await stack.issuer.get(
            "/v2/keys", headers=stack.auth(), params={"cursor": encode_cursor(seq)}
        )
        assert response.status_code == 200, (seq, response.text)


UNSAFE = [
    "line\r\nbreak",
    "nul\x00",
    "rtl\u202eoverride",
    "c1\x85",
    "del\x7f",
    "isolate\u2066",
    "esc\x1b[31m",
]


async def test_text_with_control_or_bidi_characters_is_422_naming_the_field(stack: Stack) -> None:
    target = await stack.create_key(name="plain")
    base = {"environment": "prod", "scopes": ["compute:read"]}
    before = len(
        (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()["data"]
    )
    for text in UNSAFE:
        cases: list[tuple[str, str, dict[str, Any], str]] = [
            ("POST", "/v2/keys", {**base, "name": text}, "name"),
            ("POST", "/v2/keys", {**base, "name": "n", "metadata": {"team": text}}, "metadata"),
            ("POST", "/v2/keys", {**base, "name": "n", "metadata": {text: "v"}}, "metadata"),
            ("PATCH", f"/v2/keys/{target['id']}", {"name": text}, "name"),
            ("PATCH", f"/v2/keys/{target['id']}", {"metadata": {"k": text}}, "metadata"),
            ("POST", f"/v2/keys/{target['id']}/revoke", {"reason": text}, "reason"),
        ]
        for method, path, body, field in cases:
            response = await stack.issuer.request(method, path, headers=stack.auth(), json=body)
            assert response.status_code == 422, (text, path, response.text)
            assert error_of(response)["field"] == field, (text, path, response.text)
    after = await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})
    assert len(after.json()["data"]) == before
    unchanged = await key_of(stack, target["id"])
    assert unchanged["name"] == "plain" and unchanged["status"] == "active" and unchanged["metadata"] == {}
    # Ordinary non-ASCII text is fine.
    fine = await stack.create_key(name="Zürich 東京 ☃", metadata={"équipe": "paiements"})
    assert fine["name"] == "Zürich 東京 ☃"


# 9. Quotas.


async def test_an_account_holds_at_most_max_keys_live_keys(make_stack: Callable[..., Any]) -> None:
    async with make_stack(max_keys_per_account=3) as stack:
        second = await stack.create_key()
        third = await stack.create_key()  # with the bootstrap admin key: 3
        body = {"name": "one too many", "environment": "prod", "scopes": ["compute:read"]}
        refused = await stack.issuer.post("/v2/keys", headers=stack.auth(), json=body)
        assert refused.status_code == 403 and error_of(refused)["code"] == "quota_exceeded", refused.text
        assert "3" in error_of(refused)["message"]
        # A rotation with a grace period keeps both keys live: refused too. Without one it replaces the
        # key, so an account at its cap can still replace a leaked key.
        graced = await stack.issuer.post(
            "/v2/keys/rotate", headers=stack.auth(), json={"key_id": second["id"]}
        )
        assert graced.status_code == 403 and error_of(graced)["code"] == "quota_exceeded"
        assert (await key_of(stack, second["id"]))["status"] == "active"
        replaced = await stack.issuer.post(
            "/v2/keys/rotate", headers=stack.auth(), json={"key_id": second["id"], "grace_period_hours": 0}
        )
        assert replaced.status_code == 201, replaced.text
        # A revoked key frees its place.
        assert (
            await stack.issuer.post(f"/v2/keys/{third['id']}/revoke", headers=stack.auth())
        ).status_code == 200

        # (The key rotated without grace stays `rotating` until its grace_until, rounded up to the
        # second, and is live until then.)
        async def created() -> bool:
            response = await stack.issuer.post("/v2/keys", headers=stack.auth(), json=body)
            return response.status_code == 201

        await eventually(created, timeout=3.0, interval=0.1)
        assert (await stack.issuer.post("/v2/keys", headers=stack.auth(), json=body)).status_code == 403


async def test_the_management_api_rate_limits_each_key(make_stack: Callable[..., Any]) -> None:
    async with make_stack(management_rate_limit=60, management_rate_burst=3) as stack:
        other = await stack.create_key(scopes=["admin:read"])  # the bootstrap key's first call
        statuses = [(await stack.issuer.get("/v2/keys", headers=stack.auth())).status_code for _ in range(3)]
        assert statuses == [200, 200, 429], statuses
        limited = await stack.issuer.get("/v2/keys", headers=stack.auth())
        assert limited.status_code == 429 and error_of(limited)["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        # Another key has its own bucket.
        assert (await stack.issuer.get("/v2/keys", headers=stack.auth(other["key"]))).status_code == 200
