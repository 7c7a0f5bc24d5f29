"""`POST /v2/secret-scanning/github`: GitHub's secret scanning partner endpoint.

GitHub calls it, so it takes no API key; the signature is the only credential. Nothing about the body
is read or looked up before the signature verifies, so an unsigned caller learns nothing (every refusal
is the same 401) and can revoke nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import TypeAdapter

from shared.errors import Unauthorized, Unavailable
from shared.settings import Settings

from . import leaks
from .api import origin_of
from .schemas import ErrorResponse
from .secret_scanning import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    MAX_KEY_ID_CHARS,
    MAX_MATCHES,
    MAX_SIGNATURE_CHARS,
    GitHubKeySet,
    GitHubMatch,
    KeySetError,
    TokenLabel,
    decode_signature,
    key_source,
    parse_report,
    signature_valid,
)
from .service import IssuerService

REFUSED = "the report is not signed by a GitHub secret scanning key"
_LABELS: TypeAdapter[list[TokenLabel]] = TypeAdapter(list[TokenLabel])


def key_set_from(settings: Settings) -> GitHubKeySet | None:
    """The key set `CNX_SECRET_SCANNING_KEYS` names, or None when it is not set. Raises ValueError on a
    location that may not be used (an http URL outside a local deployment): refused at start."""
    if not settings.secret_scanning_keys.strip():
        return None
    return GitHubKeySet(
        key_source(settings.secret_scanning_keys, settings.deployment),
        min_refresh=settings.secret_scanning_keys_min_refresh.total_seconds(),
        max_age=max(timedelta(hours=1), settings.secret_scanning_keys_min_refresh).total_seconds(),
    )


def install(app: FastAPI, settings: Settings) -> None:
    app.state.github_keys = key_set_from(settings)
    app.include_router(router)


async def get_key_set(request: Request) -> GitHubKeySet:
    keys: GitHubKeySet | None = request.app.state.github_keys
    if keys is None:
        raise Unavailable("secret scanning is not configured (CNX_SECRET_SCANNING_KEYS)")
    return keys


async def get_service(request: Request) -> IssuerService:
    return request.app.state.service


async def verified_body(request: Request, keys: Annotated[GitHubKeySet, Depends(get_key_set)]) -> bytes:
    """The raw body, once its signature verifies against GitHub's key it names; else 401."""
    key_id = request.headers.get(HEADER_KEY_ID, "")
    signature = decode_signature(request.headers.get(HEADER_SIGNATURE))
    if not key_id or len(key_id) > MAX_KEY_ID_CHARS or signature is None:
        raise Unauthorized(REFUSED)
    try:
        key = await keys.key(key_id)
    except KeySetError as exc:
        # No key set was ever read (the URL is down): GitHub retries a 503 later.
        raise Unavailable("GitHub's secret scanning keys cannot be read; retry later") from exc
    body = await request.body()
    if key is None or not signature_valid(key, signature, body):
        raise Unauthorized(REFUSED)
    return body


router = APIRouter(tags=["secret scanning"])

# The body is read raw (the signature covers its exact bytes), so FastAPI cannot infer what it documents.
# GitHubMatch has no nested models, so its schema inlines whole (no `$defs` to resolve).
_REPORT_SCHEMA = {"type": "array", "maxItems": MAX_MATCHES, "items": GitHubMatch.model_json_schema()}
OPENAPI_EXTRA = {
    "parameters": [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string", "maxLength": limit}}
        for name, limit in (
            ("Github-Public-Key-Identifier", MAX_KEY_ID_CHARS),
            ("Github-Public-Key-Signature", MAX_SIGNATURE_CHARS),
        )
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": _REPORT_SCHEMA}}},
}


@router.post(
    "/v2/secret-scanning/github",
    response_model=list[TokenLabel],
    responses={code: {"model": ErrorResponse} for code in (401, 413, 422, 503)},
    openapi_extra=OPENAPI_EXTRA,
)
async def github_report(
    body: Annotated[bytes, Depends(verified_body)],
    service: Annotated[IssuerService, Depends(get_service)],
    request: Request,
) -> Response:
    """GitHub secret scanning partner endpoint. The body is GitHub's JSON array of matches `[{token, type,
    url, source}]` (at most 1,000), signed with `Github-Public-Key-Identifier` and
    `Github-Public-Key-Signature`. Each live key named is revoked at once and its owner notified with
    where it leaked; the answer labels every token `true_positive` (one of our keys, live or not) or
    `false_positive`. An unsigned or wrongly signed report is 401 and changes nothing."""
    labels = await leaks.report_matches(service, parse_report(body), origin_of(request))
    # The answer echoes tokens back to GitHub (its feedback format): never to be cached anywhere.
    return Response(
        _LABELS.dump_json(labels), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
