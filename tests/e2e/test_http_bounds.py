"""Every HTTP port against a rude client (issue 18, item 2 and 3): the services as real processes.

Each port (issuer, validator forward-auth, rotator and notifier probes, the demo API) refuses a 1 MB
head with 431 within 2 s, closes half-sent and trickling connections at CNX_HTTP_HEADER_TIMEOUT while
it keeps answering others at once, closes idle keep-alive connections, and answers 503 past
CNX_HTTP_MAX_CONNECTIONS. The issuer and the demo API answer 413 to a chunked body over the limit; the
demo API answers 400 to a request with two credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from .stack import ProcessStack, stack_with_own_nats

HEADER_TIMEOUT = 3.0
KEEPALIVE_TIMEOUT = 1.0
MAX_CONNECTIONS = 330
PORTS = ["issuer", "validator", "rotator", "notifier", "demo"]
# A request every port answers: the validator's forward-auth app has /healthz too.
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    with stack_with_own_nats(
        tmp_path_factory.mktemp("http-bounds"),
        PORTS,
        CNX_HTTP_HEADER_TIMEOUT=f"{HEADER_TIMEOUT}s",
        CNX_HTTP_KEEPALIVE_TIMEOUT=f"{KEEPALIVE_TIMEOUT}s",
        CNX_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    ) as running:
        yield running


def port_of(stack: ProcessStack, name: str) -> int:
    return stack.processes[name].port


async def exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Write `payload` on a new connection (the server may stop reading it), read until the server
    closes; returns what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server refused before reading it all; its answer is still to be read
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict[str, object]:
    return orjson.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `within` seconds."""
    try:
        await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def healthz_took(port: int) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        start = time.monotonic()
        response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
        return time.monotonic() - start


@pytest.mark.parametrize("name", PORTS)
async def test_a_1mb_head_is_refused_with_431_within_2s(stack: ProcessStack, name: str) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Junk: " + b"a" * (1 << 20) + b"\r\n\r\n"
    start = time.monotonic()
    response = await exchange(port_of(stack, name), big)
    assert time.monotonic() - start < 2.0
    assert status_of(response) == 431, response[:200]
    assert body_of(response)["error"]["code"] == "request_header_fields_too_large"  # type: ignore[index]
    # Many headers, each small, count the same; a head just under the limit is served.
    many = b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-A: bbbbbbbbbbbbbbbbbbbb\r\n" * 1000 + b"\r\n"
    assert status_of(await exchange(port_of(stack, name), many)) == 431
    fits = b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-A: " + b"c" * 15_000 + b"\r\n\r\n"
    assert status_of(await exchange(port_of(stack, name), fits)) == 200
    assert await healthz_took(port_of(stack, name)) < 1.0


@pytest.mark.parametrize("name", PORTS)
async def test_half_sent_and_trickling_heads_are_closed_while_others_are_served(
    stack: ProcessStack, name: str
) -> None:
    port = port_of(stack, name)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
    opened = time.monotonic()
    for _, writer in connections:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    tricklers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        try:
            for index in range(100):
                writer.write(b"X-Slow-%d: 1\r\n" % index)
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            return

    trickling = [asyncio.create_task(trickle(writer)) for _, writer in tricklers]
    try:
        # The held connections cost others nothing.
        assert await healthz_took(port) < 1.0
        closed = await asyncio.gather(
            *(closed_by_server(reader, HEADER_TIMEOUT + 2.0) for reader, _ in connections + tricklers)
        )
        assert all(closed), f"{closed.count(False)} connections still open"
        took = time.monotonic() - opened
        assert HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + 2.0, took
        assert await healthz_took(port) < 1.0
    finally:
        for task in trickling:
            task.cancel()
        for _, writer in connections + tricklers:
            writer.close()


@pytest.mark.parametrize("name", PORTS)
async def test_silent_and_idle_keep_alive_connections_are_closed(stack: ProcessStack, name: str) -> None:
    port = port_of(stack, name)
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
    try:
        idle.write(HEALTHZ)
        status_line = await asyncio.wait_for(idle_reader.readline(), 5)
        assert b" 200 " in status_line
        # The answer is in; the connection is kept alive, then closed for idleness.
        assert await closed_by_server(idle_reader, KEEPALIVE_TIMEOUT + 1.5)
        assert await closed_by_server(silent_reader, HEADER_TIMEOUT + 1.5)
    finally:
        silent.close()
        idle.close()


@pytest.mark.parametrize("name", PORTS)
async def test_connections_past_the_cap_get_503(stack: ProcessStack, name: str) -> None:
    port = port_of(stack, name)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    try:
        for _, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # half a head: held until the header timeout
            await writer.drain()
        # The server accepts connections a little after the client's connect() returns: the next one
        # is past the cap once it has seen them all.
        deadline = time.monotonic() + HEADER_TIMEOUT - 1.0
        response = await exchange(port, HEALTHZ)
        while status_of(response) != 503 and time.monotonic() < deadline:
            response = await exchange(port, HEALTHZ)
        assert status_of(response) == 503, response[:200]
        assert body_of(response)["error"]["code"] == "unavailable"  # type: ignore[index]
        assert b"retry-after: 1" in response.lower()
    finally:
        for _, writer in held:
            writer.close()
    # Once they are gone, the port serves again.
    deadline = time.monotonic() + 5
    while (
        status_of(await exchange(port, HEALTHZ.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))) != 200
    ):
        assert time.monotonic() < deadline, "the port did not recover after the held connections closed"
        await asyncio.sleep(0.05)


def chunked_post(path: str, size: int, headers: bytes = b"") -> bytes:
    head = (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n" + headers + b"\r\n"
    )
    chunk = b"a" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(size // len(chunk)))
    return head + body + b"0\r\n\r\n"


@pytest.mark.parametrize(("name", "path"), [("issuer", "/v2/keys"), ("demo", "/v2/instances")])
async def test_a_chunked_body_over_the_limit_is_413(stack: ProcessStack, name: str, path: str) -> None:
    auth = b"Authorization: Bearer " + stack.admin_key.encode() + b"\r\n"
    response = await exchange(port_of(stack, name), chunked_post(path, 128 * 1024, auth))
    assert status_of(response) == 413, response[:300]
    error = body_of(response)["error"]
    assert error["code"] == "payload_too_large"  # type: ignore[index]
    assert stack.admin_key not in response.decode("latin-1")


async def test_the_demo_api_refuses_two_credentials(stack: ProcessStack) -> None:
    key = stack.admin_key
    demo = f"http://127.0.0.1:{port_of(stack, 'demo')}/v2/instances"
    async with httpx.AsyncClient(timeout=5) as client:
        two_headers = await client.get(
            demo, headers=[("Authorization", f"Bearer {key}"), ("Authorization", "Bearer cnx_prod_other")]
        )
        assert two_headers.status_code == 400
        assert two_headers.json()["error"]["code"] == "ambiguous_credentials"
        same_twice = await client.get(
            demo, headers=[("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")]
        )
        assert same_twice.status_code == 400
        disagree = await client.get(
            demo, params={"api_key": "cnx_prod_other"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert disagree.status_code == 400
        for response in (two_headers, same_twice, disagree):
            assert key not in response.text
        # One credential, or the same key twice over header and query, is judged as usual.
        agree = await client.get(demo, params={"api_key": key}, headers={"Authorization": f"Bearer {key}"})
        assert agree.status_code == 200, agree.text
        assert (await client.get(demo, params={"api_key": key})).status_code == 200


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_50mb_head_neither_grows_the_validator_nor_stalls_it(stack: ProcessStack) -> None:
    process = stack.processes["validator"]
    assert process.pid is not None
    port = port_of(stack, "validator")
    before = rss_kb(process.pid)
    huge = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Junk: " + b"a" * (50 << 20) + b"\r\n\r\n"
    sending = asyncio.create_task(exchange(port, huge, timeout=10))
    took = [await healthz_took(port) for _ in range(5)]
    response = await sending
    assert status_of(response) == 431
    assert max(took) < 1.0, took
    assert rss_kb(process.pid) - before < 8 * 1024
