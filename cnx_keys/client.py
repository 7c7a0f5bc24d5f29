"""Typed Python clients of the management API (httpx): `ManagementClient` and `AsyncManagementClient`.

    from cnx_keys import ManagementClient

    with ManagementClient("http://localhost:8080", api_key) as cnx:
        created = cnx.create_key(name="Production Backend", environment="prod", scopes=["compute:read"])
        print(created.key)  # the secret, shown this once
        for key in cnx.iter_keys(status="active"):
            print(key.prefix, key.name, key.last_used_at)

Both clients build the same requests (`_Call`, one builder per route) and differ only in how they send
them. A refusal raises an `ApiError` subclass with the API's `code`, `message` and `field`; 429 and 503
are retried after Retry-After with exponential backoff (`RetryPolicy`); a network failure raises
`ApiConnectionError`. The key travels in `Authorization: Bearer` only (the API takes it nowhere else).
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from .errors import ApiConnectionError, ManagementError, error_from_response
from .models import (
    AuditList,
    CreatedKey,
    KeyList,
    KeyObject,
    Notify,
    RateLimit,
    RotatedKey,
    ValidationResult,
    WebhookSecret,
)
from .retry import RetryPolicy

Model = TypeVar("Model", bound=BaseModel)
Status = Literal["active", "rotating", "expired", "revoked"]
Env = Literal["prod", "stg", "dev"]
PlanName = Literal["starter", "professional", "enterprise"]
DEFAULT_TIMEOUT = 10.0


class _Unset(enum.Enum):
    """A field left out of a PATCH body (None is a value there: `notify=None` clears the channels)."""

    UNSET = enum.auto()


UNSET = _Unset.UNSET


class UnexpectedResponse(ManagementError):
    """A success status whose body is not what the route answers: the URL is probably not the
    management API (the demo API, a proxy's page)."""


def _user_agent() -> str:
    try:
        release = version("cloudnexus-keys")
    except PackageNotFoundError:  # running from a source tree that was not installed
        release = "dev"
    return f"cnx-keys-python/{release} httpx/{httpx.__version__}"


def _key_path(key_id: str, action: str = "") -> str:
    # Quoted whole: a hostile or mistyped id ("../account/webhook-secret") stays one path segment.
    if not key_id:
        raise ValueError("key_id must not be empty")
    return f"/v2/keys/{quote(key_id, safe='')}{action}"


def _dump(value: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return dict(value)


def _query(**params: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    return out


@dataclass(frozen=True)
class _Call(Generic[Model]):
    """One request of a route and the model its success answer is read into."""

    method: str
    path: str
    model: type[Model]
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None

    def parse(self, response: httpx.Response) -> Model:
        try:
            return self.model.model_validate_json(response.content)
        except ValidationError as exc:
            raise UnexpectedResponse(
                f"{self.method} {response.request.url.path} answered {response.status_code} with a body "
                f"that is not a {self.model.__name__}: is the URL the management API's?"
            ) from exc


class _Routes:
    """The management API's routes as `_Call`s: one place for paths, bodies and result models."""

    @staticmethod
    def create_key(
        *,
        name: str,
        environment: Env,
        scopes: Sequence[str],
        expires_in_days: int | None = None,
        expires_at: datetime | None = None,
        plan: PlanName | None = None,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
        ip_allowlist: Sequence[str] | None = None,
        auto_renew: bool = False,
        notify: Notify | Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> _Call[CreatedKey]:
        body: dict[str, Any] = {"name": name, "environment": environment, "scopes": list(scopes)}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        if plan is not None:
            body["plan"] = plan
        if rate_limit is not None:
            body["rate_limit"] = _dump(rate_limit) if isinstance(rate_limit, BaseModel) else dict(rate_limit)
        if ip_allowlist:
            body["ip_allowlist"] = list(ip_allowlist)
        if auto_renew:
            body["auto_renew"] = True
        if notify is not None:
            body["notify"] = _dump(notify)
        if metadata:
            body["metadata"] = dict(metadata)
        return _Call("POST", "/v2/keys", CreatedKey, body=body)

    @staticmethod
    def list_keys(
        status: Status | None, environment: Env | None, limit: int | None, cursor: str | None
    ) -> _Call[KeyList]:
        params = _query(status=status, environment=environment, limit=limit, cursor=cursor)
        return _Call("GET", "/v2/keys", KeyList, params=params)

    @staticmethod
    def update_key(key_id: str, fields: dict[str, Any]) -> _Call[KeyObject]:
        body: dict[str, Any] = {}
        for name, value in fields.items():
            if value is UNSET:
                continue
            if name == "notify" and value is not None:
                value = _dump(value)
            elif name in ("ip_allowlist",) and value is not None:
                value = list(value)
            elif name == "metadata" and value is not None:
                value = dict(value)
            body[name] = value
        return _Call("PATCH", _key_path(key_id), KeyObject, body=body)

    @staticmethod
    def rotate_key(key_id: str, grace_period_hours: float | None) -> _Call[RotatedKey]:
        if not key_id:
            raise ValueError("key_id must not be empty")
        body: dict[str, Any] = {"key_id": key_id}
        if grace_period_hours is not None:
            body["grace_period_hours"] = grace_period_hours
        return _Call("POST", "/v2/keys/rotate", RotatedKey, body=body)

    @staticmethod
    def verify_key(
        key: str, scope: str | None, ip: str | None, environment: Env | None
    ) -> _Call[ValidationResult]:
        body: dict[str, Any] = {"key": key}
        body.update(_query(scope=scope, ip=ip, environment=environment))
        return _Call("POST", "/v2/keys/verify", ValidationResult, body=body)

    @staticmethod
    def list_audit(
        key_id: str | None, action: str | None, since: datetime | None, limit: int | None, cursor: str | None
    ) -> _Call[AuditList]:
        params = _query(key_id=key_id, action=action, since=since, limit=limit, cursor=cursor)
        return _Call("GET", "/v2/audit", AuditList, params=params)


class _ClientBase:
    def __init__(self, base_url: str, api_key: str, retry: RetryPolicy | None) -> None:
        if not base_url:
            raise ValueError("base_url is required (the management API's URL, e.g. http://localhost:8080)")
        if not api_key or any(c in api_key for c in "\r\n"):
            raise ValueError("api_key is required, on one line")
        self.base_url = base_url.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": _user_agent(),
            "Accept": "application/json",
        }

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _connection_error(self, exc: httpx.TransportError, timeout: float | None) -> ApiConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return ApiConnectionError(f"no answer from {self.base_url} within {timeout}s")
        reason = str(exc) or type(exc).__name__
        return ApiConnectionError(f"cannot reach {self.base_url}: {reason}")

    @staticmethod
    def _env(base_url: str | None, api_key: str | None) -> tuple[str, str]:
        url = base_url or os.environ.get("CNX_API_URL") or ""
        key = api_key or os.environ.get("CNX_API_KEY") or ""
        return url, key


class ManagementClient(_ClientBase):
    """The management API, synchronously. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(base_url, api_key, retry)
        self.timeout = timeout
        self._sleep = sleep
        # follow_redirects off (httpx's default, said here on purpose): a redirect must not carry the
        # key to another host.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_env(
        cls, base_url: str | None = None, api_key: str | None = None, **options: Any
    ) -> ManagementClient:
        """A client for CNX_API_URL with CNX_API_KEY (either overridden by the arguments)."""
        url, key = cls._env(base_url, api_key)
        return cls(url, key, **options)

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[Model]) -> Model:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, params=call.params, json=call.body)
            except httpx.TransportError as exc:
                raise self._connection_error(exc, self.timeout) from exc
            if response.is_success:
                return call.parse(response)
            error = error_from_response(response)
            delay = self.retry.delay(attempt, response.status_code, error.retry_after)
            if delay is None:
                raise error
            attempt += 1
            self._sleep(delay)

    # keys

    def create_key(
        self,
        *,
        name: str,
        environment: Env,
        scopes: Sequence[str],
        expires_in_days: int | None = None,
        expires_at: datetime | None = None,
        plan: PlanName | None = None,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
        ip_allowlist: Sequence[str] | None = None,
        auto_renew: bool = False,
        notify: Notify | Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CreatedKey:
        """Mint a key; `.key` of the answer is the secret, which the API shows this once."""
        return self._send(
            _Routes.create_key(
                name=name,
                environment=environment,
                scopes=scopes,
                expires_in_days=expires_in_days,
                expires_at=expires_at,
                plan=plan,
                rate_limit=rate_limit,
                ip_allowlist=ip_allowlist,
                auto_renew=auto_renew,
                notify=notify,
                metadata=metadata,
            )
        )

    def list_keys(
        self,
        *,
        status: Status | None = None,
        environment: Env | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> KeyList:
        """One page, newest first; pass `next_cursor` back as `cursor` (None on the last page)."""
        return self._send(_Routes.list_keys(status, environment, limit, cursor))

    def iter_keys(
        self, *, status: Status | None = None, environment: Env | None = None, page_size: int = 100
    ) -> Iterator[KeyObject]:
        """Every key, following the pages."""
        cursor: str | None = None
        while True:
            page = self.list_keys(status=status, environment=environment, limit=page_size, cursor=cursor)
            yield from page.data
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_key(self, key_id: str) -> KeyObject:
        return self._send(_Call("GET", _key_path(key_id), KeyObject))

    def update_key(
        self,
        key_id: str,
        *,
        name: str | _Unset = UNSET,
        ip_allowlist: Sequence[str] | _Unset = UNSET,
        auto_renew: bool | _Unset = UNSET,
        notify: Notify | Mapping[str, Any] | _Unset | None = UNSET,
        metadata: Mapping[str, str] | _Unset = UNSET,
    ) -> KeyObject:
        """Change what is given; `notify` replaces both channels (None clears them)."""
        fields = {
            "name": name,
            "ip_allowlist": ip_allowlist,
            "auto_renew": auto_renew,
            "notify": notify,
            "metadata": metadata,
        }
        return self._send(_Routes.update_key(key_id, fields))

    def revoke_key(self, key_id: str, *, reason: str | None = None) -> KeyObject:
        body = {"reason": reason} if reason is not None else None
        return self._send(_Call("POST", _key_path(key_id, "/revoke"), KeyObject, body=body))

    def delete_key(self, key_id: str) -> KeyObject:
        """The same as revoke: keys are never erased, so their history stays visible."""
        return self._send(_Call("DELETE", _key_path(key_id), KeyObject))

    def rotate_key(self, key_id: str, *, grace_period_hours: float | None = None) -> RotatedKey:
        """A new key with the same settings (`.key`, shown once); the old one works until
        `.previous.grace_until`."""
        return self._send(_Routes.rotate_key(key_id, grace_period_hours))

    def renew_key(self, key_id: str, *, extend_days: int | None = None) -> KeyObject:
        body = {"extend_days": extend_days} if extend_days is not None else None
        return self._send(_Call("POST", _key_path(key_id, "/renew"), KeyObject, body=body))

    def verify_key(
        self, key: str, *, scope: str | None = None, ip: str | None = None, environment: Env | None = None
    ) -> ValidationResult:
        """The validator's answer for `key` (needs `admin:read`); `.valid` and `.code` say it."""
        return self._send(_Routes.verify_key(key, scope, ip, environment))

    # account and audit

    def new_webhook_secret(self) -> WebhookSecret:
        """A new `whsec_` signing secret for the account's webhooks, shown once."""
        return self._send(_Call("POST", "/v2/account/webhook-secret", WebhookSecret))

    def list_audit(
        self,
        *,
        key_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> AuditList:
        """One page of the audit trail, newest first."""
        return self._send(_Routes.list_audit(key_id, action, since, limit, cursor))


class AsyncManagementClient(_ClientBase):
    """The management API, for asyncio. Use it as an async context manager, or await `aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, api_key, retry)
        self.timeout = timeout
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_env(
        cls, base_url: str | None = None, api_key: str | None = None, **options: Any
    ) -> AsyncManagementClient:
        url, key = cls._env(base_url, api_key)
        return cls(url, key, **options)

    async def __aenter__(self) -> AsyncManagementClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[Model]) -> Model:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.body
                )
            except httpx.TransportError as exc:
                raise self._connection_error(exc, self.timeout) from exc
            if response.is_success:
                return call.parse(response)
            error = error_from_response(response)
            delay = self.retry.delay(attempt, response.status_code, error.retry_after)
            if delay is None:
                raise error
            attempt += 1
            await self._sleep(delay)

    async def create_key(
        self,
        *,
        name: str,
        environment: Env,
        scopes: Sequence[str],
        expires_in_days: int | None = None,
        expires_at: datetime | None = None,
        plan: PlanName | None = None,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
        ip_allowlist: Sequence[str] | None = None,
        auto_renew: bool = False,
        notify: Notify | Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CreatedKey:
        return await self._send(
            _Routes.create_key(
                name=name,
                environment=environment,
                scopes=scopes,
                expires_in_days=expires_in_days,
                expires_at=expires_at,
                plan=plan,
                rate_limit=rate_limit,
                ip_allowlist=ip_allowlist,
                auto_renew=auto_renew,
                notify=notify,
                metadata=metadata,
            )
        )

    async def list_keys(
        self,
        *,
        status: Status | None = None,
        environment: Env | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> KeyList:
        return await self._send(_Routes.list_keys(status, environment, limit, cursor))

    async def iter_keys(
        self, *, status: Status | None = None, environment: Env | None = None, page_size: int = 100
    ) -> AsyncIterator[KeyObject]:
        cursor: str | None = None
        while True:
            page = await self.list_keys(
                status=status, environment=environment, limit=page_size, cursor=cursor
            )
            for key in page.data:
                yield key
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def get_key(self, key_id: str) -> KeyObject:
        return await self._send(_Call("GET", _key_path(key_id), KeyObject))

    async def update_key(
        self,
        key_id: str,
        *,
        name: str | _Unset = UNSET,
        ip_allowlist: Sequence[str] | _Unset = UNSET,
        auto_renew: bool | _Unset = UNSET,
        notify: Notify | Mapping[str, Any] | _Unset | None = UNSET,
        metadata: Mapping[str, str] | _Unset = UNSET,
    ) -> KeyObject:
        fields = {
            "name": name,
            "ip_allowlist": ip_allowlist,
            "auto_renew": auto_renew,
            "notify": notify,
            "metadata": metadata,
        }
        return await self._send(_Routes.update_key(key_id, fields))

    async def revoke_key(self, key_id: str, *, reason: str | None = None) -> KeyObject:
        body = {"reason": reason} if reason is not None else None
        return await self._send(_Call("POST", _key_path(key_id, "/revoke"), KeyObject, body=body))

    async def delete_key(self, key_id: str) -> KeyObject:
        return await self._send(_Call("DELETE", _key_path(key_id), KeyObject))

    async def rotate_key(self, key_id: str, *, grace_period_hours: float | None = None) -> RotatedKey:
        return await self._send(_Routes.rotate_key(key_id, grace_period_hours))

    async def renew_key(self, key_id: str, *, extend_days: int | None = None) -> KeyObject:
        body = {"extend_days": extend_days} if extend_days is not None else None
        return await self._send(_Call("POST", _key_path(key_id, "/renew"), KeyObject, body=body))

    async def verify_key(
        self, key: str, *, scope: str | None = None, ip: str | None = None, environment: Env | None = None
    ) -> ValidationResult:
        return await self._send(_Routes.verify_key(key, scope, ip, environment))

    async def new_webhook_secret(self) -> WebhookSecret:
        return await self._send(_Call("POST", "/v2/account/webhook-secret", WebhookSecret))

    async def list_audit(
        self,
        *,
        key_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> AuditList:
        return await self._send(_Routes.list_audit(key_id, action, since, limit, cursor))
