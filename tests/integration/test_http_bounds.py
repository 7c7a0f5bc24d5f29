"""The bounded HTTP server (shared/httpserver.py) in-process, on a free port: what the head limit counts.

The e2e module (tests/e2e/test_http_bounds.py) drives every service's port; this one checks the
counting itself against a small app: a head is measured apart from the body that arrives in the same
read, pipelined requests are served, and settings reach the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.httpserver import GracefulServer, HttpLimits, server_config
from shared.natsserver import free_port
from shared.settings import Settings

LIMITS = HttpLimits(max_header_bytes=16 * 1024, header_timeout=2.0, keepalive_timeout=1.0, max_connections=50)


async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the length of the body it read."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"%d" % size
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    chosen = free_port()
    server = GracefulServer(server_config(echo_length, LIMITS, host="127.0.0.1", port=chosen))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started
    yield chosen
    server.should_exit = True
    await task


async def exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def post(body: bytes, extra_header: bytes = b"", close: bool = True) -> bytes:
    return (
        b"POST /echo HTTP/1.1\r\nHost: t\r\n"
        + extra_header
        + (b"Connection: close\r\n" if close else b"")
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_a_small_head_with_a_large_body_in_one_read_is_served(port: int) -> None:
    # 100 KB of body behind a small head, in one write: the body does not count as head.
    response = await exchange(port, post(b"x" * 100_000))
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"100000")


async def test_a_large_head_with_its_body_in_one_read_is_431(port: int) -> None:
    response = await exchange(port, post(b"x" * 10, b"X-Big: " + b"y" * 17_000 + b"\r\n"))
    assert response.startswith(b"HTTP/1.1 431")
    assert b"connection: close" in response.lower()


async def test_pipelined_requests_are_each_answered(port: int) -> None:
    many = b"".join(post(b"ab", close=False) for _ in range(200)) + post(b"abc")
    response = await exchange(port, many)
    assert response.count(b"HTTP/1.1 200") == 201
    assert b"431" not in response


async def test_a_pipelined_oversized_head_is_refused(port: int) -> None:
    payload = post(b"ab", close=False) + post(b"", b"X-Big: " + b"y" * 40_000 + b"\r\n")
    response = await exchange(port, payload)
    assert response.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 431" in response


def test_the_limits_come_from_settings() -> None:
    settings = Settings(
        http_header_timeout="7s",  # type: ignore[arg-type]
        http_keepalive_timeout="30s",  # type: ignore[arg-type]
        http_max_connections=5,
        http_max_header_bytes=4096,
    )
    assert HttpLimits.from_settings(settings) == HttpLimits(4096, 7.0, 30.0, 5)
    assert HttpLimits.from_settings(Settings()) == HttpLimits()
    with pytest.raises(ValueError):
        Settings(http_header_timeout="0s")  # type: ignore[arg-type]
