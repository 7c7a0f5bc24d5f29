"""HTTP pieces the FastAPI services share: the JSON error shape, body-size limit, Bearer extraction."""

from __future__ import annotations

import email.message
import logging
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import DomainError
from shared.tokens import redact

log = logging.getLogger(__name__)


def redact_all(value: object) -> object:
    """Every string in a JSON-shaped value with any key in it cut to its display prefix, keys of
    mappings included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_all(k): redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v) for v in value]
    return value


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one place an error body is written: whatever a caller put in `message` or `field` (a field
    path is made of the request's own names: an unknown body field or a `metadata` key can be a
    secret), no key leaves here whole."""
    body: dict[str, object] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse(redact_all({"error": body}), status_code=status, headers=headers)


def _field_name(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _field_name(tuple(first.get("loc", ())))
        if first.get("type") == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif first.get("type") == "json_invalid":
            message = NOT_JSON
            field = "body"
        else:
            # Never echo the input: it may be a secret.
            message = f"{field}: {first.get('msg', 'invalid value')}"
        return error_response(422, "invalid_request", message, field)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    @app.exception_handler(OSError)
    async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The store (or another dependency) cannot be reached: the call did not commit and may be
        # retried, which is what 503 says; a 500 would read as a bug.
        log.warning("dependency unavailable: %s", type(exc).__name__)
        return error_response(
            503,
            "unavailable",
            "the service's store is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
            # FastAPI's answer to a JSON body it could not decode other than as a JSON syntax error:
            # invalid UTF-8, or nesting too deep to parse. The same 422 as any body that is not JSON.
            return error_response(422, "invalid_request", NOT_JSON, "body")
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only.
            headers = dict(headers or {})
            allowed = allowed_methods(app, request)
            if allowed:  # else Starlette's own (one route's methods) stays
                headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; use one of: {headers.get('Allow', '')}"
            return error_response(405, "method_not_allowed", message, headers=headers)
        code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)


_BODY_PARSE_ERROR = "There was an error parsing the body"
NOT_JSON = "the body is not valid JSON (UTF-8)"


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of `app` answers on this request's path, in a stable order."""
    methods: set[str] = set()
    _collect_methods(app.router.routes, request.scope, methods)
    return sorted(methods)


def _collect_methods(routes: Iterable[object], scope: Scope, methods: set[str]) -> None:
    for route in routes:
        # FastAPI (0.16x) keeps an included router as one entry that holds its routes: walk into it.
        nested = getattr(route, "effective_candidates", None)
        if callable(nested):
            _collect_methods(nested(), scope, methods)
            continue
        matches = getattr(route, "matches", None)
        route_methods = getattr(route, "methods", None)
        if matches is not None and route_methods and matches(scope)[0] != Match.NONE:
            methods.update(route_methods)


def is_json(content_type: str) -> bool:
    """`application/json` or any `application/*+json`, parameters (charset) allowed."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def require_json_body(request: Request) -> None:
    """415 for a body sent with a Content-Type other than JSON (or none): a route dependency of the
    routes that take a JSON body. Without it FastAPI would read such a body as raw bytes and answer a
    422 about the body's type, which hides the real mistake."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None:
        return
    content_type = request.headers.get("content-type")
    if content_type is not None and is_json(content_type):
        return
    if not await request.body():
        return  # no body: an optional one is simply absent, a required one is the usual 422
    raise StarletteHTTPException(
        415,
        "send the body as JSON with Content-Type: application/json",
        headers={"Accept-Post": "application/json"} if request.method == "POST" else None,
    )


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413 (JSON error, connection closed), declared or chunked.

    The body is read here, up to the limit, before the app runs, and handed to it whole: refusing in
    the middle of the app's own read is not possible, since FastAPI turns any error raised while it
    reads a body into a 400. The bodies this limit allows are small (64 KB by default), and FastAPI
    holds a whole body in memory anyway.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: the app sees the same.
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, as the rest of the body is not read: the server drops the connection
        # rather than parse the remainder as the next request.
        response = error_response(
            413,
            "payload_too_large",
            f"request body is over {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives `messages` first, then the server's own (for http.disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def bearer_token(request: Request) -> str | None:
    """The key from `Authorization: Bearer` (recommended) or the `api_key` query parameter."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return header.strip() or None
    return request.query_params.get("api_key") or None


# What the HTTP layer itself (shared/httpserver.py) can answer to any request on any port, before the
# app sees it: a head over CNX_HTTP_MAX_HEADER_BYTES, and a connection past CNX_HTTP_MAX_CONNECTIONS.
TRANSPORT_ERRORS: dict[str, str] = {
    "431": "The request head is over the limit (CNX_HTTP_MAX_HEADER_BYTES, 16 KB by default).",
    "503": "Unavailable: too many connections to this server, or a dependency (store, NATS) is away.",
}


def document_transport_errors(app: FastAPI, error_schema: str = "ErrorResponse") -> None:
    """Add TRANSPORT_ERRORS, with the JSON error body, to every operation of `app`'s OpenAPI document
    (generated once, as FastAPI does), so the document lists every status a client can get."""
    generate = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}}
        for item in document.get("paths", {}).values():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                for status, description in TRANSPORT_ERRORS.items():
                    responses.setdefault(status, {"description": description, "content": content})
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its document
