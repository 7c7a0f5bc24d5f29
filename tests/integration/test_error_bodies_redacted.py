"""No error body carries a key (issue 18, finding 3), as a property: a well-formed `cnx_` token, live or
not, put anywhere in a request (query parameter name or value, path, body field name or value, nested
keys, a header name or value) never appears in a 4xx answer of the issuer, served by uvicorn over real
HTTP on a real nats-server and SQLite store. Nothing answers 500 on the way.

The finding: an unknown body field, a `metadata` key or a `notify` sub-key named by a live key echoed
the whole secret in the error's `field` (the message was redacted, the field was not).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import tokens

from .served_issuer import served_issuer


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


VALID = {"name": "probe", "environment": "prod", "scopes": ["compute:read"]}


def _create(**fields: Any) -> Call:
    return Call("POST", "/v2/keys", body={**VALID, **fields})


# Where the secret goes: `s` is the secret (with whatever is around it), `k` a live key id.
POSITIONS: dict[str, Callable[[str, str], Call]] = {
    "query name": lambda s, k: Call("GET", "/v2/keys", params=[(s, "1")]),
    "query status": lambda s, k: Call("GET", "/v2/keys", params=[("status", s)]),
    "query environment": lambda s, k: Call("GET", "/v2/keys", params=[("environment", s)]),
    "query limit": lambda s, k: Call("GET", "/v2/keys", params=[("limit", s)]),
    "query cursor": lambda s, k: Call("GET", "/v2/keys", params=[("cursor", s)]),
    "query api_key": lambda s, k: Call("GET", "/v2/keys", params=[("api_key", s)]),
    "path get": lambda s, k: Call("GET", f"/v2/keys/{s}"),
    "path patch": lambda s, k: Call("PATCH", f"/v2/keys/{s}", body={"name": "x"}),
    "path revoke": lambda s, k: Call("POST", f"/v2/keys/{s}/revoke"),
    "path renew": lambda s, k: Call("POST", f"/v2/keys/{s}/renew"),
    "path delete": lambda s, k: Call("DELETE", f"/v2/keys/{s}"),
    "unknown path": lambda s, k: Call("GET", f"/v2/{s}"),
    "unknown field": lambda s, k: _create(**{s: 1}),
    "unknown field in patch": lambda s, k: Call("PATCH", f"/v2/keys/{k}", body={s: "x"}),
    "metadata key": lambda s, k: _create(metadata={s: "v"}),
    "metadata key in patch": lambda s, k: Call("PATCH", f"/v2/keys/{k}", body={"metadata": {s: "v"}}),
    "metadata value": lambda s, k: _create(metadata={"k": s + "\x00"}),
    "notify sub-key": lambda s, k: _create(notify={s: "x"}),
    "notify nested deeper": lambda s, k: _create(notify={"email": {s: {s: [s]}}}),
    "notify email": lambda s, k: _create(notify={"email": s}),
    "notify email domain": lambda s, k: _create(notify={"email": f"owner@{s}"}),
    "notify webhook_url": lambda s, k: _create(notify={"webhook_url": s}),
    "notify webhook_url host": lambda s, k: _create(notify={"webhook_url": f"ftp://{s}/"}),
    "rate_limit sub-key": lambda s, k: _create(plan="enterprise", rate_limit={s: 1}),
    "name": lambda s, k: _create(name=s + "\x07"),
    "environment": lambda s, k: _create(environment=s),
    "scope": lambda s, k: _create(scopes=[s]),
    "scope resource": lambda s, k: _create(scopes=[f"{s}:read"]),
    "plan": lambda s, k: _create(plan=s),
    "expires_in_days": lambda s, k: _create(expires_in_days=s),
    "expires_at": lambda s, k: _create(expires_at=s),
    "ip_allowlist": lambda s, k: _create(ip_allowlist=[s]),
    "auto_renew": lambda s, k: _create(auto_renew=s),
    "body is a list": lambda s, k: Call("POST", "/v2/keys", body=[s]),
    "body not json": lambda s, k: Call(
        "POST", "/v2/keys", raw=b'{"name": ' + s.encode() + b"}", headers={"content-type": "application/json"}
    ),
    "rotate key_id": lambda s, k: Call("POST", "/v2/keys/rotate", body={"key_id": s}),
    "rotate grace": lambda s, k: Call("POST", "/v2/keys/rotate", body={"key_id": k, "grace_period_hours": s}),
    "rotate unknown field": lambda s, k: Call("POST", "/v2/keys/rotate", body={"key_id": k, s: 1}),
    "renew extend_days": lambda s, k: Call("POST", f"/v2/keys/{k}/renew", body={"extend_days": s}),
    "revoke reason": lambda s, k: Call("POST", f"/v2/keys/{k}/revoke", body={"reason": s + "\x1b"}),
    "verify key": lambda s, k: Call("POST", "/v2/keys/verify", body={"key": s, "scope": s}),
    "verify ip": lambda s, k: Call("POST", "/v2/keys/verify", body={"key": s, "ip": s}),
    "verify environment": lambda s, k: Call("POST", "/v2/keys/verify", body={"environment": s}),
    # A header name is a token: no `:`, `/` or space (the client refuses to send one).
    "header name": lambda s, k: Call("GET", "/v2/keys", headers={"x-" + re.sub("[:/ ]", "", s): "1"}),
    "header value": lambda s, k: Call("GET", "/v2/keys", headers={"x-forwarded-for": s}),
    "authorization without scheme": lambda s, k: Call("GET", "/v2/keys", headers={"authorization": s}),
    "authorization basic": lambda s, k: Call("GET", "/v2/keys", headers={"authorization": f"Basic {s}"}),
    "authorization bearer": lambda s, k: Call(
        "POST", "/v2/keys", headers={"authorization": f"Bearer {s}"}, body={**VALID, s: s}
    ),
    "content-type": lambda s, k: Call(
        "POST", "/v2/keys", raw=json.dumps(VALID).encode(), headers={"content-type": s}
    ),
}


def _token(environment: str, random_part: str) -> str:
    head = f"cnx_{environment}_{random_part}"
    return head + tokens.checksum(head)


any_token = st.builds(
    _token, st.sampled_from(tokens.ENVIRONMENTS), st.text(tokens.ALPHABET, min_size=30, max_size=30)
)
# What may stand right before or after the secret (a token is found in text without word boundaries).
surround = st.text(st.sampled_from("ab_-.:/ 09Z"), max_size=3)


@dataclass
class Target:
    client: httpx.AsyncClient
    live: list[str]  # secrets of live keys: the bootstrap admin key and one it made
    key_id: str


@pytest.fixture
async def target(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Target]:
    async with served_issuer(nats_server.url, make_database_url("issuer", "sqlite"), tmp_path) as client:
        created = await client.post("/v2/keys", json=VALID)
        assert created.status_code == 201, created.text
        yield Target(client, [client.admin_key, created.json()["key"]], created.json()["id"])  # type: ignore[attr-defined]


async def _send(target: Target, call: Call) -> httpx.Response:
    # A header value has no leading or trailing space on the wire (the client refuses to send one).
    headers = {name: value.strip() for name, value in call.headers.items()}
    kwargs: dict[str, Any] = {"params": call.params, "headers": headers}
    if call.raw is not None:
        kwargs["content"] = call.raw
    elif call.body is not None:
        kwargs["json"] = call.body
    return await target.client.request(call.method, call.path, **kwargs)


def _assert_silent(secret: str, position: str, response: httpx.Response) -> None:
    # No validator runs here, so a verify may be 503 (retry later); a 500 is always a bug.
    assert response.status_code != 500, (position, response.text)
    if response.status_code >= 400:
        where = f"{position}: {response.status_code} {response.text}"
        assert secret not in response.text, where
        assert secret not in json.dumps(response.json()), where  # after any JSON escaping is undone
        assert all(secret not in value for value in response.headers.values()), where


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    position=st.sampled_from(sorted(POSITIONS)),
    which=st.one_of(st.integers(0, 1), st.none()),
    generated=any_token,
    before=surround,
    after=surround,
)
async def test_no_secret_in_any_position_reaches_a_4xx_body(
    target: Target, position: str, which: int | None, generated: str, before: str, after: str
) -> None:
    secret = generated if which is None else target.live[which]
    call = POSITIONS[position](before + secret + after, target.key_id)
    _assert_silent(secret, position, await _send(target, call))


@pytest.mark.parametrize("position", sorted(POSITIONS))
async def test_every_position_with_a_live_key(target: Target, position: str) -> None:
    """Each position once with each live key as it is (no surrounding text), whatever the draw above."""
    for secret in target.live:
        _assert_silent(secret, position, await _send(target, POSITIONS[position](secret, target.key_id)))
