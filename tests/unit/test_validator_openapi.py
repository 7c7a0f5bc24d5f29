"""The validator's own /openapi.json (services/validator/openapi.py): valid OpenAPI 3.1, served as it is,
and every answer of the forward-auth app (each code, the ambiguous-credentials 400, the probes) matches
the status, content type, body and headers it documents."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.validator.http import ForwardAuthApp
from services.validator.openapi import BODY, DOCUMENT, VERIFY_PATH
from services.validator.routes import RouteTable
from shared.validation import HTTP_STATUS, Code
from tests.support.factories import VALID_ANSWER as VALID
from tests.support.openapi import assert_answer_documented, assert_valid_openapi_31


def client(reply: dict[str, Any], *, ready: bool = True) -> httpx.AsyncClient:
    async def validate(key: Any, scope: Any, ip: Any, environment: Any) -> dict[str, Any]:
        return dict(reply)

    app = ForwardAuthApp(
        validate, CollectorRegistry(), trusted_proxies=[], ready=lambda: ready, routes=RouteTable([])
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v")


def test_the_document_is_valid_openapi_31() -> None:
    assert_valid_openapi_31(DOCUMENT)
    assert set(DOCUMENT["paths"]) == {VERIFY_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json"}
    statuses = set(DOCUMENT["paths"][VERIFY_PATH]["get"]["responses"])
    assert statuses == {"200", "400", "401", "403", "429", "431", "503"}
    parameters = {p["name"] for p in DOCUMENT["paths"][VERIFY_PATH]["get"]["parameters"]}
    assert {"scope", "environment", "rate_limit_status", "api_key", "Authorization"} <= parameters


async def test_it_is_served_at_openapi_json() -> None:
    async with client(VALID) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200 and response.content == BODY
    assert orjson.loads(response.content) == DOCUMENT
    assert_answer_documented(DOCUMENT, "/openapi.json", "GET", response)


@pytest.mark.parametrize("code", list(Code))
async def test_every_validation_code_is_answered_as_documented(code: Code) -> None:
    reply: dict[str, Any] = VALID if code == Code.VALID else {"valid": False, "code": code}
    if code == Code.RATE_LIMITED:
        reply = {**reply, "retry_after_s": 2.5, "rate_limit": {"limit": 60, "remaining": 0, "reset_s": 2.5}}
    async with client(reply) as http:
        response = await http.get(
            VERIFY_PATH, params={"scope": "compute:read"}, headers={"Authorization": "Bearer k"}
        )
    assert response.status_code == HTTP_STATUS[code]
    assert_answer_documented(DOCUMENT, VERIFY_PATH, "GET", response)


async def test_rate_limited_as_403_and_ambiguous_credentials_are_documented() -> None:
    limited = {"valid": False, "code": Code.RATE_LIMITED, "retry_after_s": 1.0}
    async with client(limited) as http:
        as_403 = await http.get(VERIFY_PATH, params={"scope": "compute:read", "rate_limit_status": "403"})
        assert as_403.status_code == 403
        assert_answer_documented(DOCUMENT, VERIFY_PATH, "GET", as_403)
    async with client(VALID) as http:
        two = await http.get(
            VERIFY_PATH,
            params={"scope": "compute:read", "api_key": "one"},
            headers={"Authorization": "Bearer other"},
        )
    assert two.status_code == 400
    assert_answer_documented(DOCUMENT, VERIFY_PATH, "GET", two)


@pytest.mark.parametrize("ready", [True, False])
async def test_probes_and_metrics_are_answered_as_documented(ready: bool) -> None:
    async with client(VALID, ready=ready) as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            response = await http.get(path)
            assert_answer_documented(DOCUMENT, path, "GET", response)
