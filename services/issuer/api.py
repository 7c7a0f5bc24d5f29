"""Management REST API routes: parse, call one use case, shape the answer. Guarded by `admin:*` scopes.

Every call is authenticated from the `Authorization` header alone, from the client address
CNX_TRUSTED_PROXIES lets us believe (the caller key's IP allowlist applies), and then takes a token of
the caller key's management bucket (CNX_MANAGEMENT_RATE_LIMIT). A call refused with 401 or 403 is
recorded in the audit trail as `auth.denied` (`get_principal`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from nats.errors import Error as NatsError

from shared.client import ValidationClient, ValidatorUnavailable
from shared.client_address import client_address
from shared.credentials import presented_key
from shared.errors import DomainError, Unauthorized, Unavailable
from shared.http import require_json_body
from shared.validation import ValidationResult

from .audit import ACTIONS, AuditEntry, Origin
from .domain import Key
from .schemas import (
    AuditList,
    CreatedKey,
    CreateKey,
    DateTimeText,
    ErrorResponse,
    KeyList,
    KeyObject,
    PreviousKey,
    RenewKey,
    RevokeKey,
    RotatedKey,
    RotateKey,
    UpdateKey,
    VerifyKey,
    WebhookSecret,
)
from .service import IssuerService, Principal

log = logging.getLogger("issuer.api")

# The statuses every management call can answer (each with the JSON error body): 400 two credentials,
# 401/403 the caller key, 413 a body over CNX_MAX_BODY_BYTES (any method), 429 the management rate limit
# (with Retry-After), 503 the store or NATS away. 431 and 503 of the HTTP layer are added to every
# operation by shared.http.document_transport_errors. Each route adds its own below.
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 429, 503)
}
ERRORS[429]["headers"] = _RETRY_AFTER


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error responses a route adds to ERRORS: 404 no such key, 409 not in a state for it, 415 a body
    that is not JSON, 422 an invalid body or query."""
    return {code: {"model": ErrorResponse} for code in codes}


def _operation_id(name: str, path: str, method: str) -> str:
    # FastAPI's own generated operationId (generate_unique_id), for the links below.
    return re.sub(r"\W", "_", f"{name}{path}") + f"_{method}"


def _key_links(source: str) -> dict[str, Any]:
    """OpenAPI links from an answer holding a key object at `source` to what can be done with it: the
    stateful phase of `make test-fuzz` follows them (create, then get/patch/revoke/renew/rotate)."""
    key_id = {"key_id": f"$response.body#{source}/id"}
    return {
        "GetKey": {"operationId": _operation_id("get_key", "/v2/keys/{key_id}", "get"), "parameters": key_id},
        "UpdateKey": {
            "operationId": _operation_id("update_key", "/v2/keys/{key_id}", "patch"),
            "parameters": key_id,
        },
        "RevokeKey": {
            "operationId": _operation_id("revoke_key", "/v2/keys/{key_id}/revoke", "post"),
            "parameters": key_id,
        },
        "DeleteKey": {
            "operationId": _operation_id("delete_key", "/v2/keys/{key_id}", "delete"),
            "parameters": key_id,
        },
        "RenewKey": {
            "operationId": _operation_id("renew_key", "/v2/keys/{key_id}/renew", "post"),
            "parameters": key_id,
        },
        "RotateKey": {
            "operationId": _operation_id("rotate_key", "/v2/keys/rotate", "post"),
            "requestBody": {"key_id": f"$response.body#{source}/id"},
        },
    }


def created(links: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {201: {"description": "Created", "links": links}}


def ok(links: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "OK", "links": links}}


NO_STORE = {"Cache-Control": "no-store"}
# The scope of the validator probe in `verify_key`: no key holds it (nor can: it is no scope at all),
# so the probe is never VALID and never takes a token of the key's own rate limit.
_PROBE_SCOPE = "cnx:verify-probe"


