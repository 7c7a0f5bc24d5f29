"""What the real-proxy forward-auth tests share: the stack with issue 12's route table, an upstream that
answers 200 to anything and records what reached it (so a request forward-auth should have refused
shows up), a raw HTTP client (httpx would normalise the path tricks away before sending them), the
attacks of issue 12 and the checks every proxy must pass."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .stack import Stack, eventually, running_stack, stack_settings

# Issue 12's table: no catch-all, so a path no entry names is refused (NO_ROUTE).
ISSUE_ROUTES = ["GET|HEAD /v2/instances=compute:read@prod", "DELETE /v2/instances/{id}=compute:admin@prod"]


@dataclass
class EchoUpstream:
    """The protected service: 200 for any method and path, remembering each request it served."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        key_id = headers.get(b"x-key-id", b"").decode()
        self.seen.append((scope["method"], raw, key_id))
        body = orjson.dumps({"method": scope["method"], "path": raw, "key_id": key_id})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> Answer:
    """One HTTP/1.1 request with the request target exactly as given (dot segments, %2F, ...)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {target} HTTP/1.1", "Host: api.example", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Answer(int(status_line.split()[1]), parsed, body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# (method, target, extra headers) a compute:read prod key sends to get past DELETE's compute:admin.
ATTACKS_ON_DELETE: list[tuple[str, str, dict[str, str]]] = [
    ("DELETE", "/v2/instances/i-1", {}),
    ("DELETE", "/v2/instances/i-1", {"X-Required-Scope": "compute:read"}),
    ("DELETE", "/v2/instances/i-1", {"X-Original-URI": "/v2/instances"}),
    ("DELETE", "/v2/instances/i-1", {"X-Forwarded-Uri": "/v2/instances", "X-Forwarded-Method": "GET"}),
    (
        "DELETE",
        "/v2/instances/i-1",
        {"X-Original-URL": "http://api.example/v2/instances", "X-Original-Method": "GET"},
    ),
    (
        "DELETE",
        "/v2/instances/i-1",
        {
            "X-Original-Url": "http://api.example/v2/instances",
            "X-Original-Method": "GET",
            "X-Required-Scope": "compute:read",
        },
    ),
    ("PUT", "/v2/instances/i-1", {}),  # no route names it
    ("PUT", "/v2/instances/i-1", {"X-Required-Scope": "compute:read"}),
    ("POST", "/v2/instances", {}),
    # Paths an upstream may read as DELETE /v2/instances/i-1.
    ("DELETE", "/v2/instances/../instances/i-1", {}),
    ("DELETE", "/v2/x/%2e%2e/instances/i-1", {}),
    ("DELETE", "//v2/instances/i-1", {}),
    ("DELETE", "/v2/instances%2Fi-1", {}),
    ("DELETE", "/v2/instances/i-1.", {}),
    ("DELETE", "/V2/Instances/i-1", {}),
    ("DELETE", "/v2/instances/./i-1", {}),
]


@contextlib.asynccontextmanager
async def route_table_stack(
    nats_url: str, make_database_url: Callable[[str, str], str], tmp_path: Path, **settings: Any
) -> AsyncIterator[Stack]:
    """The issuer and a validator on SQLite with issue 12's route table, and `settings` on top."""
    base = stack_settings(
        nats_url,
        tmp_path,
        make_database_url("issuer", "sqlite"),
        make_database_url("validator", "sqlite"),
        f"fa-{uuid.uuid4().hex[:8]}",
    )
    async with running_stack(base.model_copy(update={"route_scopes": ISSUE_ROUTES, **settings})) as running:
        yield running


async def until_known(stack: Stack, *keys: dict[str, Any]) -> None:
    """Wait until the validator's projection holds every one of the keys just created."""

    async def known() -> bool:
        projection = stack.validator.service.projection
        return all(projection.entry(k["id"]) is not None for k in keys)

    await eventually(known, timeout=5.0)


async def refuses_what_the_table_does_not_allow(
    port: int,
    echo: EchoUpstream,
    allowed: Sequence[tuple[dict[str, Any], str, str]],
    reader: dict[str, Any],
    admin: dict[str, Any],
    dev: dict[str, Any],
) -> Answer:
    """Through the proxy on `port`: the `allowed` (key, method, target) pass with the key's id upstream,
    as does the reader's key in the query; issue 12's attacks, a route nobody named, the wrong
    environment and no key at all are refused and reach nothing upstream. Returns the no-key answer."""
    for key, method, target in allowed:
        answer = await raw_request(port, method, target, bearer(key["key"]))
        assert answer.status == 200, (method, target, answer)
        assert echo.seen[-1] == (method, target.split("?")[0], key["id"])
    by_query = await raw_request(port, "GET", f"/v2/instances?api_key={reader['key']}")
    assert by_query.status == 200, by_query

    served_before = len(echo.seen)
    for method, target, extra in ATTACKS_ON_DELETE:
        answer = await raw_request(port, method, target, {**bearer(reader["key"]), **extra})
        assert answer.status in (400, 403), (method, target, extra, answer)
        if answer.status == 403:
            assert answer.headers["x-cnx-code"] in ("SCOPE_DENIED", "NO_ROUTE"), (target, answer)
    no_route = await raw_request(port, "PUT", "/v2/instances/i-1", bearer(admin["key"]))
    assert no_route.status == 403 and no_route.headers["x-cnx-code"] == "NO_ROUTE"
    dev_env = await raw_request(
        port, "GET", "/v2/instances", {**bearer(dev["key"]), "X-Required-Environment": "dev"}
    )
    assert dev_env.status == 403 and dev_env.headers["x-cnx-code"] == "ENV_MISMATCH"
    missing = await raw_request(port, "GET", "/v2/instances")
    assert missing.status == 401
    assert len(echo.seen) == served_before, echo.seen[served_before:]
    return missing
