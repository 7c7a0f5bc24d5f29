"""The lean NATS connection's frame parser (frames split anywhere, HMSG headers, PING, unknown
subscriptions, bad frames), its URL and CONNECT handling (credentials only when asked for, never in a
repr, a log line or an error), and its handshake against a scripted in-process server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from services.validator.natswire import (
    PONG,
    Endpoint,
    FrameParser,
    ProtocolError,
    WireClient,
    header_status,
)

Call = tuple[bytes, bytes, bytes, bytes | None]


class Recorder:
    """A parser with one subscription (sid 1) that answers b"re:" + payload, and every callback noted."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.infos: list[dict[str, Any]] = []
        self.pongs = 0
        self.errors: list[str] = []
        self.out: list[bytes] = []
        self.parser = FrameParser(
            {b"1": self.handle},
            self.out,
            on_info=self.infos.append,
            on_pong=self.pong,
            on_err=self.errors.append,
        )

    def handle(self, subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> bytes:
        self.calls.append((subject, reply, payload, headers))
        return b"re:" + payload

    def pong(self) -> None:
        self.pongs += 1


STREAM = (
    b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    b"MSG keys.validate 1 _INBOX.a.1 13\r\n"
    b'{"key":"k1"}\n\r\n'
    b"PING\r\n"
    b"HMSG keys.validate 1 _INBOX.a.2 22 27\r\n"
    b"NATS/1.0\r\nTrace: 1\r\n\r\nhello\r\n"
    b"MSG keys.validate 1 5\r\n"
    b"no-re\r\n"
    b"+OK\r\n"
    b"MSG other 9 _INBOX.x 2\r\nzz\r\n"
    b"PONG\r\n"
    b"MSG keys.validate 1 _INBOX.a.3 0\r\n\r\n"
)

EXPECTED_CALLS: list[Call] = [
    (b"keys.validate", b"_INBOX.a.1", b'{"key":"k1"}\n', None),
    (b"keys.validate", b"_INBOX.a.2", b"hello", b"NATS/1.0\r\nTrace: 1\r\n\r\n"),
    (b"keys.validate", b"", b"no-re", None),
    (b"keys.validate", b"_INBOX.a.3", b"", None),
]

EXPECTED_OUT = (
    b'PUB _INBOX.a.1 16\r\nre:{"key":"k1"}\n\r\n'
    + PONG
    + b"PUB _INBOX.a.2 8\r\nre:hello\r\n"
    + b"PUB _INBOX.a.3 3\r\nre:\r\n"
)


def test_one_read_with_every_kind_of_frame() -> None:
    r = Recorder()
    r.parser.feed(STREAM)
    assert r.calls == EXPECTED_CALLS
    assert b"".join(r.out) == EXPECTED_OUT, "answers in order, PONG owed for the PING, none without reply"
    assert r.infos == [{"server_id": "x", "max_payload": 1048576}]
    assert r.pongs == 1
    assert r.errors == []


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_frames_split_at_any_byte(size: int) -> None:
    r = Recorder()
    for i in range(0, len(STREAM), size):
        r.parser.feed(STREAM[i : i + size])
    assert r.calls == EXPECTED_CALLS
    assert b"".join(r.out) == EXPECTED_OUT


def test_every_split_point_of_a_message() -> None:
    frame = b"HMSG keys.validate.back.a.7 1 16 21\r\nNATS/1.0 503\r\n\r\nabcde\r\n"
    for cut in range(1, len(frame)):
        r = Recorder()
        r.parser.feed(frame[:cut])
        assert r.calls == [], cut
        r.parser.feed(frame[cut:])
        assert r.calls == [(b"keys.validate.back.a.7", b"", b"abcde", b"NATS/1.0 503\r\n\r\n")], cut


def test_payload_with_crlf_inside_is_taken_by_length() -> None:
    r = Recorder()
    r.parser.feed(b"MSG s 1 r 6\r\na\r\nb\r\n\r\n")
    assert r.calls == [(b"s", b"r", b"a\r\nb\r\n", None)]


def test_no_responders_status() -> None:
    assert header_status(b"NATS/1.0 503\r\n\r\n") == b"503"
    assert header_status(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n") == b"408"
    assert header_status(b"NATS/1.0\r\nA: b\r\n\r\n") is None
    assert header_status(None) is None


def test_server_error_and_unknown_frames() -> None:
    r = Recorder()
    r.parser.feed(b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n")
    assert r.errors == ['Permissions Violation for Publish to "x"']
    with pytest.raises(ProtocolError):
        Recorder().parser.feed(b"HELLO there\r\n")
    with pytest.raises(ProtocolError):
        Recorder().parser.feed(b"MSG a 1 notanumber\r\n")
    with pytest.raises(ProtocolError):
        Recorder().parser.feed(b"X" * 70_000)


def test_a_failing_handler_costs_only_its_message(caplog: pytest.LogCaptureFixture) -> None:
    out: list[bytes] = []

    def handler(subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> bytes:
        if payload == b"boom":
            raise RuntimeError("bug")
        return payload

    parser = FrameParser({b"1": handler}, out)
    with caplog.at_level(logging.ERROR):
        parser.feed(b"MSG s 1 r1 4\r\nboom\r\nMSG s 1 r2 2\r\nok\r\n")
    assert out == [b"PUB r2 2\r\nok\r\n"]
    assert "handler for s failed" in caplog.text


def test_endpoint_takes_credentials_as_nats_py_does() -> None:
    plain = Endpoint.parse("nats://127.0.0.1:4333")
    assert (plain.host, plain.port, plain.tls, plain.credentials()) == ("127.0.0.1", 4333, False, {})
    token = Endpoint.parse("tls://s3cr3t-token@nats.example:4443")
    assert token.tls and token.credentials() == {"auth_token": "s3cr3t-token"}
    userpass = Endpoint.parse("nats://svc:pa55@nats")
    assert userpass.port == 4222 and userpass.credentials() == {"user": "svc", "pass": "pa55"}
    assert "s3cr3t" not in repr(token) and "pa55" not in repr(userpass)
    assert token.address == "nats.example:4443"
    assert Endpoint.parse("127.0.0.1:5000").port == 5000
    with pytest.raises(ValueError):
        Endpoint.parse("ws://127.0.0.1:8080")


def test_connect_sends_credentials_only_when_the_server_asks() -> None:
    client = WireClient("nats://s3cr3t-token@127.0.0.1:4333", name="t")
    opened = orjson.loads(client._connect_frame({})[len(b"CONNECT ") :])
    assert "auth_token" not in opened
    assert opened["verbose"] is False and opened["pedantic"] is False
    assert opened["headers"] is True and opened["no_responders"] is True
    asked = orjson.loads(client._connect_frame({"auth_required": True})[len(b"CONNECT ") :])
    assert asked["auth_token"] == "s3cr3t-token"


class ScriptedServer:
    """An in-process stand-in for nats-server: sends INFO, records what the client writes, and answers
    each line with `respond(line)` (bytes to send, or None to hang up)."""

    def __init__(self, info: dict[str, Any], respond: Any, *, watch: bytes = b"") -> None:
        self.info = info
        self.respond = respond
        self.lines: list[bytes] = []
        self.watch = watch
        self.seen = asyncio.Event()  # set when a line starting with `watch` arrives
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + orjson.dumps(self.info) + b"\r\n")
        while line := await reader.readline():
            self.lines.append(line)
            if self.watch and line.startswith(self.watch):
                self.seen.set()
            answer = self.respond(line)
            if answer is None:
                break
            writer.write(answer)
        writer.close()


async def test_refused_credentials_fail_start_without_naming_them(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(line: bytes) -> bytes | None:
        if line.startswith(b"PING"):
            return b"-ERR 'Authorization Violation'\r\n"
        return b""

    scripted = ScriptedServer({"auth_required": True}, refuse)
    async with scripted as address:
        client = WireClient(f"nats://wr0ng-t0ken@{address}", name="t", connect_timeout=2)
        with caplog.at_level(logging.DEBUG), pytest.raises(ProtocolError) as raised:
            await client.start()
    assert "Authorization Violation" in str(raised.value)
    assert "wr0ng-t0ken" not in str(raised.value) and "wr0ng-t0ken" not in caplog.text
    assert any(b'"auth_token":"wr0ng-t0ken"' in line for line in scripted.lines), "sent to the server only"
    assert not client.connected


async def test_handshake_subscribes_and_answers_server_pings() -> None:
    def serve(line: bytes) -> bytes | None:
        if line.startswith(b"PING"):
            return b"PONG\r\nPING\r\nMSG keys.validate 1 _INBOX.r 2\r\nhi\r\n"
        return b""

    scripted = ScriptedServer({"server_id": "s"}, serve, watch=b"PUB _INBOX.r")
    async with scripted as address:
        client = WireClient(address, name="t", connect_timeout=2)
        client.subscribe("keys.validate", lambda s, r, p, h: b"re:" + p, queue="validators")
        await client.start()
        try:
            await asyncio.wait_for(scripted.seen.wait(), 2)
        finally:
            await client.close()
    sent = b"".join(scripted.lines)
    assert sent.startswith(b"CONNECT {")
    assert b"SUB keys.validate validators 1\r\n" in sent
    assert b"PONG\r\n" in sent, "the server's PING is answered"
    assert b"PUB _INBOX.r 5\r\n" in sent
