"""Forward-auth over HTTP without NATS: client address from X-Forwarded-For, the original method and
path from nginx, Traefik and Envoy, the route table, and the headers of every answer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.validator.http import ForwardAuthApp, original_request
from services.validator.routes import RouteTable
from shared.validation import Code

VALID = {
    "valid": True,
    "code": Code.VALID,
    "key_id": "key_1",
    "account_id": "acct",
    "scopes": ["compute:read"],
    "environment": "prod",
    "rate_limit": {"limit": 100, "remaining": 41, "reset_s": 59.2},
}


class Recorder:
    def __init__(self, reply: dict[str, Any] | None = None) -> None:
        self.reply = reply or VALID
        self.calls: list[tuple[Any, ...]] = []

    async def __call__(self, key: Any, scope: Any, ip: Any, environment: Any) -> dict[str, Any]:
        self.calls.append((key, scope, ip, environment))
        return dict(self.reply)


def client_for(
    validate: Recorder,
    peer: str = "127.0.0.1",
    trusted: list[str] | None = None,
    routes: list[str] | None = None,
) -> httpx.AsyncClient:
    app = ForwardAuthApp(
        validate,
        CollectorRegistry(),
        trusted_proxies=trusted or [],
        ready=lambda: True,
        routes=RouteTable(routes),
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://v"
    )


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("203.0.113.5", "1.2.3.4", [], "203.0.113.5"),  # no trusted proxies: the peer
        ("203.0.113.5", "1.2.3.4", ["10.0.0.0/8"], "203.0.113.5"),  # peer not trusted: header ignored
        ("10.1.2.3", "198.51.100.9", ["10.0.0.0/8"], "198.51.100.9"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.9, 10.9.9.9", ["10.0.0.0/8"], "198.51.100.9"),  # spoofed left part
        ("10.1.2.3", "10.0.0.7, 10.0.0.8", ["10.0.0.0/8"], "10.0.0.7"),  # all hops trusted: the first
        ("::1", "2001:db8::42", ["::1/128"], "2001:db8::42"),
        ("::1", "2001:db8::42", ["127.0.0.0/8"], "::1"),
    ],
)
async def test_client_ip(peer: str, xff: str, trusted: list[str], expected: str) -> None:
    validate = Recorder()
    async with client_for(validate, peer, trusted) as client:
        await client.get("/v2/auth/verify", headers={"Authorization": "Bearer k", "X-Forwarded-For": xff})
    assert validate.calls[-1][2] == expected


async def test_valid_answer_carries_identity_and_rate_limit_headers() -> None:
    validate = Recorder()
    async with client_for(validate) as client:
        response = await client.get(
            "/v2/auth/verify", headers={"Authorization": "Bearer abc", "X-Required-Scope": "compute:read"}
        )
    assert response.status_code == 200
    assert response.headers["x-key-id"] == "key_1" and response.headers["x-account-id"] == "acct"
    assert response.headers["x-key-scopes"] == "compute:read"
    assert (
        response.headers["ratelimit-limit"],
        response.headers["ratelimit-remaining"],
        response.headers["ratelimit-reset"],
    ) == ("100", "41", "60")
    assert validate.calls == [("abc", "compute:read", "127.0.0.1", None)]


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
async def test_rate_limited_is_429_with_whole_second_retry_after(retry_after_s: float, header: str) -> None:
    reply = {
        "valid": False,
        "code": Code.RATE_LIMITED,
        "key_id": "key_1",
        "account_id": "acct",
        "rate_limit": {"limit": 100, "remaining": 0, "reset_s": 100.0},
        "retry_after_s": retry_after_s,
    }
    async with client_for(Recorder(reply)) as client:
        response = await client.get("/v2/auth/verify", headers={"Authorization": "Bearer abc"})
        as_403 = await client.get(
            "/v2/auth/verify?rate_limit_status=403", headers={"Authorization": "Bearer abc"}
        )
    assert response.status_code == 429 and response.headers["retry-after"] == header
    assert response.headers["ratelimit-remaining"] == "0" and response.headers["ratelimit-reset"] == "100"
    assert response.json()["code"] == "RATE_LIMITED"
    assert as_403.status_code == 403 and as_403.headers["x-cnx-code"] == "RATE_LIMITED"
    assert as_403.headers["retry-after"] == header


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Code.MISSING, 401),
        (Code.NOT_FOUND, 401),
        (Code.REVOKED, 401),
        (Code.SCOPE_DENIED, 403),
        (Code.IP_NOT_ALLOWED, 403),
        (Code.ENV_MISMATCH, 403),
    ],
)
async def test_refusals(code: Code, status: int) -> None:
    async with client_for(Recorder({"valid": False, "code": code})) as client:
        response = await client.post("/v2/auth/verify/anything")
    assert response.status_code == status
    assert ("www-authenticate" in response.headers) == (status == 401)
    assert "x-key-id" not in response.headers


def scope_of(method: str, path: str) -> dict[str, Any]:
    return {"method": method, "path": path}


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        (
            "GET",
            "/v2/auth/verify",
            {b"x-original-method": b"POST", b"x-original-uri": b"/v2/instances?x=1"},
            ("POST", "/v2/instances?x=1"),
        ),
        (
            "GET",
            "/v2/auth/verify",
            {b"x-forwarded-method": b"DELETE", b"x-forwarded-uri": b"/v2/instances/i-1"},
            ("DELETE", "/v2/instances/i-1"),
        ),
        (
            "GET",
            "/v2/auth/verify",
            {b"x-original-method": b"GET", b"x-original-url": b"https://api.example/v2/instances?api_key=k"},
            ("GET", "/v2/instances?api_key=k"),
        ),  # ingress-nginx
        ("PUT", "/v2/auth/verify/v2/instances/i-1", {}, ("PUT", "/v2/instances/i-1")),  # Envoy path_prefix
        ("GET", "/v2/auth/verify", {}, ("GET", "/")),
    ],
)
def test_original_request(
    method: str, path: str, headers: dict[bytes, bytes], expected: tuple[str, str]
) -> None:
    assert original_request(scope_of(method, path), headers) == expected


async def test_route_table_gives_the_scope_when_no_header_does() -> None:
    validate = Recorder()
    routes = ["GET /v2/instances=compute:read", "POST /v2/instances=compute:write@prod"]
    auth = {"Authorization": "Bearer k"}
    async with client_for(validate, routes=routes) as client:
        await client.get(
            "/v2/auth/verify", headers={**auth, "X-Original-Method": "GET", "X-Original-URI": "/v2/instances"}
        )
        await client.get(
            "/v2/auth/verify",
            headers={**auth, "X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/v2/instances"},
        )
        await client.post("/v2/auth/verify/v2/instances", headers=auth)
        await client.get(
            "/v2/auth/verify",
            headers={**auth, "X-Required-Scope": "storage:read", "X-Original-URI": "/v2/instances"},
        )
        await client.get("/v2/auth/verify", headers={**auth, "X-Original-URI": "/v2/unlisted"})
    assert [c[1:4:2] for c in validate.calls] == [
        ("compute:read", None),
        ("compute:write", "prod"),
        ("compute:write", "prod"),
        ("storage:read", None),
        (None, None),
    ]


async def test_key_from_query_or_the_original_uri() -> None:
    validate = Recorder()
    async with client_for(validate) as client:
        await client.get("/v2/auth/verify", params={"api_key": "from-query"})
        await client.get("/v2/auth/verify", headers={"X-Original-URI": "/v2/instances?api_key=from-nginx"})
        await client.get(
            "/v2/auth/verify", headers={"X-Original-URL": "http://h/v2/x?a=1&api_key=from-ingress"}
        )
        await client.get("/v2/auth/verify", headers={"Authorization": "Bearer from-header"})
    assert [c[0] for c in validate.calls] == ["from-query", "from-nginx", "from-ingress", "from-header"]


async def test_probes_and_unknown_paths() -> None:
    async with client_for(Recorder()) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json() == {"ready": True}
        assert (await client.get("/nope")).status_code == 404
