"""The validator's forward-auth with CNX_FORWARD_AUTH_PROXY=envoy, over real HTTP, in the request shape
Envoy's ext_authz HTTP filter documents: the check request keeps the original method, its path is the
configured `path_prefix` followed by the original path and query (`/v2/auth/verify` +
`/v2/instances/i-1?api_key=...`), and it carries the headers `allowed_headers` lets through (Host,
Method, Path, Content-Length and Authorization always; here also the client's own X-* headers, the
worst case). The query string is the client's, so its `scope`/`environment` are not requirements: the
route table alone decides, and a path it does not cover is NO_ROUTE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.natsserver import free_port
from tests.support.asgi import served

from .forward_auth_proxies import bearer, raw_request, route_table_stack, until_known
from .stack import Stack

PREFIX = "/v2/auth/verify"


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with route_table_stack(
        nats_server.url, make_database_url, tmp_path, forward_auth_proxy="envoy"
    ) as running:
        yield running


async def test_envoy_ext_authz_request_shape(stack: Stack) -> None:
    reader = await stack.create_key(scopes=["compute:read"])
    admin = await stack.create_key(scopes=["compute:admin"])
    dev = await stack.create_key(scopes=["compute:admin"], environment="dev")

    await until_known(stack, reader, admin, dev)
    port = free_port()
    async with served(stack.validator.app, port, respond=stack.validator.respond):

        async def check(method: str, original: str, key: str | None, **extra: str) -> tuple[int, str]:
            headers = {**(bearer(key) if key else {}), "X-Request-Id": "r-1", **extra}
            answer = await raw_request(port, method, PREFIX + original, headers)
            return answer.status, answer.headers.get("x-cnx-code", "")

        assert await check("GET", "/v2/instances", reader["key"]) == (200, "VALID")
        assert await check("HEAD", "/v2/instances?page=2", reader["key"]) == (200, "VALID")
        assert await check("GET", f"/v2/instances?api_key={reader['key']}", None) == (200, "VALID")
        assert await check("DELETE", "/v2/instances/i-1", admin["key"]) == (200, "VALID")
        # Refused: the attacks, whatever headers or query the client adds.
        assert await check("DELETE", "/v2/instances/i-1", reader["key"]) == (403, "SCOPE_DENIED")
        assert await check(
            "DELETE", "/v2/instances/i-1", reader["key"], **{"X-Required-Scope": "compute:read"}
        ) == (403, "SCOPE_DENIED")
        for spoofed in (
            {"X-Original-URL": "http://h/v2/instances", "X-Original-Method": "GET"},
            {"X-Original-URI": "/v2/instances"},
            {"X-Forwarded-Uri": "/v2/instances", "X-Forwarded-Method": "GET"},
        ):
            assert await check("DELETE", "/v2/instances/i-1", reader["key"], **spoofed) == (
                403,
                "SCOPE_DENIED",
            )
        assert await check("DELETE", "/v2/instances/i-1?scope=compute:read", reader["key"]) == (
            403,
            "SCOPE_DENIED",
        )
        assert await check("GET", "/v2/instances?environment=dev", dev["key"]) == (403, "ENV_MISMATCH")
        assert await check("GET", "/v2/instances", dev["key"], **{"X-Required-Environment": "dev"}) == (
            403,
            "ENV_MISMATCH",
        )
        assert await check("PUT", "/v2/instances/i-1?scope=compute:read", admin["key"]) == (403, "NO_ROUTE")
        for trick in ("/v2/instances/../instances/i-1", "/v2/instances%2Fi-1", "//v2/instances/i-1"):
            assert await check("DELETE", trick, admin["key"]) == (403, "NO_ROUTE"), trick
        assert (await check("GET", "/v2/instances", None))[0] == 401
        # Without the prefix's original path (a misconfigured filter), nothing is covered.
        assert await check("GET", "", reader["key"]) == (403, "NO_ROUTE")
