"""What the real-proxy forward-auth tests share: an upstream that answers 200 to anything and records
what reached it (so a request forward-auth should have refused shows up), a raw HTTP client (httpx
would normalise the path tricks away before sending them), and the attacks of issue 12."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from .stack import eventually

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


@contextlib.asynccontextmanager
async def served(app: Any, port: int) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    # Keep the test runner's own signal handling: this server is stopped by should_exit.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
        return bool(server.started)

    await eventually(started, timeout=10.0)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


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
