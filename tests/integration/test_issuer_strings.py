"""What the management API accepts it can always serve back; notification addresses are checked and
normalised. The issuer served by uvicorn on a free port, a real nats-server and SQLite store.

Finding 1 of issue 18: a `notify.webhook_url` of exactly 2,083 characters was accepted, normalised to
2,084 (a trailing `/`), stored, and then refused by the response model: the create answered 500 after
the key was stored, and every list page holding it 500 from then on. Finding 8: an address with NUL or
CR/LF was accepted, and the notifier retried it for a day.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import update

from services.issuer.schemas import MAX_URL_LENGTH, CreateKey
from services.issuer.tables import IssuerKey
from shared.events import NOTIFY_CONTEXT
from tests.support.strategies import create_bodies

from .served_issuer import served_issuer

# `https://hooks.example.com?aaa` is normalised to `https://hooks.example.com/?aaa`: one longer.
BASE = "https://hooks.example.com?"


def padded(length: int, base: str = BASE) -> str:
    return base + "a" * (length - len(base))


@pytest.fixture
async def issuer(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Any]:
    async with served_issuer(nats_server.url, make_database_url("issuer", "sqlite"), tmp_path) as client:
        yield client


def body(**fields: Any) -> dict[str, Any]:
    return {"name": "strings", "environment": "prod", "scopes": ["compute:read"], **fields}


async def listed_ids(issuer: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await issuer.get("/v2/keys", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    return [k["id"] for k in response.json()["data"]]


async def test_a_webhook_url_of_2083_characters_that_normalises_longer_is_422_and_stores_nothing(
    issuer: httpx.AsyncClient,
) -> None:
    """The exact case of the finding: 2,083 sent, 2,084 once normalised."""
    url = padded(MAX_URL_LENGTH)
    assert len(url) == 2083
    before = await listed_ids(issuer)
    response = await issuer.post("/v2/keys", json=body(notify={"webhook_url": url}))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "notify.webhook_url"
    assert await listed_ids(issuer) == before  # nothing was stored, the list still serves
    # PATCH holds the same rule.
    key = (await issuer.post("/v2/keys", json=body())).json()
    patched = await issuer.patch(f"/v2/keys/{key['id']}", json={"notify": {"webhook_url": url}})
    assert patched.status_code == 422 and patched.json()["error"]["field"] == "notify.webhook_url"


async def test_a_webhook_url_normalised_to_the_bound_is_served_by_every_route(
    issuer: httpx.AsyncClient,
) -> None:
    url = padded(MAX_URL_LENGTH - 1)
    created = await issuer.post("/v2/keys", json=body(notify={"webhook_url": url}))
    assert created.status_code == 201, created.text
    stored = created.json()["notify"]["webhook_url"]
    assert len(stored) == MAX_URL_LENGTH and stored == url.replace("?", "/?", 1)
    key_id = created.json()["id"]
    assert (await issuer.get(f"/v2/keys/{key_id}")).json()["notify"]["webhook_url"] == stored
    assert key_id in await listed_ids(issuer)
    revoked = await issuer.post(f"/v2/keys/{key_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["notify"]["webhook_url"] == stored
    for params in ({}, {"status": "revoked"}, {"environment": "prod"}):
        assert key_id in await listed_ids(issuer, **params)
    assert (await issuer.delete(f"/v2/keys/{key_id}")).status_code == 200


async def test_a_row_stored_before_the_bound_was_checked_still_serves(issuer: httpx.AsyncClient) -> None:
    """A row written by the old code (a 2,084-character URL, an address today's rule refuses) never
    turns a list page, a GET, a revoke or a DELETE into a 500: output models carry no input bounds."""
    app = issuer.app  # type: ignore[attr-defined]
    service = app.state.service
    created = await issuer.post("/v2/keys", json=body(notify={"webhook_url": "https://hooks.example.com/a"}))
    key_id = created.json()["id"]
    old_url = padded(MAX_URL_LENGTH + 1).replace("?", "/?", 1)
    legacy = json.dumps({"email": "Owner@Example.COM\x07", "webhook_url": old_url})
    sealed = service._cipher.encrypt(legacy, context=NOTIFY_CONTEXT)
    async with service.store.engine.begin() as conn:
        changed = await conn.execute(
            update(IssuerKey).where(IssuerKey.id == key_id).values(notify_sealed=sealed)  # type: ignore[arg-type]
        )
        assert changed.rowcount == 1
    got = await issuer.get(f"/v2/keys/{key_id}")
    assert got.status_code == 200, got.text
    assert got.json()["notify"] == {"email": "Owner@Example.COM\x07", "webhook_url": old_url}
    assert key_id in await listed_ids(issuer)
    assert (await issuer.post(f"/v2/keys/{key_id}/revoke")).status_code == 200
    for params in ({}, {"status": "revoked"}, {"environment": "prod"}):
        assert key_id in await listed_ids(issuer, **params)
    assert (await issuer.delete(f"/v2/keys/{key_id}")).status_code == 200


@pytest.mark.parametrize(
    "address",
    [
        "owner@example.com\x00",
        "owner\x00@example.com",
        "owner@example.com\r\nBcc: victim@example.net",
        "owner@example.com\n",
        "own\x07er@example.com",
        "own\x1ber@example.com",
        "Owner <owner@example.com>",
        '"owner name"@example.com',
        "owner@[93.184.215.14]",
        "owner@localhost",
        "owner@example",
        "@example.com",
        "o" * 65 + "@example.com",
        "owner@" + "a" * 250 + ".com",
    ],
)
async def test_a_bad_notification_address_is_422_naming_the_field_and_stores_nothing(
    issuer: httpx.AsyncClient, address: str
) -> None:
    before = await listed_ids(issuer)
    response = await issuer.post("/v2/keys", json=body(notify={"email": address}))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "notify.email"
    assert await listed_ids(issuer) == before


async def test_the_normalised_address_is_stored_and_served_back(issuer: httpx.AsyncClient) -> None:
    created = await issuer.post("/v2/keys", json=body(notify={"email": "Owner@EXAMPLE.Com"}))
    assert created.status_code == 201, created.text
    assert created.json()["notify"] == {"email": "Owner@example.com", "webhook_url": None}
    key_id = created.json()["id"]
    idn = await issuer.patch(f"/v2/keys/{key_id}", json={"notify": {"email": "ops@Bücher.example"}})
    assert idn.status_code == 200, idn.text
    assert idn.json()["notify"]["email"] == "ops@xn--bcher-kva.example"
    listed = (await issuer.get("/v2/keys", params={"limit": 100})).json()["data"]
    (mine,) = [k for k in listed if k["id"] == key_id]
    assert mine["notify"]["email"] == "ops@xn--bcher-kva.example"
    bad = await issuer.patch(f"/v2/keys/{key_id}", json={"notify": {"email": "a@b.com\r\nBcc: c@d.com"}})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "notify.email"


# The property: whatever CreateKey accepts, the API stores and serves back (create, GET, list), with
# the very values the model normalised. Strings near every bound, hostile characters included.


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(candidate=create_bodies)
async def test_whatever_create_key_accepts_the_api_serves_back(
    issuer: httpx.AsyncClient, candidate: dict[str, Any]
) -> None:
    try:
        accepted = CreateKey.model_validate(candidate)
    except ValueError:
        response = await issuer.post("/v2/keys", json=candidate)
        assert response.status_code == 422, response.text
        return
    created = await issuer.post("/v2/keys", json=candidate)
    assert created.status_code == 201, created.text
    served_back = created.json()
    expected = accepted.notify.model_dump(mode="json") if accepted.notify else {}
    assert served_back["notify"] == (expected if any(expected.values()) else None)
    assert served_back["name"] == accepted.name and served_back["metadata"] == accepted.metadata
    got = await issuer.get(f"/v2/keys/{served_back['id']}")
    assert got.status_code == 200, got.text
    assert {k: v for k, v in got.json().items()} == {k: v for k, v in served_back.items() if k != "key"}
    page = await issuer.get("/v2/keys", params={"limit": 1})
    assert page.status_code == 200, page.text
    (first,) = page.json()["data"]
    assert first["id"] == served_back["id"] and first["name"] == accepted.name
