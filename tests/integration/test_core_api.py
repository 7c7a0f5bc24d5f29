"""Mint, use, list and revoke keys through the real issuer, validator and demo API on a real nats-server,
against SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from shared import tokens
from shared.events import STREAM_EVENTS, parse_event

from .stack import Stack, eventually, running_stack, running_validator, stack_settings


@pytest.fixture
async def stack(
    nats_server: Any, make_database_url: Any, backend: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        nats_server.url,
        tmp_path,
        make_database_url("issuer", backend),
        make_database_url("validator", backend),
        f"it-{uuid.uuid4().hex[:8]}",
    )
    async with running_stack(settings) as running:
        yield running


async def test_key_works_on_the_demo_api_with_header_and_query(stack: Stack) -> None:
    created = await stack.create_key(scopes=["compute:read", "storage:write"])
    key = created["key"]
    assert created["prefix"] == tokens.display_prefix(key) and created["status"] == "active"
    await stack.wait_demo_status(key, 200)
    response = await stack.demo.get("/v2/instances", params={"api_key": key})
    assert response.status_code == 200 and response.json()["data"]


async def test_refusals_on_the_demo_api(stack: Stack) -> None:
    good = (await stack.create_key())["key"]
    storage_only = (await stack.create_key(scopes=["storage:admin"]))["key"]
    await stack.wait_demo_status(good, 200)
    missing = await stack.demo.get("/v2/instances")
    assert missing.status_code == 401 and "invalid_token" in missing.headers["www-authenticate"]
    assert await stack.demo_status("garbage") == 401
    one_changed = good[:-1] + ("A" if good[-1] != "A" else "B")
    assert await stack.demo_status(one_changed) == 401
    assert await stack.demo_status(tokens.generate("prod")) == 401
    await stack.wait_demo_status(storage_only, 403)
    body = (await stack.demo.get("/v2/instances", headers={"Authorization": f"Bearer {storage_only}"})).json()
    assert body["error"]["code"] == "SCOPE_DENIED"


async def test_unknown_scope_and_bad_input_are_422_naming_the_field(stack: Stack) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "environment": "prod", "scopes": ["compute:fly"]}, "compute:fly"),
        ({"name": "x", "environment": "qa", "scopes": ["compute:read"]}, "environment"),
        (
            {"name": "x", "environment": "prod", "scopes": ["compute:read"], "ip_allowlist": ["10.0.0.0/33"]},
            "10.0.0.0/33",
        ),
        (
            {"name": "x", "environment": "prod", "scopes": ["compute:read"], "expires_in_days": 366},
            "expires_in_days",
        ),
        ({"name": "x", "environment": "prod", "scopes": ["compute:read"], "colour": "red"}, "colour"),
    ]
    before = (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()["data"]
    for body, named in cases:
        response = await stack.issuer.post("/v2/keys", json=body, headers=stack.auth())
        assert response.status_code == 422, (body, response.text)
        assert named in response.json()["error"]["message"], response.text
    too_big = await stack.issuer.post(
        "/v2/keys",
        content=b'{"name": "' + b"x" * 100_000 + b'"}',
        headers={**stack.auth(), "content-type": "application/json"},
    )
    assert too_big.status_code == 413
    after = (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()["data"]
    assert len(after) == len(before), "a refused request changed nothing"


async def test_list_shows_prefix_never_secret_and_paginates(stack: Stack) -> None:
    created = [await stack.create_key(name=f"k{i}") for i in range(5)]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await stack.issuer.get("/v2/keys", headers=stack.auth(), params=params)
        assert page.status_code == 200
        seen.extend(page.json()["data"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    ids = [k["id"] for k in seen]
    assert len(ids) == len(set(ids)) == 6  # the five and the bootstrap admin key
    text = str(seen)
    for key in created:
        assert key["key"] not in text and key["prefix"] in text
    assert all("key" not in k for k in seen)
    bad_cursor = await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"cursor": "nonsense"})
    assert bad_cursor.status_code == 422


async def test_revoked_key_is_refused_within_a_second_and_loses_the_management_api(stack: Stack) -> None:
    admin2 = await stack.create_key(scopes=["admin:write", "compute:read"])
    await stack.wait_demo_status(admin2["key"], 200)
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth(admin2["key"]))).status_code == 200
    revoked = await stack.issuer.post(f"/v2/keys/{admin2['id']}/revoke", headers=stack.auth())
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert await stack.wait_demo_status(admin2["key"], 401, timeout=1.0) < 1.0
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth(admin2["key"]))).status_code == 401
    again = await stack.issuer.delete(f"/v2/keys/{admin2['id']}", headers=stack.auth())
    assert again.status_code == 200 and again.json()["status"] == "revoked"


async def test_no_escalation_and_admin_scopes_guard_the_api(stack: Stack) -> None:
    limited = await stack.create_key(scopes=["admin:write", "compute:read"])
    escalate = await stack.issuer.post(
        "/v2/keys",
        json={"name": "x", "environment": "prod", "scopes": ["storage:read"]},
        headers=stack.auth(limited["key"]),
    )
    assert escalate.status_code == 403 and "storage:read" in escalate.json()["error"]["message"]
    allowed = await stack.issuer.post(
        "/v2/keys",
        json={"name": "x", "environment": "dev", "scopes": ["compute:read"]},
        headers=stack.auth(limited["key"]),
    )
    assert allowed.status_code == 201
    reader = await stack.create_key(scopes=["compute:read"])
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth(reader["key"]))).status_code == 403


async def test_accounts_are_isolated(stack: Stack) -> None:
    other_admin = await stack.issuer_app.state.service.bootstrap_admin(f"acct-{uuid.uuid4().hex[:6]}")
    mine = await stack.create_key()
    response = await stack.issuer.get(f"/v2/keys/{mine['id']}", headers=stack.auth(other_admin))
    assert response.status_code == 404
    revoke = await stack.issuer.post(f"/v2/keys/{mine['id']}/revoke", headers=stack.auth(other_admin))
    assert revoke.status_code == 404
    listed = (await stack.issuer.get("/v2/keys", headers=stack.auth(other_admin))).json()["data"]
    assert mine["id"] not in {k["id"] for k in listed}


async def test_patch_changes_metadata_and_refuses_unknown_fields(stack: Stack) -> None:
    key = await stack.create_key()
    response = await stack.issuer.patch(
        f"/v2/keys/{key['id']}",
        json={"name": "renamed", "ip_allowlist": ["127.0.0.0/8"], "metadata": {"team": "a"}},
        headers=stack.auth(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "renamed" and response.json()["ip_allowlist"] == ["127.0.0.0/8"]
    unknown = await stack.issuer.patch(
        f"/v2/keys/{key['id']}", json={"scopes": ["admin:admin"]}, headers=stack.auth()
    )
    assert unknown.status_code == 422 and "scopes" in unknown.json()["error"]["message"]


async def test_verify_endpoint_answers_through_the_validator(stack: Stack) -> None:
    key = (await stack.create_key(scopes=["compute:write"]))["key"]
    await stack.wait_demo_status(key, 200)
    ok = await stack.issuer.post(
        "/v2/keys/verify", json={"key": key, "scope": "compute:read"}, headers=stack.auth()
    )
    assert ok.json()["valid"] is True and ok.json()["code"] == "VALID"
    denied = await stack.issuer.post(
        "/v2/keys/verify", json={"key": key, "scope": "billing:read"}, headers=stack.auth()
    )
    assert denied.json()["code"] == "SCOPE_DENIED"


async def test_forward_auth_status_mapping(stack: Stack) -> None:
    key = (await stack.create_key(scopes=["compute:read"]))["key"]
    await stack.wait_demo_status(key, 200)
    fa = stack.forward_auth
    # The requirement comes from the auth URL's own query (no route table in this stack).
    verify = "/v2/auth/verify?scope=compute:read"
    ok = await fa.get(verify, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.headers["x-key-id"] and ok.headers["x-account-id"] == "default"
    assert (await fa.get(verify)).status_code == 401
    assert (await fa.get(verify + f"&api_key={key}")).status_code == 200
    denied = await fa.get("/v2/auth/verify?scope=billing:read", headers={"Authorization": f"Bearer {key}"})
    assert denied.status_code == 403 and denied.headers["x-cnx-code"] == "SCOPE_DENIED"
    # A client header only adds a requirement, and alone covers nothing: fail closed.
    added = await fa.get(
        verify, headers={"Authorization": f"Bearer {key}", "X-Required-Scope": "billing:read"}
    )
    assert added.status_code == 403 and added.headers["x-cnx-code"] == "SCOPE_DENIED"
    alone = await fa.get(
        "/v2/auth/verify", headers={"Authorization": f"Bearer {key}", "X-Required-Scope": "compute:read"}
    )
    assert alone.status_code == 403 and alone.headers["x-cnx-code"] == "NO_ROUTE"


async def test_events_carry_msg_ids_and_never_the_secret(stack: Stack, nats_server: Any) -> None:
    key = await stack.create_key()
    await stack.wait_demo_status(key["key"], 200)
    await stack.issuer.post(f"/v2/keys/{key['id']}/revoke", headers=stack.auth())
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("keys.events.>", ordered_consumer=True, stream=STREAM_EVENTS)
        seen = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except Exception:
                break
            assert key["key"].encode() not in msg.data
            event = parse_event(msg.data)
            assert msg.headers and msg.headers["Nats-Msg-Id"] == event.event_id
            seen.append((event.type, event.key_id))
    finally:
        await nc.close()
    assert ("KeyCreated", key["id"]) in seen and ("KeyRevoked", key["id"]) in seen


async def test_validator_catches_up_on_100_keys_created_while_it_was_down(
    stack: Stack, make_database_url: Any, backend: str
) -> None:
    await stack.validator.stop()
    created = [await stack.create_key(name=f"offline-{i}") for i in range(100)]
    async with running_validator(stack.settings) as restarted:

        async def all_valid() -> bool:
            return all(restarted.service.validate(k["key"], "compute:read")["valid"] for k in created)

        await eventually(all_valid, timeout=15)
