"""The issuer refuses internal webhook targets: the management API served over real HTTP (uvicorn on a
free port), a real SQLite store and nats-server, `CNX_WEBHOOK_ALLOW_PRIVATE=false`."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.issuer.app import create_app as create_issuer
from shared.settings import Settings
from tests.support.asgi import served

# What the injected resolver answers; any other name does not resolve.
DNS = {
    "hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "metadata.example.com": ["169.254.169.254"],
    "sneaky.example.com": ["93.184.215.14", "10.0.0.9"],
}

INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:8222/",
    "http://[::1]:8080/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://10.0.0.1/",
    "http://localhost:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://100.64.0.1/",
    "http://[fd00::1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://224.0.0.1/",
    "http://metadata.example.com/latest/meta-data/",
    "https://sneaky.example.com/hook",
    "https://user:secret@hooks.example.com/hook",
    "ftp://hooks.example.com/hook",
]


async def resolver(host: str, port: int) -> Sequence[str]:
    if host in DNS:
        return DNS[host]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
async def issuer(
    nats_server: Any, make_database_url: Any, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        nats_url=nats_server.url,
        data_dir=tmp_path,
        issuer_database_url=make_database_url("issuer", "sqlite"),
        bootstrap_admin_key_file=tmp_path / "bootstrap-admin-key",
        instance_id=f"ssrf-{uuid.uuid4().hex[:8]}",
        webhook_allow_private=False,
    )
    async with served(create_issuer(settings, resolver=resolver)) as base_url:
        admin = (tmp_path / "bootstrap-admin-key").read_text().strip()
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {admin}"}
        ) as client:
            yield client


def key_body(webhook_url: str) -> dict[str, Any]:
    return {
        "name": "hooked",
        "environment": "prod",
        "scopes": ["compute:read"],
        "notify": {"webhook_url": webhook_url},
    }


async def test_internal_targets_are_422_naming_the_field_and_nothing_is_made(
    issuer: httpx.AsyncClient,
) -> None:
    before = len((await issuer.get("/v2/keys", params={"limit": 100})).json()["data"])
    for url in INTERNAL:
        response = await issuer.post("/v2/keys", json=key_body(url))
        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"]["field"] == "notify.webhook_url", (url, response.text)
    assert len((await issuer.get("/v2/keys", params={"limit": 100})).json()["data"]) == before


async def test_a_public_https_target_is_201(issuer: httpx.AsyncClient) -> None:
    created = await issuer.post("/v2/keys", json=key_body("https://hooks.example.com/cnx?team=a"))
    assert created.status_code == 201, created.text
    assert created.json()["notify"]["webhook_url"] == "https://hooks.example.com/cnx?team=a"
    by_address = await issuer.post("/v2/keys", json=key_body("https://93.184.215.14/hook"))
    assert by_address.status_code == 201, by_address.text


async def test_a_name_that_does_not_resolve_is_accepted(issuer: httpx.AsyncClient) -> None:
    """DNS may come later; the notifier applies the rule to the address it connects to."""
    created = await issuer.post("/v2/keys", json=key_body("https://not-yet.example.net/hook"))
    assert created.status_code == 201, created.text


async def test_patch_applies_the_same_rule(issuer: httpx.AsyncClient) -> None:
    created = await issuer.post("/v2/keys", json=key_body("https://hooks.example.com/a"))
    assert created.status_code == 201, created.text
    key_id = created.json()["id"]
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/", "http://localhost:8080/"):
        response = await issuer.patch(f"/v2/keys/{key_id}", json={"notify": {"webhook_url": url}})
        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"]["field"] == "notify.webhook_url"
    kept = await issuer.get(f"/v2/keys/{key_id}")
    assert kept.json()["notify"]["webhook_url"] == "https://hooks.example.com/a"
    moved = await issuer.patch(
        f"/v2/keys/{key_id}", json={"notify": {"webhook_url": "https://hooks.example.com/b"}}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["notify"]["webhook_url"] == "https://hooks.example.com/b"
