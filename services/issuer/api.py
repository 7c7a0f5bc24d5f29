"""Management REST API routes: parse, call one use case, shape the answer. Guarded by `admin:*` scopes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from nats.errors import Error as NatsError

from shared.client import ValidatorUnavailable
from shared.errors import Unavailable
from shared.http import bearer_token
from shared.validation import ValidationResult

from .schemas import (
    CreatedKey,
    CreateKey,
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
from .store import IssuerKey, KeyListing

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 503)}


# async: FastAPI runs a plain `def` dependency in its thread pool, a thread round trip per request.
async def get_service(request: Request) -> IssuerService:
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[IssuerService, Depends(get_service)]


async def get_principal(request: Request, service: Service) -> Principal:
    return await service.authenticate(bearer_token(request))


Caller = Annotated[Principal, Depends(get_principal)]


def key_object(service: IssuerService, key: IssuerKey) -> dict[str, object]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "environment": key.environment,
        "scopes": key.scopes,
        "plan": key.plan,
        "rate_limit": key.rate_limit,
        "ip_allowlist": key.ip_allowlist,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "status": service.status_of(key),
        "auto_renew": key.auto_renew,
        "grace_until": key.grace_until,
        "notify": service.dump_notify(key),
        "metadata": key.key_metadata,
    }


def listed_key(service: IssuerService, key: KeyListing) -> dict[str, Any]:
    """A key object as `KeyObject` would serialise it (same fields, order and values), built directly."""
    rate_limit = key.rate_limit
    notify = service.notify_of(key)
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "environment": key.environment,
        "scopes": key.scopes,
        "plan": key.plan,
        "rate_limit": (
            {"requests_per_minute": rate_limit["requests_per_minute"], "burst": rate_limit.get("burst")}
            if rate_limit
            else None
        ),
        "ip_allowlist": key.ip_allowlist,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "status": service.status_of(key),
        "auto_renew": key.auto_renew,
        "grace_until": key.grace_until,
        "notify": notify.model_dump(mode="json") if notify else None,
        "metadata": key.key_metadata,
    }


def key_list_body(service: IssuerService, keys: list[KeyListing], next_cursor: str | None) -> bytes:
    """The JSON of a `KeyList`, encoded with orjson (`Z` for UTC, as pydantic writes it). Validating and
    serialising 100 `KeyObject`s through the response model took longer than reading them."""
    body = {"data": [listed_key(service, key) for key in keys], "next_cursor": next_cursor}
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


router = APIRouter(prefix="/v2", responses=ERRORS)  # type: ignore[arg-type]


@router.post("/keys", status_code=201, response_model=CreatedKey, tags=["keys"])
async def create_key(body: CreateKey, caller: Caller, service: Service) -> dict[str, object]:
    """Mint a key. The secret is in the answer this once; only its HMAC digest is kept."""
    key, secret = await service.create_key(caller, body)
    return {**key_object(service, key), "key": secret}


@router.get("/keys", response_model=KeyList, tags=["keys"])
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


@router.post("/keys/rotate", status_code=201, response_model=RotatedKey, tags=["keys"])
async def rotate_key(body: RotateKey, caller: Caller, service: Service) -> dict[str, object]:
    """A new key with the same settings; the old one keeps working until `previous.grace_until`."""
    new, secret, old = await service.rotate_key(caller, body.key_id, body.grace_period_hours)
    previous = PreviousKey(id=old.id, status=service.status_of(old), grace_until=old.grace_until)  # type: ignore[arg-type]
    return {**key_object(service, new), "key": secret, "previous": previous}


@router.post("/keys/verify", response_model=ValidationResult, tags=["validation"])
async def verify_key(body: VerifyKey, caller: Caller, request: Request) -> ValidationResult:
    """Validate a key the way the validator does (answered by the validator over NATS)."""
    client = request.app.state.validation_client
    if client is None:
        raise Unavailable("the validator is not reachable")
    try:
        return await client.validate(body.key, scope=body.scope, ip=body.ip, environment=body.environment)
    except (TimeoutError, ValidatorUnavailable, NatsError) as exc:
        # NATS down or no validator: a clear 503 the caller can retry, never a 500.
        raise Unavailable("the validator is not reachable; retry shortly") from exc


@router.get("/keys/{key_id}", response_model=KeyObject, tags=["keys"])
async def get_key(key_id: str, caller: Caller, service: Service) -> dict[str, object]:
    return key_object(service, await service.get_key(caller, key_id))


@router.patch("/keys/{key_id}", response_model=KeyObject, tags=["keys"])
async def update_key(key_id: str, body: UpdateKey, caller: Caller, service: Service) -> dict[str, object]:
    return key_object(service, await service.update_key(caller, key_id, body))


@router.post("/keys/{key_id}/revoke", response_model=KeyObject, tags=["keys"])
async def revoke_key(
    key_id: str, caller: Caller, service: Service, body: RevokeKey | None = None
) -> dict[str, object]:
    return key_object(service, await service.revoke_key(caller, key_id, body.reason if body else None))


@router.delete("/keys/{key_id}", response_model=KeyObject, tags=["keys"])
async def delete_key(key_id: str, caller: Caller, service: Service) -> dict[str, object]:
    """Same as revoke: keys are never erased, so their history and last use stay visible."""
    return key_object(service, await service.revoke_key(caller, key_id))


@router.post("/keys/{key_id}/renew", response_model=KeyObject, tags=["keys"])
async def renew_key(
    key_id: str, caller: Caller, service: Service, body: RenewKey | None = None
) -> dict[str, object]:
    return key_object(service, await service.renew_key(caller, key_id, body.extend_days if body else None))


@router.post("/account/webhook-secret", status_code=201, response_model=WebhookSecret, tags=["account"])
async def new_webhook_secret(caller: Caller, service: Service, response: Response) -> dict[str, str]:
    """A new `whsec_` secret that signs this account's webhooks; shown once."""
    response.headers["Cache-Control"] = "no-store"
    return {"secret": await service.new_webhook_secret(caller)}