# async: FastAPI runs a plain `def` dependency in its thread pool, a thread round trip per request.
async def get_service(request: Request) -> IssuerService:
    return request.app.state.service


Service = Annotated[IssuerService, Depends(get_service)]


class BadRequest(DomainError):
    status = 400
    code = "bad_request"


class ManagementRateLimited(HTTPException):
    code = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            429,
            "too many management API calls with this key; retry later",
            headers={"Retry-After": str(seconds)},
        )


def management_token(request: Request) -> str:
    """The key, from `Authorization: Bearer` only. A key in the URL ends up in proxy and access logs,
    so `?api_key=` is refused here (the validator and the demo API still take it, as documented)."""
    if "api_key" in request.query_params:
        raise Unauthorized(
            "the management API takes the key only in the Authorization header "
            "(Authorization: Bearer <key>), never in the api_key query parameter"
        )
    # Two Authorization headers: 400, decided where every service decides it (shared/credentials.py).
    key = presented_key(request.scope["headers"], query_allowed=False)
    if key is None:
        raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
    scheme, _, value = request.headers["authorization"].strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("send the key as Authorization: Bearer <key>")
    return key


def caller_address(request: Request) -> str | None:
    """The client address: the peer's, or X-Forwarded-For's when the peer is one of our proxies.
    (uvicorn's own proxy-header handling is off, see shared.httpserver.serve_http, so the peer here is
    the connection's.)"""
    peer = request.client.host if request.client else None
    forwarded = ",".join(request.headers.getlist("x-forwarded-for")) or None
    return client_address(peer, forwarded, request.app.state.trusted_proxies)


def origin_of(request: Request) -> Origin:
    """What the audit trail records of where a call came from: the address as the trusted-proxy rules
    resolve it, the user agent (cleaned, bounded) and the route template (not the path a client wrote)."""
    route = request.scope.get("route")
    return Origin.of(
        caller_address(request),
        request.headers.get("user-agent"),
        request.method,
        getattr(route, "path", None),
    )


async def get_principal(request: Request, service: Service) -> AsyncIterator[Principal]:
    """The caller, authenticated. A 401 or 403, here or from the call itself, is recorded as
    `auth.denied` (a dependency with `yield` sees the exceptions of the route it guards)."""
    origin = origin_of(request)
    try:
        token = management_token(request)
    except Unauthorized as exc:
        await service.record_denial(exc, origin)
        raise
    principal = await service.authenticate(token, caller_address(request), origin=origin)
    wait = request.app.state.management_limiter.take(principal.key_id, time.monotonic())
    if wait > 0:
        raise ManagementRateLimited(wait)
    try:
        yield principal
    except DomainError as exc:
        if exc.status in (401, 403):
            try:
                await service.record_denial(
                    exc, origin, account_id=principal.account_id, key_id=principal.key_id
                )
            except Exception as failure:  # the refusal stands whether or not it could be recorded
                log.error("auth.denied not recorded (%s)", type(failure).__name__)
        raise


Caller = Annotated[Principal, Depends(get_principal)]


# The API's key object is `KeyObject`'s fields in its order; four are not the stored value as it is.
_KEY_OBJECT_FIELDS = tuple(KeyObject.model_fields)


def key_object(service: IssuerService, key: Key) -> dict[str, Any]:
    """A key object as `KeyObject` would serialise it (same fields, order and values), built directly:
    validating and serialising 100 `KeyObject`s through the response model took longer than reading them."""
    rate_limit = key.rate_limit
    notify = service.notify_of(key)
    computed: dict[str, Any] = {
        "rate_limit": (
            {"requests_per_minute": rate_limit["requests_per_minute"], "burst": rate_limit.get("burst")}
            if rate_limit
            else None
        ),
        "status": service.status_of(key),
        "notify": notify.model_dump(mode="json") if notify else None,
        "metadata": key.key_metadata,
    }
    return {name: computed[name] if name in computed else getattr(key, name) for name in _KEY_OBJECT_FIELDS}


