"""The issuer's /openapi.json is true (issue 18, finding 9), against the real issuer and validator.

Valid OpenAPI 3.1; scopes, environments and plans as enums, and every scope of the enum creates a key;
strict types (no `0` for `false`, no `172.0` for an integer, no "1" for a number, no number for a
date-time); a NaN or Infinity named for what it is; every status documented with the error body; a
body in another content type is 415, an undecodable one 422; a 405 names every method of the path;
the links of the stateful fuzz phase point at real operations.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.scopes import ALL_SCOPES
from tests.support.openapi import assert_answer_documented, assert_valid_openapi_31

from .stack import Stack, running_stack, stack_settings

CREATE = {"name": "contract", "environment": "dev", "scopes": ["compute:read"]}


@pytest.fixture(scope="module")
async def stack(
    nats_server: Any, make_database_url: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        nats_server.url,
        tmp_path_factory.mktemp("openapi"),
        make_database_url("issuer", "sqlite"),
        make_database_url("validator", "sqlite"),
        f"oa-{uuid.uuid4().hex[:8]}",
    )
    async with running_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def document(stack: Stack) -> dict[str, Any]:
    response = await stack.issuer.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_valid_openapi_31_with_enums(document: dict[str, Any]) -> None:
    assert_valid_openapi_31(document)
    create = document["components"]["schemas"]["CreateKey"]["properties"]
    assert create["scopes"]["items"]["enum"] == list(ALL_SCOPES)
    assert create["environment"]["enum"] == ["prod", "stg", "dev"]
    assert create["plan"]["anyOf"][0]["enum"] == ["starter", "professional", "enterprise"]
    assert create["auto_renew"]["type"] == "boolean"
    assert create["expires_in_days"]["anyOf"][0]["type"] == "integer"
    key = document["components"]["schemas"]["KeyObject"]["properties"]
    assert key["scopes"]["items"]["enum"] == list(ALL_SCOPES)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_status_is_documented_with_the_error_body(document: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, method, operation in operations(document):
        responses = operation["responses"]
        expected = {"413", "431", "503"} | (
            {"400", "401", "403", "429"} if path != "/v2/secret-scanning/github" else {"401"}
        )
        if "requestBody" in operation and path != "/v2/secret-scanning/github":
            expected |= {"415", "422"}
        if "{key_id}" in path or path.endswith("/rotate"):
            expected |= {"404"}
        assert expected <= set(responses), (method, path, expected - set(responses))
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == error, (method, path, status)
    assert "HTTPValidationError" not in str(document)


def test_links_point_at_real_operations(document: dict[str, Any]) -> None:
    ids = {op["operationId"] for _, _, op in operations(document)}
    links = document["paths"]["/v2/keys"]["post"]["responses"]["201"]["links"]
    assert {"GetKey", "UpdateKey", "RevokeKey", "DeleteKey", "RenewKey", "RotateKey"} <= set(links)
    for link in links.values():
        assert link["operationId"] in ids


async def test_every_documented_scope_creates_a_key(stack: Stack, document: dict[str, Any]) -> None:
    for scope in ALL_SCOPES:
        response = await stack.issuer.post(
            "/v2/keys", json={**CREATE, "scopes": [scope]}, headers=stack.auth()
        )
        assert response.status_code == 201, (scope, response.text)
        assert_answer_documented(document, "/v2/keys", "POST", response)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"auto_renew": 0}, "auto_renew"),
        ({"auto_renew": "true"}, "auto_renew"),
        ({"expires_in_days": 172.0}, "expires_in_days"),
        ({"expires_in_days": "30"}, "expires_in_days"),
        ({"expires_in_days": True}, "expires_in_days"),
        ({"expires_at": 1893456000}, "expires_at"),
        (
            {"plan": "enterprise", "rate_limit": {"requests_per_minute": 5000.0}},
            "rate_limit.requests_per_minute",
        ),
        (
            {"plan": "enterprise", "rate_limit": {"requests_per_minute": "5000"}},
            "rate_limit.requests_per_minute",
        ),
    ],
)
async def test_create_takes_strict_types(
    stack: Stack, document: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    response = await stack.issuer.post("/v2/keys", json={**CREATE, **change}, headers=stack.auth())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert_answer_documented(document, "/v2/keys", "POST", response)


async def test_json_bodies_still_take_what_the_document_promises(stack: Stack) -> None:
    in_30_days = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    created = await stack.issuer.post(
        "/v2/keys",
        json={**CREATE, "expires_at": in_30_days, "auto_renew": True, "plan": "starter"},
        headers=stack.auth(),
    )
    assert created.status_code == 201, created.text
    for hours in (1, 1.5):  # a JSON integer is a number too
        key = await stack.create_key(**CREATE, expires_in_days=30)
        rotated = await stack.issuer.post(
            "/v2/keys/rotate", json={"key_id": key["id"], "grace_period_hours": hours}, headers=stack.auth()
        )
        assert rotated.status_code == 201, rotated.text


@pytest.mark.parametrize(
    ("raw", "message"), [(b"NaN", "finite"), (b"Infinity", "finite"), (b'"1"', "number")]
)
async def test_rotate_grace_must_be_a_finite_number(stack: Stack, raw: bytes, message: str) -> None:
    key = await stack.create_key(**CREATE)
    response = await stack.issuer.post(
        "/v2/keys/rotate",
        content=b'{"key_id": "%s", "grace_period_hours": %s}' % (key["id"].encode(), raw),
        headers={**stack.auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "grace_period_hours" and message in error["message"]
    assert "168" not in error["message"]


@pytest.mark.parametrize(
    "body",
    [b'{"name": "\xff\xfe"}', b"\xc3\x28", b"[" * 30_000 + b"]" * 30_000],
    ids=["invalid-utf8-in-string", "invalid-utf8", "nested-too-deep"],
)
async def test_an_undecodable_body_is_a_documented_422(
    stack: Stack, document: dict[str, Any], body: bytes
) -> None:
    response = await stack.issuer.post(
        "/v2/keys", content=body, headers={**stack.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "body"
    assert_answer_documented(document, "/v2/keys", "POST", response)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_is_415(
    stack: Stack, document: dict[str, Any], content_type: str | None
) -> None:
    headers = {**stack.auth(), **({"Content-Type": content_type} if content_type else {})}
    before = (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()["data"]
    response = await stack.issuer.post("/v2/keys", content=b'{"name": "x"}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert_answer_documented(document, "/v2/keys", "POST", response)
    after = (await stack.issuer.get("/v2/keys", headers=stack.auth(), params={"limit": 100})).json()["data"]
    assert len(after) == len(before)


async def test_json_with_parameters_and_empty_optional_bodies_are_taken(stack: Stack) -> None:
    created = await stack.issuer.post(
        "/v2/keys",
        content=b'{"name": "cs", "environment": "dev", "scopes": ["compute:read"]}',
        headers={**stack.auth(), "Content-Type": "application/json; charset=utf-8"},
    )
    assert created.status_code == 201, created.text
    # An optional body left out, whatever Content-Type a client adds: no 415.
    revoked = await stack.issuer.post(
        f"/v2/keys/{created.json()['id']}/revoke", headers={**stack.auth(), "Content-Type": "text/plain"}
    )
    assert revoked.status_code == 200, revoked.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v2/keys/key_x", "DELETE, GET, PATCH"),
        ("HEAD", "/v2/keys/key_x", "DELETE, GET, PATCH"),
        ("PUT", "/v2/keys", "GET, POST"),
        ("GET", "/v2/keys/key_x/revoke", "POST"),
    ],
)
async def test_405_names_every_method_of_the_path(stack: Stack, method: str, path: str, allowed: str) -> None:
    response = await stack.issuer.request(method, path, headers=stack.auth())
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    if method != "HEAD":
        assert response.json()["error"]["code"] == "method_not_allowed"
