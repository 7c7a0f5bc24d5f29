"""The audit trail through the real HTTP API on real stores (SQLite and PostgreSQL), a real validator and
a real nats-server: every change and platform action listed with actor, target, address and user agent;
the filters and pages of GET /v2/audit; refused calls recorded as auth.denied (and a flood of them
bounded); one account never sees another's entries; no secret or email address in any entry; and each
entry written in the transaction of its change (database triggers make one or the other fail)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from sqlalchemy import func, select

from services.issuer.service import encode_cursor
from services.issuer.tables import IssuerAudit, IssuerKey, IssuerOutbox
from shared.client_address import parse_address

from .stack import Stack, eventually, other_account, running_stack, stack_settings
from .test_secret_scanning import GitHubSigner, meta, report

AGENT = "audit-test/1.0 (+https://example.test)"
EMAIL = "owner.audit@example.com"


@pytest.fixture
def make_stack(nats_server: Any, make_database_url: Any, backend: str, tmp_path: Path) -> Callable[..., Any]:
    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Stack]:
        name = uuid.uuid4().hex[:8]
        settings = stack_settings(
            nats_server.url,
            tmp_path / name,
            make_database_url("issuer", backend),
            make_database_url("validator", backend),
            f"audit-{name}",
        ).model_copy(update=overrides)
        async with running_stack(settings) as running:
            nc = await nats.connect(nats_server.url)
            running.extra["nc"] = nc
            try:
                yield running
            finally:
                await nc.close()

    return make


@pytest.fixture
async def stack(make_stack: Callable[..., Any]) -> AsyncIterator[Stack]:
    async with make_stack() as running:
        yield running


def headers(stack: Stack, key: str | None = None, agent: str = AGENT) -> dict[str, str]:
    return {**stack.auth(key), "User-Agent": agent}


async def audit(stack: Stack, key: str | None = None, **params: Any) -> dict[str, Any]:
    response = await stack.issuer.get("/v2/audit", headers=stack.auth(key), params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def entries(stack: Stack, key: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """Every entry of the caller's account (with those filters), walking the pages."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await audit(stack, key, limit=100, **params, **({"cursor": cursor} if cursor else {}))
        found += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def admin_id(stack: Stack) -> str:
    listed = (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()
    return next(k["id"] for k in listed["data"] if k["name"] == "Bootstrap admin")  # type: ignore[no-any-return]


def one(found: list[dict[str, Any]], action: str, target: str) -> dict[str, Any]:
    matches = [e for e in found if e["action"] == action and e["target_key_id"] == target]
    assert len(matches) == 1, (action, target, found)
    return matches[0]


async def test_every_change_through_the_api_is_listed_with_actor_target_address_and_agent(
    stack: Stack,
) -> None:
    actor = await admin_id(stack)
    auth = headers(stack)
    created = (await stack.issuer.post("/v2/keys", headers=auth, json=key_body("audited"))).json()
    target = created["id"]
    assert (
        await stack.issuer.patch(f"/v2/keys/{target}", headers=auth, json=patch_body())
    ).status_code == 200
    renewed = await stack.issuer.post(f"/v2/keys/{target}/renew", headers=auth, json={"extend_days": 30})
    assert renewed.status_code == 200
    rotated = await stack.issuer.post(
        "/v2/keys/rotate", headers=auth, json={"key_id": target, "grace_period_hours": 1}
    )
    assert rotated.status_code == 201, rotated.text
    successor = rotated.json()
    revoked = await stack.issuer.post(f"/v2/keys/{target}/revoke", headers=auth, json={"reason": "done"})
    assert revoked.status_code == 200
    assert (await stack.issuer.delete(f"/v2/keys/{successor['id']}", headers=auth)).status_code == 200
    secret = await stack.issuer.post("/v2/account/webhook-secret", headers=auth)
    assert secret.status_code == 201

    found = await entries(stack)
    expected = [
        ("webhook_secret.rotated", None),
        ("key.deleted", successor["id"]),
        ("key.revoked", target),
        # A rotation: the new key's creation and the old key's rotation, in one transaction.
        ("key.created", successor["id"]),
        ("key.rotated", target),
        ("key.renewed", target),
        ("key.updated", target),
        ("key.created", target),
    ]
    assert [(e["action"], e["target_key_id"]) for e in found[: len(expected)]] == expected
    for entry in found[: len(expected)]:
        assert entry["actor_key_id"] == actor, entry
        assert entry["ip"] == "127.0.0.1" and entry["user_agent"] == AGENT, entry
        assert entry["id"].startswith("aud_") and entry["at"].endswith("Z"), entry
    assert one(found, "key.rotated", target)["details"]["new_key_id"] == successor["id"]
    assert one(found, "key.created", successor["id"])["details"]["rotated_from"] == target
    assert one(found, "key.updated", target)["details"]["changed"] == ["metadata", "name", "notify"]
    assert one(found, "key.revoked", target)["details"]["reason"] == "done"
    # Newest first, with ids that are each their own.
    assert [e["at"] for e in found] == sorted((e["at"] for e in found), reverse=True)
    assert len({e["id"] for e in found}) == len(found)

    # No secret and no personal data anywhere in the trail: not the keys, not the webhook secret, not
    # the notification address or the key's name and metadata.
    text = orjson.dumps(found).decode()
    for forbidden in (
        created["key"],
        successor["key"],
        secret.json()["secret"],
        "whsec_",
        EMAIL,
        "audited",
        "secret-name",
        "hook.example.com",
    ):
        assert forbidden not in text, forbidden


def key_body(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "environment": "prod",
        "scopes": ["compute:read"],
        "notify": {"email": EMAIL},
        "metadata": {"team": "secret-name"},
    }


def patch_body() -> dict[str, Any]:
    return {
        "name": "audited too",
        "notify": {"email": EMAIL, "webhook_url": "https://hook.example.com/in"},
        "metadata": {"team": "secret-name"},
    }


async def test_a_hostile_user_agent_and_forwarded_address_are_kept_clean(
    make_stack: Callable[..., Any],
) -> None:
    async with make_stack(trusted_proxies=["127.0.0.1/32"]) as stack:
        leaked = (await stack.create_key())["key"]
        # Sent as bytes, as a client may: a server decodes header bytes as latin-1, so the bidi override
        # arrives as text with a C1 control in it.
        agent = f"evil\x1b[2J\u202e/1.0 {leaked} whsec_QUJD Bearer {leaked} {EMAIL} " + "x" * 1000
        forwarded = f"{leaked}\u2028, 127.0.0.1"
        response = await stack.issuer.post(
            "/v2/keys",
            headers={
                **stack.auth(),
                "User-Agent": agent.encode(),
                "X-Forwarded-For": forwarded.encode(),
            },
            json=key_body("hostile"),
        )
        assert response.status_code == 201
        entry = (await audit(stack, action="key.created"))["data"][0]
        assert entry["target_key_id"] == response.json()["id"]
        user_agent = entry["user_agent"]
        assert user_agent.startswith("evil[2J") and "/1.0 cnx_prod_… whsec_… Bearer … …@… xxx" in user_agent
        assert len(user_agent) == 256
        assert not [c for c in user_agent if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F]
        text = orjson.dumps(entry).decode()
        for forbidden in (leaked, leaked[:14], "QUJD", EMAIL, "\u202e", "\u2028", "\x1b"):
            assert forbidden not in text, forbidden
        # The forwarded hop is not an address: kept (it is what the proxy saw), scrubbed and bounded.
        assert entry["ip"] is not None and parse_address(entry["ip"]) is None and len(entry["ip"]) <= 64

        # A real forwarded address is recorded in its canonical form.
        await stack.issuer.post(
            "/v2/keys",
            headers={**headers(stack), "X-Forwarded-For": "2001:DB8:0:0::1, 127.0.0.1"},
            json=key_body("ipv6"),
        )
        assert (await audit(stack, action="key.created"))["data"][0]["ip"] == "2001:db8::1"


async def test_platform_actions_name_their_source(make_stack: Callable[..., Any], tmp_path: Path) -> None:
    github = GitHubSigner("audit-test-key")
    keys_file = tmp_path / "github-keys.json"
    keys_file.write_bytes(meta(github))
    async with make_stack(secret_scanning_keys=str(keys_file)) as stack:
        nc = stack.extra["nc"]
        by_github = await stack.create_key(name="leaked on github")
        body = report(by_github["key"])
        scanned = await stack.issuer.post(
            "/v2/secret-scanning/github",
            content=body,
            headers={**github.headers(body), "User-Agent": "GitHub"},
        )
        assert scanned.status_code == 200, scanned.text
        entry = one(await entries(stack), "key.revoked_by_leak", by_github["id"])
        assert entry["actor_key_id"] == "github-secret-scanning" and entry["ip"] == "127.0.0.1"
        assert (
            entry["details"]["leak_url"].startswith("https://github.com/") and entry["user_agent"] == "GitHub"
        )

        by_platform = await stack.create_key(name="leaked elsewhere")
        await nc.publish(
            "platform.secrets.leaked", orjson.dumps({"token": by_platform["key"], "source": "gitlab"})
        )
        entry = await wait_entry(stack, "key.revoked_by_leak", by_platform["id"])
        assert entry["actor_key_id"] == "platform:secrets" and entry["ip"] is None
        assert "gitlab" in entry["details"]["reason"]

        # The rotator's auto-renew and an operator's revocation over NATS.
        renewable = await stack.create_key(name="auto")
        answer = await nc.request("keys.cmd.renew", orjson.dumps({"key_id": renewable["id"]}), timeout=5)
        assert orjson.loads(answer.data)["ok"]
        assert one(await entries(stack), "key.renewed", renewable["id"])["actor_key_id"] == "rotator"
        await nc.request(
            "keys.cmd.revoke", orjson.dumps({"key_id": renewable["id"], "reason": "ops"}), timeout=5
        )
        assert one(await entries(stack), "key.revoked", renewable["id"])["actor_key_id"] == "keys.cmd.revoke"
        # A command whose body does not fit is answered with an error (not left without an answer) and
        # changes nothing: no key id, an empty one, a renewal of zero days, not JSON at all.
        before = len(await entries(stack))
        for subject, bad in (
            ("keys.cmd.revoke", b'{"reason": "no key named"}'),
            ("keys.cmd.end_grace", b'{"key_id": ""}'),
            ("keys.cmd.renew", orjson.dumps({"key_id": renewable["id"], "extend_days": 0})),
            ("keys.cmd.status", b"not json"),
        ):
            refusal = orjson.loads((await nc.request(subject, bad, timeout=5)).data)
            assert refusal["ok"] is False and refusal["error"] == "bad_request", (subject, refusal)
            assert "no key named" not in refusal["detail"]
        assert len(await entries(stack)) == before

        # An account suspended and resumed: recorded in that account's trail (read once it is resumed;
        # the call made while it was suspended is refused and recorded too).
        account, admin = await other_account(stack)
        await nc.publish(
            "platform.accounts.suspended", orjson.dumps({"account_id": account, "reason": "billing"})
        )

        async def refused() -> bool:
            return (await stack.issuer.get("/v2/keys", headers=stack.auth(admin))).status_code == 401

        await eventually(refused)
        await nc.publish("platform.accounts.resumed", orjson.dumps({"account_id": account}))

        async def resumed() -> bool:
            return (await stack.issuer.get("/v2/audit", headers=stack.auth(admin))).status_code == 200

        await eventually(resumed)
        theirs = await entries(stack, admin)
        actions = [(e["action"], e["actor_key_id"]) for e in theirs]
        assert ("account.suspended", "platform:accounts") in actions
        assert ("account.resumed", "platform:accounts") in actions
        denied = [e for e in theirs if e["action"] == "auth.denied"]
        assert denied and "suspended" in denied[-1]["details"]["reason"]
        # None of it in the default account's trail.
        assert not [e for e in await entries(stack) if e["action"].startswith("account.")]


async def wait_entry(stack: Stack, action: str, target: str) -> dict[str, Any]:
    async def there() -> bool:
        return any(e["target_key_id"] == target for e in await entries(stack, action=action))

    await eventually(there)
    return one(await entries(stack), action, target)


async def test_filters_and_pages(stack: Stack) -> None:
    operator = await stack.create_key(name="operator", scopes=["admin:write", "compute:read"])
    made = [await stack.create_key(admin=operator["key"], name=f"k{i}") for i in range(5)]
    for key in made[:2]:
        assert (
            await stack.issuer.post(f"/v2/keys/{key['id']}/revoke", headers=stack.auth())
        ).status_code == 200

    revoked = await entries(stack, action="key.revoked")
    assert [e["target_key_id"] for e in revoked] == [made[1]["id"], made[0]["id"]]
    # key_id: what was done to the key and what it did.
    assert [e["action"] for e in await entries(stack, key_id=made[0]["id"])] == ["key.revoked", "key.created"]
    by_operator = await entries(stack, key_id=operator["id"])
    assert [(e["action"], e["target_key_id"]) for e in by_operator] == [
        *(("key.created", key["id"]) for key in reversed(made)),
        ("key.created", operator["id"]),
    ]
    assert await entries(stack, key_id=operator["id"], action="key.revoked") == []
    # since: entries at or after that time.
    everything = await entries(stack)
    pivot = next(e for e in everything if e["target_key_id"] == made[2]["id"])
    recent = await entries(stack, since=pivot["at"])
    assert recent and all(e["at"] >= pivot["at"] for e in recent)
    assert {e["id"] for e in recent} == {e["id"] for e in everything if e["at"] >= pivot["at"]}

    # Pages of 2 walk the same entries, in the same order, with no repeats.
    walked: list[str] = []
    cursor = None
    while True:
        page = await audit(stack, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["data"]) <= 2
        walked += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [e["id"] for e in everything]

    for params in (
        {"cursor": "bm9wZQ"},
        {"cursor": encode_cursor(2**63)},
        {"cursor": "x" * 201},
        {"limit": 0},
        {"limit": 101},
        {"action": "key.stolen"},
        {"key_id": "'; DROP TABLE issuer_audit; --"},
        {"since": "yesterday"},
        {"since": "0.5"},  # a number is not a date-time (pydantic alone reads it as a Unix time)
    ):
        response = await stack.issuer.get("/v2/audit", headers=stack.auth(), params=params)
        assert response.status_code == 422, (params, response.text)
    assert (await audit(stack, cursor=encode_cursor(2**63 - 1), limit=1))["data"]


async def test_denials_are_recorded_and_a_flood_is_bounded(make_stack: Callable[..., Any]) -> None:
    async with make_stack(audit_denials_per_minute=3) as stack:
        reader = await stack.create_key(name="no admin", scopes=["compute:read"])
        denied = await stack.issuer.get("/v2/audit", headers=headers(stack, reader["key"]))
        assert denied.status_code == 403
        entry = (await audit(stack, action="auth.denied"))["data"][0]
        assert entry["actor_key_id"] == reader["id"] and entry["target_key_id"] is None
        assert entry["ip"] == "127.0.0.1" and entry["user_agent"] == AGENT
        assert entry["details"]["status"] == 403 and "admin:read" in entry["details"]["reason"]
        assert entry["details"]["route"] == "/v2/audit" and entry["details"]["method"] == "GET"
        assert reader["key"] not in orjson.dumps(entry).decode()

        # A write the caller's scopes do not cover, and a revoked key: recorded against that key.
        writer = await stack.create_key(name="narrow", scopes=["admin:write"])
        root = await admin_id(stack)
        forbidden = await stack.issuer.post(f"/v2/keys/{root}/revoke", headers=stack.auth(writer["key"]))
        assert forbidden.status_code == 403
        await stack.issuer.post(f"/v2/keys/{writer['id']}/revoke", headers=stack.auth())
        assert (await stack.issuer.get("/v2/keys", headers=stack.auth(writer["key"]))).status_code == 401
        reasons = [
            e["details"]["reason"] for e in await entries(stack, action="auth.denied", key_id=writer["id"])
        ]
        assert len(reasons) == 2 and "revoked" in reasons[0], reasons

        # A flood with one key: at most 3 entries a minute for it.
        for _ in range(10):
            assert (await stack.issuer.get("/v2/audit", headers=stack.auth(reader["key"]))).status_code == 403
        assert len(await entries(stack, action="auth.denied", key_id=reader["id"])) == 3

        # Unknown keys: kept without an account (no trail lists them), bounded the same way.
        store = stack.issuer_app.state.service.store
        for bad in ("cnx_prod_" + "A" * 36, "", "nonsense"):
            response = await stack.issuer.get("/v2/keys", headers={"Authorization": f"Bearer {bad}"})
            assert response.status_code == 401
        assert (await stack.issuer.get("/v2/keys", params={"api_key": "x"})).status_code == 401
        for _ in range(10):
            await stack.issuer.get("/v2/keys", headers={"Authorization": "Bearer cnx_prod_" + "B" * 36})
        async with store.engine.connect() as conn:
            unknown = (
                await conn.execute(
                    select(func.count()).select_from(IssuerAudit).where(IssuerAudit.account_id.is_(None))  # type: ignore[union-attr]
                )
            ).scalar_one()
        assert unknown == 3
        assert all(e["actor_key_id"] is not None for e in await entries(stack, action="auth.denied"))


async def test_an_account_never_sees_another_accounts_entries(stack: Stack) -> None:
    _, admin = await other_account(stack)
    theirs = await stack.create_key(admin=admin, name="theirs")
    mine = await stack.create_key(name="mine")
    assert (
        await stack.issuer.get("/v2/audit", headers=stack.auth(admin), params={"key_id": mine["id"]})
    ).json()["data"] == []
    assert await entries(stack, key_id=theirs["id"]) == []
    our_targets = {e["target_key_id"] for e in await entries(stack)}
    their_targets = {e["target_key_id"] for e in await entries(stack, admin)}
    assert theirs["id"] in their_targets and theirs["id"] not in our_targets
    assert mine["id"] in our_targets and mine["id"] not in their_targets


async def refuse_on_insert(store: Any, table: str, column: str, value: str) -> None:
    """A trigger that makes every INSERT into `table` with `column = value` fail."""
    async with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            await conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN NEW.{column} = '{value}' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION refuse_insert() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
            )
            await conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW "
                f"WHEN (NEW.{column} = '{value}') EXECUTE FUNCTION refuse_insert()"
            )


