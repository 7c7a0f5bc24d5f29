"""Validation client for platform services: `await client.validate(...)` over NATS and a FastAPI
dependency `require_scope("compute:read")` that answers 401/403/429 the way the validator means them.

    app.state.keys_client = ValidationClient(nc)

    @app.get("/v2/instances")
    async def instances(key: ValidationResult = Depends(require_scope("compute:read"))): ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import HTTPException, Request
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared.credentials import AmbiguousCredentials, presented_key
from shared.events import SUBJECT_VALIDATE
from shared.validation import Code, ValidationResult


class ValidatorUnavailable(RuntimeError):
    pass


class KeyRejected(HTTPException):
    """Raised by `require_scope`; `code` is the validator's (SCOPE_DENIED, ...), used in the error body."""

    def __init__(self, result: ValidationResult, headers: dict[str, str]) -> None:
        super().__init__(result.http_status, result.message, headers=headers)
        self.code = str(result.code)


class CredentialsRefused(HTTPException):
    """Raised by `require_scope` for a request presenting two credentials (shared/credentials.py): 400."""

    def __init__(self, error: AmbiguousCredentials) -> None:
        super().__init__(error.status, error.message)
        self.code = error.code


class ValidationClient:
    def __init__(self, nc: NatsClient, *, timeout: float = 2.0, subject: str = SUBJECT_VALIDATE) -> None:
        self._nc = nc
        self._timeout = timeout
        self._subject = subject

    async def validate(
        self,
        key: str | None,
        *,
        scope: str | None = None,
        ip: str | None = None,
        environment: str | None = None,
    ) -> ValidationResult:
        body: dict[str, Any] = {"key": key}
        if scope:
            body["scope"] = scope
        if ip:
            body["ip"] = ip
        if environment:
            body["environment"] = environment
        if not self._nc.is_connected:
            # Reconnecting: fail at once rather than hold the caller for the whole timeout.
            raise ValidatorUnavailable("not connected to NATS")
        try:
            reply = await self._nc.request(self._subject, orjson.dumps(body), timeout=self._timeout)
        except (NatsTimeout, NoRespondersError, NatsError) as exc:
            raise ValidatorUnavailable("no validator answered") from exc
        return ValidationResult.model_validate_json(reply.data)


def _headers(result: ValidationResult) -> dict[str, str]:
    headers: dict[str, str] = {}
    if result.rate_limit is not None:
        headers["RateLimit-Limit"] = str(result.rate_limit.limit)
        headers["RateLimit-Remaining"] = str(result.rate_limit.remaining)
        headers["RateLimit-Reset"] = str(max(0, round(result.rate_limit.reset_s)))
    if result.code in (Code.MISSING, Code.MALFORMED, Code.NOT_FOUND, Code.EXPIRED, Code.REVOKED):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if result.code == Code.RATE_LIMITED:
        headers["Retry-After"] = str(max(1, int(-(-(result.retry_after_s or 1) // 1))))
    return headers


def require_scope(
    scope: str | None, *, environment: str | None = None, client_attr: str = "keys_client"
) -> Callable[[Request], Awaitable[ValidationResult]]:
    """A FastAPI dependency: the caller's key must be valid and hold `scope` (and `environment`)."""

    async def dependency(request: Request) -> ValidationResult:
        client: ValidationClient = getattr(request.app.state, client_attr)
        ip = request.client.host if request.client else None
        try:
            key = presented_key(request.scope["headers"], request.scope.get("query_string", b""))
        except AmbiguousCredentials as exc:
            raise CredentialsRefused(exc) from None
        try:
            result = await client.validate(key, scope=scope, ip=ip, environment=environment)
        except ValidatorUnavailable as exc:
            raise HTTPException(
                503, "key validation is unavailable; retry shortly", headers={"Retry-After": "1"}
            ) from exc
        if not result.valid:
            raise KeyRejected(result, _headers(result))
        request.state.rate_limit_headers = _headers(result)
        return result

    return dependency
