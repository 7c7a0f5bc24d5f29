"""The OpenAPI 3.1 document of the validator's HTTP port (forward-auth, probes, metrics), built once.

http.py is a bare ASGI app with no framework to generate a document, so it is written here, as data,
next to the answers it describes (http.py, shared/validation.py); tests/unit/test_validator_openapi.py
checks that it is valid OpenAPI 3.1 and that every answer of the app matches it, and `make test-fuzz`
runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from shared.validation import MESSAGES, Code

VERIFY_PATH: Final = "/v2/auth/verify"

_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_ANSWER = {"$ref": "#/components/schemas/VerifyAnswer"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


def _codes(*codes: Code) -> dict[str, Any]:
    return {"type": "string", "enum": [str(code) for code in codes]}


_CNX_CODE = _header("the validation code of the answer (the `code` of the body)")
_RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": _header("requests per minute of the key's plan", {"type": "integer", "minimum": 0}),
    "RateLimit-Remaining": _header("requests left in the bucket now", {"type": "integer"}),
    "RateLimit-Reset": _header("seconds until the bucket is full again", {"type": "integer", "minimum": 0}),
}
_TRANSPORT = {
    "431": _json(_ERROR, "The request head is over the limit (CNX_HTTP_MAX_HEADER_BYTES, 16 KB by default)."),
    "503": _json(_ERROR, "Too many connections to this server (CNX_HTTP_MAX_CONNECTIONS); retry shortly."),
}


def _header_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _query_parameter(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_VERIFY = {
    "summary": "Forward-auth: may this request through?",
    "description": (
        "For ingress controllers (nginx `auth_request` / ingress-nginx `auth-url`, Traefik ForwardAuth, "
        "Envoy ext_authz HTTP). What the request needs comes only from the operator: the route table "
        "(`CNX_ROUTE_SCOPES`) for the original method and path (read from the configured proxy's headers, "
        "`CNX_FORWARD_AUTH_PROXY`), and this URL's own `scope` / `environment` parameters. Nothing covers "
        "the request: 403 `NO_ROUTE`, without a key lookup. The key: `Authorization: Bearer` or `api_key`; "
        "two that disagree are 400. Any method is answered alike (Envoy forwards the original one)."
    ),
    "operationId": "verify",
    "tags": ["forward-auth"],
    "parameters": [
        _query_parameter(
            "scope",
            "a scope every request through this URL needs (repeatable, or several separated by spaces or "
            "commas); an unknown scope is held by no key",
        ),
        _query_parameter("environment", "the environment the key must belong to (`prod`, `stg`, `dev`)"),
        _query_parameter(
            "rate_limit_status",
            "`403`: answer a rate-limited request with 403 (and `X-Cnx-Code: RATE_LIMITED`) instead of "
            "429, for nginx `auth_request`, which turns a 429 into a 500",
        ),
        _query_parameter("api_key", "the key, for a caller that cannot send a header (a direct caller)"),
        _header_parameter("Authorization", "`Bearer <key>`"),
        _header_parameter("X-Forwarded-For", "the client address, believed only from CNX_TRUSTED_PROXIES"),
        _header_parameter("X-Original-Method", "the original method (nginx, ingress-nginx)"),
        _header_parameter("X-Original-URL", "the original URL (nginx, ingress-nginx)"),
        _header_parameter("X-Forwarded-Method", "the original method (Traefik)"),
        _header_parameter("X-Forwarded-Uri", "the original path and query (Traefik)"),
        _header_parameter("X-Required-Scope", "one more scope the request needs (may only add one)"),
        _header_parameter("X-Required-Environment", "one more environment requirement (may only add one)"),
    ],
    "responses": {
        "200": _json(
            {
                "allOf": [
                    _ANSWER,
                    {"properties": {"valid": {"const": True}, "code": _codes(Code.VALID)}},
                ]
            },
            "The key is valid for this request.",
            {
                "X-Key-Id": _header("the key's id"),
                "X-Account-Id": _header("the key's account"),
                "X-Key-Scopes": _header("the key's scopes, separated by spaces"),
                "X-Key-Environment": _header("the key's environment"),
                "X-Cnx-Code": _CNX_CODE,
                **_RATE_LIMIT_HEADERS,
            },
        ),
        "400": _json(
            _ERROR,
            "Two credentials that disagree (two Authorization headers, or a header and an `api_key`).",
        ),
        "401": _json(
            {
                "allOf": [
                    _ANSWER,
                    {
                        "properties": {
                            "valid": {"const": False},
                            "code": _codes(
                                Code.MISSING, Code.MALFORMED, Code.NOT_FOUND, Code.EXPIRED, Code.REVOKED
                            ),
                        }
                    },
                ]
            },
            "No key, or one that is malformed, unknown, expired or revoked.",
            {
                "WWW-Authenticate": _header('`Bearer error="invalid_token"`'),
                "X-Cnx-Code": _CNX_CODE,
            },
        ),
        "403": _json(
            {
                "allOf": [
                    _ANSWER,
                    {
                        "properties": {
                            "valid": {"const": False},
                            "code": _codes(
                                Code.IP_NOT_ALLOWED,
                                Code.SCOPE_DENIED,
                                Code.ENV_MISMATCH,
                                Code.NO_ROUTE,
                                Code.RATE_LIMITED,
                            ),
                        }
                    },
                ]
            },
            "The key may not be used for this request (scope, address, environment), no route covers it, "
            "or (with `rate_limit_status=403`) the key is over its rate limit.",
            {"X-Cnx-Code": _CNX_CODE, "Retry-After": _header("seconds", {"type": "integer", "minimum": 1})},
        ),
        "429": _json(
            {
                "allOf": [
                    _ANSWER,
                    {"properties": {"valid": {"const": False}, "code": _codes(Code.RATE_LIMITED)}},
                ]
            },
            "Over the key's rate limit (or too many failed attempts from this address): retry later.",
            {
                "Retry-After": _header("seconds to wait", {"type": "integer", "minimum": 1}),
                "X-Cnx-Code": _CNX_CODE,
                **_RATE_LIMIT_HEADERS,
            },
        ),
        **_TRANSPORT,
    },
}


def _probe(summary: str, responses: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "tags": ["operations"],
            "responses": {**_TRANSPORT, **responses},
        }
    }


DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "CloudNexus Keys: validator (forward-auth)",
        "version": "2.0",
        "description": "Forward-auth for ingress controllers, probes and metrics of a validator replica.",
    },
    "paths": {
        VERIFY_PATH: {"get": _VERIFY},
        "/healthz": _probe(
            "The process answers",
            {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"status": {"const": "ok"}},
                        "required": ["status"],
                    },
                    "Alive.",
                )
            },
            "healthz",
        ),
        "/readyz": _probe(
            "Ready to answer: hydrated, NATS connected, not draining",
            {
                "200": _json({"$ref": "#/components/schemas/Readiness"}, "Ready: send traffic."),
                "503": _json(
                    {"anyOf": [{"$ref": "#/components/schemas/Readiness"}, _ERROR]},
                    "Not ready (starting, NATS away, draining), or too many connections.",
                ),
            },
            "readyz",
        ),
        "/metrics": _probe(
            "Prometheus metrics",
            {
                "200": {
                    "description": "The metrics in Prometheus' text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            "metrics",
        ),
        "/openapi.json": _probe(
            "This document",
            {"200": _json({"type": "object"}, "The OpenAPI 3.1 document of this port.")},
            "openapi",
        ),
    },
    "components": {
        "schemas": {
            "VerifyAnswer": {
                "type": "object",
                "properties": {
                    "valid": {"type": "boolean"},
                    "code": {"type": "string", "enum": [str(code) for code in Code]},
                    "message": {"type": "string", "enum": sorted(set(MESSAGES.values()))},
                    "retry_after_s": {"type": "number", "minimum": 0},
                },
                "required": ["valid", "code", "message"],
                "additionalProperties": False,
            },
            "ErrorResponse": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "field": {"type": "string"},
                        },
                        "required": ["code", "message"],
                    }
                },
                "required": ["error"],
            },
            "Readiness": {
                "type": "object",
                "properties": {"ready": {"type": "boolean"}},
                "required": ["ready"],
            },
        }
    },
}

BODY: Final[bytes] = orjson.dumps(DOCUMENT)