async def test_an_entry_commits_with_its_change_or_not_at_all(stack: Stack) -> None:
    store = stack.issuer_app.state.service.store
    failing = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.issuer_app, raise_app_exceptions=False),
        base_url="http://issuer",
    )
    async with failing:
        # The entry cannot be written: the revocation does not happen either.
        key = await stack.create_key(name="kept")
        await refuse_on_insert(store, "issuer_audit", "action", "key.revoked")
        response = await failing.post(f"/v2/keys/{key['id']}/revoke", headers=stack.auth())
        assert response.status_code in (500, 503)
        assert (await stack.issuer.get(f"/v2/keys/{key['id']}", headers=stack.auth())).json()[
            "status"
        ] == "active"
        async with store.engine.connect() as conn:
            events = (
                await conn.execute(
                    select(func.count())
                    .select_from(IssuerOutbox)
                    .where(IssuerOutbox.subject == "keys.events.key.revoked")
                )
            ).scalar_one()
        assert events == 0

        # The change cannot be written (its event is refused): no entry either.
        await refuse_on_insert(store, "issuer_outbox", "subject", "keys.events.key.renewed")
        response = await failing.post(
            f"/v2/keys/{key['id']}/renew", headers=stack.auth(), json={"extend_days": 9}
        )
        assert response.status_code in (500, 503)
        assert await entries(stack, action="key.renewed") == []
        # A change refused by a rule (409, the key revoked behind the API's back): nothing recorded.
        async with store.engine.begin() as conn:
            await conn.execute(
                IssuerKey.__table__.update()
                .where(IssuerKey.__table__.c.id == key["id"])
                .values(status="revoked")  # type: ignore[attr-defined]
            )
        patched = await stack.issuer.patch(f"/v2/keys/{key['id']}", headers=stack.auth(), json={"name": "x"})
        assert patched.status_code == 409
        assert await entries(stack, action="key.updated") == []
