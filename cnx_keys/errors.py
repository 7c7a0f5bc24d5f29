"""What the management client raises: one error per kind of answer, each carrying the API's error body.

The API answers every refusal with `{"error": {"code", "message", "field?"}}`; `ApiError` keeps those
three and the HTTP status, so a caller branches on `code` (or on the class) and shows `message`.
Nothing here ever holds the caller's key: the API redacts key-shaped values from its messages, and
these classes keep only the body's fields, never the request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import orjson


class ManagementError(Exception):
    """Anything the management client raises."""


class ApiConnectionError(ManagementError):
    """The API could not be reached, or did not answer in time (nothing was answered)."""


class ApiError(ManagementError):
    """The API answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        # Seconds the API asked to wait (429, 503), from its Retry-After header.
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, field={self.field!r})"


class BadRequest(ApiError):
    """400: a request the API cannot read (two Authorization headers, say)."""


class AuthenticationError(ApiError):
    """401: no key, or a key that is malformed, unknown, expired, revoked or not allowed from here."""


class PermissionDenied(ApiError):
    """403: the key is valid but may not do this (scope, environment, escalation)."""


class NotFound(ApiError):
    """404: no such key in the caller's account."""


class Conflict(ApiError):
    """409: the key's state forbids it (a revoked key cannot be renewed, say)."""


class InvalidRequest(ApiError):
    """422: a field is invalid (`field` names it: an unknown scope, a bad CIDR, ...)."""


class RateLimited(ApiError):
    """429: too many management calls with this key; `retry_after` says how long to wait."""


class ServiceUnavailable(ApiError):
    """503: the store or the validator is unreachable; the call did not happen and may be retried."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header's wait in seconds: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer. A body that is not the API's error shape (a proxy's HTML
    page, say) still gives an `ApiError`, with a code made of the status."""
    code, message, field = f"http_{response.status_code}", "", None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        field = str(error["field"]) if error.get("field") is not None else None
    if not message:
        message = f"HTTP {response.status_code} {response.reason_phrase or ''}".strip()
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(
        response.status_code,
        code,
        message,
        field,
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )
