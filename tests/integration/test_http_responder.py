"""The bounded HTTP server's responder (shared/httpserver.Responder), in-process on a free port: the
answers made without an ASGI cycle (the validator's forward-auth) are whole HTTP answers, keep their order
among the app's, leave to the app what has a body, and a responder's failure or bad header is a 500 with
nothing of it on the wire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.httpserver import Answer, BoundedHttpProtocol, GracefulServer, HttpLimits, server_config
from shared.natsserver import free_port
from tests.integration.test_http_bounds import echo_length

LIMITS = HttpLimits(max_header_bytes=16 * 1024, header_timeout=2.0, keepalive_timeout=1.0, max_connections=50)
SECRET = "cnx_prod_notreallyasecret"


def respond(scope: dict[str, Any]) -> Answer | None:
    path = scope["path"]
    if path == "/fast":
        body = b"fast:" + scope["method"].encode() + b":" + scope["query_string"]
        return 200, [(b"content-type", b"text/plain"), (b"x-path", scope["raw_path"])], body
    if path == "/big":
        return 200, [], b"b" * 4096
    if path == "/boom":
        raise RuntimeError(f"the responder broke on {SECRET}")
    if path == "/crlf":
        return 200, [(b"x-bad", b"a\r\nx-injected: 1")], b"no"
    return None  # the app's (echo_length: the length of the body it read)


@pytest.fixture
async def server() -> AsyncIterator[GracefulServer]:
    config = server_config(echo_length, LIMITS, host="127.0.0.1", port=free_port(), respond=respond)
    served = GracefulServer(config)
    task = asyncio.create_task(served.serve())
    deadline = time.monotonic() + 10
    while not served.started:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)  # poll interval, bounded by the deadline
    yield served
    served.should_exit = True
    await task


class Answers:
    """HTTP/1.1 answers read off one connection, one at a time (by Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def next(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"{name} twice"
                headers[name.lower()] = value.strip()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 5)
        return status, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""


async def connect(server: GracefulServer) -> tuple[Answers, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
    return Answers(reader), writer


def get(path: str, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def post(body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def test_answers_made_without_asgi_are_whole_and_keep_the_connection(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    writer.write(get("/fast?a=1") + get("/fast?a=2"))
    for query in (b"a=1", b"a=2"):
        status, headers, body = await answers.next()
        assert (status, body) == (200, b"fast:GET:" + query)
        assert headers["content-type"] == "text/plain" and headers["x-path"] == "/fast"
        assert "date" in headers and "connection" not in headers
    writer.write(get("/fast", b"Connection: close\r\n"))
    status, headers, _ = await answers.next()
    assert status == 200 and headers["connection"] == "close"
    assert await answers.closed()
    writer.close()


async def test_an_http10_answer_closes_unless_kept_alive(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    writer.write(b"GET /fast HTTP/1.0\r\n\r\n")
    assert (await answers.next())[0] == 200
    assert await answers.closed()
    writer.close()


async def test_what_has_a_body_or_is_head_goes_to_the_app(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    writer.write(get("/elsewhere"))
    assert (await answers.next())[2] == b"0"
    writer.write(get("/fast", b"Content-Length: 3\r\n") + b"abc")
    assert (await answers.next())[2] == b"3"
    writer.write(get("/fast", b"Transfer-Encoding: chunked\r\n") + b"2\r\nab\r\n0\r\n\r\n")
    assert (await answers.next())[2] == b"2"
    writer.write(get("/fast", method=b"HEAD") + get("/fast"))
    reader = answers.reader
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1\r\n" in head  # the app's "0"
    # Behind a request the app still answers, the responder waits its turn: the app answers it.
    assert (await answers.next())[2] == b"0"
    writer.close()


async def test_pipelined_answers_keep_their_order(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    # In one read: answered at once, then by the app, then (behind the app's answer) by the app too.
    writer.write(get("/fast?n=1") + get("/fast?n=2") + post(b"abc") + get("/fast?n=3") + post(b"ab"))
    bodies = [(await answers.next())[2] for _ in range(5)]
    assert bodies == [b"fast:GET:n=1", b"fast:GET:n=2", b"3", b"0", b"2"]
    writer.write(get("/fast?n=4"))  # and once the app is done, at once again
    assert (await answers.next())[2] == b"fast:GET:n=4"
    writer.close()


async def test_a_failing_responder_is_a_500_that_tells_nothing(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    writer.write(get("/boom"))
    status, headers, body = await answers.next()
    assert status == 500 and headers["content-type"] == "application/json"
    assert b"internal" in body and SECRET.encode() not in body
    writer.write(get("/fast"))  # the connection still serves
    assert (await answers.next())[0] == 200
    writer.close()


async def test_a_header_value_that_would_split_the_head_is_a_500_and_a_close(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    writer.write(get("/crlf"))
    status, headers, body = await answers.next()
    assert status == 500 and "x-injected" not in headers and "x-bad" not in headers
    assert headers["connection"] == "close" and b"no" not in body
    assert await answers.closed()
    writer.close()


async def test_an_idle_connection_after_such_answers_is_closed(server: GracefulServer) -> None:
    answers, writer = await connect(server)
    writer.write(get("/fast"))
    assert (await answers.next())[0] == 200
    started = time.monotonic()
    assert await answers.closed()  # keepalive_timeout 1 s, swept every 0.2 s
    assert time.monotonic() - started < 4
    writer.close()


async def test_a_client_that_does_not_read_is_paused_not_buffered(server: GracefulServer) -> None:
    # 4 KB answers to 20-byte requests: 80 MB held if the server kept reading; paused, what one read
    # (256 KB of requests) asked for at most, as uvicorn's own pipeline queues one read's requests.
    count = 20_000
    answers, writer = await connect(server)
    sending = asyncio.create_task(_send_all(writer, get("/big") * count))
    deadline = time.monotonic() + 10
    paused: list[BoundedHttpProtocol] = []
    while not paused:
        assert time.monotonic() < deadline, "the server never stopped reading"
        paused = [c for c in server.server_state.connections if c.flow.read_paused]  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)  # poll interval, bounded by the deadline
    assert paused[0].transport.get_write_buffer_size() < 60 * 1024 * 1024
    for _ in range(count):  # reading lets it go on, to the last one
        assert (await answers.next())[2] == b"b" * 4096
    await sending
    writer.close()


async def _send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
