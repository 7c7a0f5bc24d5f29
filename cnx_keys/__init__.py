"""CloudNexus Keys from Python and from a terminal: the typed management client (`ManagementClient`,
`AsyncManagementClient`) and the `cnx-keys` commands built on it (cnx_keys.cli)."""

from .client import UNSET, AsyncManagementClient, ManagementClient, UnexpectedResponse
from .errors import (
    ApiConnectionError,
    ApiError,
    AuthenticationError,
    BadRequest,
    Conflict,
    InvalidRequest,
    ManagementError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from .retry import NO_RETRY, RetryPolicy

__all__ = [
    "NO_RETRY",
    "UNSET",
    "ApiConnectionError",
    "ApiError",
    "AsyncManagementClient",
    "AuthenticationError",
    "BadRequest",
    "Conflict",
    "InvalidRequest",
    "ManagementClient",
    "ManagementError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "UnexpectedResponse",
]
