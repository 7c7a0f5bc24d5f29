"""The correlation id: one id carried from an API call through the events it causes to the notice at
the end, so one grep of the JSON logs follows a change across the four services.

It lives in a context variable: the HTTP middleware sets it per request (from a well-formed
`X-Request-Id`, else a new one), every event built meanwhile takes it (`Event.correlation_id`), a
consumer sets it from the event it handles, and the log formatter writes it on every line.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A caller's X-Request-Id is kept only when it is short and plain: it goes into every log line and
# event of the call, so no control characters, no spaces, nothing key-length.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{8,64}")

_current: ContextVar[str | None] = ContextVar("cnx_correlation_id", default=None)


def new_correlation_id() -> str:
    return secrets.token_hex(8)


def current() -> str | None:
    """The correlation id of the work in hand; None outside any request or event."""
    return _current.get()


def bind(correlation_id: str | None) -> None:
    """Make this id the current one for what follows in this task (a consumer, per event)."""
    _current.set(correlation_id)


def from_header(value: bytes | None) -> str:
    """The caller's X-Request-Id when it is a plain id (a key-shaped one is refused: it would land in
    logs and on the bus), else a new id."""
    if value:
        text = value.decode("latin-1")
        if _ACCEPTED.fullmatch(text) and not text.startswith("cnx_"):
            return text
    return new_correlation_id()


class CorrelationMiddleware:
    """Binds each HTTP request's correlation id (the caller's X-Request-Id when plain, else a new one)
    for everything the request does, and returns it as X-Request-Id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
                break
        correlation_id = from_header(given)
        token = _current.set(correlation_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", correlation_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
