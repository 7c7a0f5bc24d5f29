"""Checks of an OpenAPI 3.1 document and of answers against it, for the services' contract tests."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs

# The OpenAPI 3.1 meta-schema, as schemathesis (a dev dependency, pinned) carries it.
from schemathesis.specs.openapi.definitions import OPENAPI_31


def assert_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    errors = [str(error) for error in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(document)]
    assert not errors, errors[:5]


def assert_answer_documented(
    document: dict[str, Any], path: str, method: str, response: httpx.Response
) -> None:
    """The answer's status, content type, body and (documented) headers are what the document says."""
    operation = document["paths"][path][method.lower()]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method} {path}: {response.status_code} is not documented"
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    content = documented.get("content", {})
    assert media_type in content, f"{method} {path} {response.status_code}: {media_type} not documented"
    if media_type == "application/json":
        schema = {**content[media_type]["schema"], "components": document.get("components", {})}
        errors = [str(e) for e in jsonschema_rs.Draft202012Validator(schema).iter_errors(response.json())]
        assert not errors, (method, path, response.status_code, response.text, errors)
    for name in response.headers:
        if name.lower().startswith(("x-key-", "x-account", "ratelimit-", "retry-after", "www-authenticate")):
            headers = {h.lower() for h in documented.get("headers", {})}
            assert name.lower() in headers, (
                f"{method} {path} {response.status_code}: header {name} undocumented"
            )