def key_list_body(service: IssuerService, keys: list[Key], next_cursor: str | None) -> bytes:
    """The JSON of a `KeyList`, encoded with orjson (`Z` for UTC, as pydantic writes it)."""
    body = {"data": [key_object(service, key) for key in keys], "next_cursor": next_cursor}
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


# require_json_body: a body in anything but JSON is 415 (shared/http.py), before any other check.
# HTTPBearer only documents the scheme in the OpenAPI document (auto_error off): `get_principal` decides.
router = APIRouter(
    prefix="/v2",
    responses=ERRORS,
    dependencies=[Depends(require_json_body), Security(HTTPBearer(auto_error=False, scheme_name="bearer"))],
)


@router.post(
    "/keys",
    status_code=201,
    response_model=CreatedKey,
    tags=["keys"],
    responses={**created(_key_links("")), **errors(409, 415, 422)},
)
async def create_key(
    body: CreateKey, caller: Caller, service: Service, response: Response
) -> dict[str, object]:
    """Mint a key. The secret is in the answer this once; only its HMAC digest is kept."""
    response.headers.update(NO_STORE)
    key, secret = await service.create_key(caller, body)
    return {**key_object(service, key), "key": secret}


@router.get("/keys", response_model=KeyList, tags=["keys"], responses=errors(422))
async def list_keys(
    caller: Caller,
    service: Service,
    status: Annotated[Literal["active", "rotating", "expired", "revoked"] | None, Query()] = None,
    environment: Annotated[Literal["prod", "stg", "dev"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Keys of the caller's account, newest first; pass `next_cursor` back as `cursor` for the next page
    (null on the last page). `status` is the status the key has now, even before its scheduled event."""
    keys, next_cursor = await service.list_keys(
        caller, status=status, environment=environment, limit=limit, cursor=cursor
    )
    # `response_model` still documents the body; a Response is sent as it is, unvalidated.
    return Response(key_list_body(service, keys, next_cursor), media_type="application/json")


@router.post(
    "/keys/rotate",
    status_code=201,
    response_model=RotatedKey,
    tags=["keys"],
    responses={**created(_key_links("")), **errors(404, 409, 415, 422)},
)
async def rotate_key(
    body: RotateKey, caller: Caller, service: Service, response: Response
) -> dict[str, object]:
    """A new key with the same settings; the old one keeps working until `previous.grace_until`."""
    response.headers.update(NO_STORE)
    new, secret, old = await service.rotate_key(caller, body.key_id, body.grace_period_hours)
    # The key just rotated is "rotating" (or "revoked" when its grace is 0) and has its grace_until.
    previous = PreviousKey(id=old.id, status=service.status_of(old), grace_until=old.grace_until)  # type: ignore[arg-type]  # as above
    return {**key_object(service, new), "key": secret, "previous": previous}


async def verify_with(client: ValidationClient, body: VerifyKey, address: str | None) -> ValidationResult:
    """The validator's answer for `body.key` used from `body.ip` (default: the caller's address).

    The validator's failed-auth throttle counts the `ip` of a request, so a body address must never
    reach it with a key that may be a guess: a caller would spread its guesses over made-up addresses,
    or run a victim's address into the throttle. When `body.ip` is another address, a probe with the
    caller's own address goes first (a scope no key holds: never VALID, so it takes no token of the
    key's rate limit); only a key the probe found is then asked about with the body's address."""
    ip = body.ip or address
    if ip != address:
        probe = await client.validate(body.key, scope=_PROBE_SCOPE, ip=address)
        if probe.key_id is None:  # missing, malformed or unknown (counted on the caller), or throttled
            return probe
    return await client.validate(body.key, scope=body.scope, ip=ip, environment=body.environment)


@router.post("/keys/verify", response_model=ValidationResult, tags=["validation"], responses=errors(415, 422))
async def verify_key(body: VerifyKey, caller: Caller, service: Service, request: Request) -> ValidationResult:
    """Validate a key the way the validator does (answered by the validator over NATS). Needs
    `admin:read`; `ip` defaults to the caller's own address."""
    service.authorize_verify(caller)
    client = request.app.state.validation_client
    if client is None:
        raise Unavailable("the validator is not reachable")
    try:
        return await verify_with(client, body, caller_address(request))
    except (TimeoutError, ValidatorUnavailable, NatsError) as exc:
        # NATS down or no validator: a clear 503 the caller can retry, never a 500.
        raise Unavailable("the validator is not reachable; retry shortly") from exc


@router.get("/keys/{key_id}", response_model=KeyObject, tags=["keys"], responses=errors(404, 422))
async def get_key(key_id: str, caller: Caller, service: Service) -> dict[str, object]:
    return key_object(service, await service.get_key(caller, key_id))


@router.patch("/keys/{key_id}", response_model=KeyObject, tags=["keys"], responses=errors(404, 409, 415, 422))
async def update_key(key_id: str, body: UpdateKey, caller: Caller, service: Service) -> dict[str, object]:
    return key_object(service, await service.update_key(caller, key_id, body))


@router.post(
    "/keys/{key_id}/revoke", response_model=KeyObject, tags=["keys"], responses=errors(404, 409, 415, 422)
)
async def revoke_key(
    key_id: str, caller: Caller, service: Service, body: RevokeKey | None = None
) -> dict[str, object]:
    return key_object(service, await service.revoke_key(caller, key_id, body.reason if body else None))


@router.delete("/keys/{key_id}", response_model=KeyObject, tags=["keys"], responses=errors(404, 409, 422))
async def delete_key(key_id: str, caller: Caller, service: Service) -> dict[str, object]:
    """Same as revoke: keys are never erased, so their history and last use stay visible."""
    return key_object(service, await service.delete_key(caller, key_id))


@router.post(
    "/keys/{key_id}/renew", response_model=KeyObject, tags=["keys"], responses=errors(404, 409, 415, 422)
)
async def renew_key(
    key_id: str, caller: Caller, service: Service, body: RenewKey | None = None
) -> dict[str, object]:
    return key_object(service, await service.renew_key(caller, key_id, body.extend_days if body else None))


@router.post(
    "/account/webhook-secret",
    status_code=201,
    response_model=WebhookSecret,
    tags=["account"],
)
async def new_webhook_secret(caller: Caller, service: Service, response: Response) -> dict[str, str]:
    """A new `whsec_` secret that signs this account's webhooks; shown once."""
    response.headers.update(NO_STORE)
    return {"secret": await service.new_webhook_secret(caller)}


def audit_entry(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at,
        "action": entry.action,
        "actor_key_id": entry.actor_key_id,
        "target_key_id": entry.target_key_id,
        "ip": entry.ip,
        "user_agent": entry.user_agent,
        "details": entry.details,
    }


@router.get("/audit", response_model=AuditList, tags=["audit"], responses=errors(422))
async def list_audit(
    caller: Caller,
    service: Service,
    key_id: Annotated[str | None, Query(min_length=1, max_length=40, pattern=r"^key_[0-9A-Za-z]+$")] = None,
    action: Annotated[Literal[ACTIONS] | None, Query()] = None,  # type: ignore[valid-type]  # an enum in OpenAPI
    # A date-time as text only: pydantic alone would take `0.5` as a Unix time.
    since: Annotated[DateTimeText | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The audit trail of the caller's account, newest first (needs `admin:read`): every change made
    through this API or by the platform, and every call refused. `key_id`: entries whose target or
    actor is that key; `since`: entries at or after that time. Pass `next_cursor` back as `cursor`."""
    entries, next_cursor = await service.list_audit(
        caller, key_id=key_id, action=action, since=since, limit=limit, cursor=cursor
    )
    body = {"data": [audit_entry(entry) for entry in entries], "next_cursor": next_cursor}
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")
