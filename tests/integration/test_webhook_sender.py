"""The notifier's webhook sender against real HTTP servers on 127.0.0.1: the SSRF rule at send time
(refused targets are a permanent failure in the delivery log), the connection dialled to the address
that was checked (DNS rebinding), the original Host and TLS server name, no redirects, a bounded wait,
a bounded read, and the egress proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from services.notifier import domain
from services.notifier.adapters import HttpWebhookSender
from services.notifier.service import NOTIFY_CONTEXT, NotifierService, Result
from services.notifier.store import NotifierStore
from shared.crypto import FieldCipher
from shared.db import create_engine
from shared.events import KeyRevoked
from shared.settings import DEV_ENCRYPTION_KEY
from shared.webhook_targets import TargetPolicy
from tests.support.certificates import self_signed
from tests.support.factories import key_view

from .stack import eventually

BODY = b'{"type":"key.revoked"}'
HEADERS = {"content-type": "application/json", "webhook-id": "msg_1", "webhook-timestamp": "1"}


@dataclass
class Seen:
    request_line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A raw HTTP/1.1 server (asyncio streams), so a test controls every byte of the answer.

    mode: `ok` 204; `redirect` 302 to `location`; `silent` reads the request and never answers;
    `drip` sends its status line one byte a second; `huge` answers 200 with a 1 GiB body, sent as fast
    as the client reads it (`sent` counts what left).
    """

    mode: str = "ok"
    host: str = "127.0.0.1"
    port: int = 0
    location: str = ""
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    sent: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, self.host, self.port or None, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, host: str | None = None, path: str = "/hook") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *rest = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.seen.append(Seen(line, headers, body))
            await self._answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "ok":
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        elif self.mode == "redirect":
            writer.write(
                f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 0\r\n\r\n".encode()
            )
        elif self.mode == "silent":
            await asyncio.Event().wait()
        elif self.mode == "drip":
            for byte in b"HTTP/1.1 204 No Content\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        elif self.mode == "huge":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            chunk = b"x" * 65536
            for _ in range(1073741824 // len(chunk)):
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
        await writer.drain()


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        await receiver.stop()


async def receiver(started: list[Receiver], **kwargs: Any) -> Receiver:
    server = await Receiver(**kwargs).start()
    started.append(server)
    return server


class Resolver:
    """An injected DNS: answers from a table, or in turn from a list per name (a rebinding name)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        queue = self.answers.get(host)
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return queue.pop(0) if len(queue) > 1 else queue[0]


def sender(allow_private: bool, resolver: Resolver | None = None, **kwargs: Any) -> HttpWebhookSender:
    policy = TargetPolicy(allow_private=allow_private, resolver=resolver or Resolver({}))
    return HttpWebhookSender(policy, **kwargs)


async def test_a_receiver_on_loopback_is_called_only_when_private_targets_are_allowed(
    receivers: list[Receiver],
) -> None:
    hook = await receiver(receivers)
    allowed = sender(True)
    assert (await allowed.post(hook.url(), BODY, HEADERS)).outcome == domain.DELIVERED
    assert len(hook.seen) == 1 and hook.seen[0].body == BODY
    refused = sender(False)
    result = await refused.post(hook.url(), BODY, HEADERS)
    assert result.outcome == domain.FAILED and "loopback" in result.detail
    assert len(hook.seen) == 1  # nothing reached it
    await allowed.close()
    await refused.close()


async def test_dns_rebinding_the_connection_goes_to_the_address_that_was_checked(
    receivers: list[Receiver],
) -> None:
    """The name is looked up once, and the socket goes to that answer, whatever a second lookup would
    say: `rebind.test` answers 127.0.0.1 first and 127.0.0.2 after; the receiver on 127.0.0.2 (the same
    port) never hears from the sender."""
    checked = await receiver(receivers)
    try:
        other = await receiver(receivers, host="127.0.0.2", port=checked.port)
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    dns = Resolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    webhooks = sender(True, dns)
    result = await webhooks.post(f"http://rebind.test:{checked.port}/hook?a=1", BODY, HEADERS)
    assert result.outcome == domain.DELIVERED, result
    assert dns.calls == ["rebind.test"] and other.seen == []
    (seen,) = checked.seen
    assert seen.request_line == "POST /hook?a=1 HTTP/1.1"
    assert seen.headers["host"] == f"rebind.test:{checked.port}"
    await webhooks.close()


async def test_a_name_resolving_inside_is_refused_before_any_connection(receivers: list[Receiver]) -> None:
    hook = await receiver(receivers)
    dns = Resolver({"inside.test": [["10.1.2.3"]], "loop.test": [["127.0.0.1"]]})
    webhooks = sender(False, dns)
    for host in ("inside.test", "loop.test"):
        result = await webhooks.post(hook.url(host), BODY, HEADERS)
        assert result.outcome == domain.FAILED and "resolves to a" in result.detail, result
        assert host not in result.detail  # the log names the rule, not the owner's address
    assert hook.seen == []
    await webhooks.close()


async def test_a_redirect_is_not_followed(receivers: list[Receiver]) -> None:
    target = await receiver(receivers)
    hop = await receiver(receivers, mode="redirect", location=target.url(path="/elsewhere"))
    webhooks = sender(True)
    result = await webhooks.post(hop.url(), BODY, HEADERS)
    assert result.outcome == domain.RETRY and "302" in result.detail and "not followed" in result.detail
    assert len(hop.seen) == 1 and target.seen == []
    await webhooks.close()


@pytest.mark.parametrize("mode", ["silent", "drip"])
async def test_a_slow_receiver_is_cut_at_the_timeout(receivers: list[Receiver], mode: str) -> None:
    """`drip` answers a byte a second: each read is quick, so only a bound on the whole attempt ends it."""
    slow = await receiver(receivers, mode=mode)
    webhooks = sender(True, timeout=1.5)
    start = time.monotonic()
    result = await webhooks.post(slow.url(), BODY, HEADERS)
    took = time.monotonic() - start
    assert result.outcome == domain.RETRY and "within 1.5s" in result.detail, result
    assert 1.4 < took < 3.0, took
    await webhooks.close()


async def test_a_huge_answer_is_not_read_whole(receivers: list[Receiver]) -> None:
    huge = await receiver(receivers, mode="huge")
    webhooks = sender(True, timeout=10.0, max_response_bytes=64 * 1024)
    start = time.monotonic()
    result = await webhooks.post(huge.url(), BODY, HEADERS)
    assert result.outcome == domain.DELIVERED and time.monotonic() - start < 5, result

    async def writer_stopped() -> bool:
        return not huge._tasks  # the receiver's writer ended: the connection was closed on it

    await eventually(writer_stopped, timeout=5.0)
    # What left the receiver before the close: the cap plus what socket buffers held, far from 1 GiB.
    assert huge.sent < 64 * 1024 * 1024, huge.sent
    await webhooks.close()


def tls_for(name: str, tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    """A self-signed certificate for `name` only; the server's context (recording the SNI it is sent)
    and a client context that trusts just that certificate."""
    cert_file, key_file = self_signed(tmp, name)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    names: list[str | None] = []
    server.sni_callback = lambda sock, server_name, ctx: names.append(server_name)  # type: ignore[func-returns-value]
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client, names


async def test_tls_goes_to_the_checked_address_with_the_original_name(
    receivers: list[Receiver], tmp_path: Path
) -> None:
    """The socket goes to the checked address, and TLS still sends the URL's name as SNI and verifies
    the certificate for that name (a certificate for `hooks.test` only: reached by address, it fails)."""
    server_tls, client_tls, sni = tls_for("hooks.test", tmp_path)
    hook = await receiver(receivers, tls=server_tls)
    dns = Resolver({"hooks.test": [["127.0.0.1"]]})
    webhooks = sender(True, dns, verify=client_tls)
    result = await webhooks.post(hook.url("hooks.test"), BODY, HEADERS)
    assert result.outcome == domain.DELIVERED, result
    assert sni == ["hooks.test"] and hook.seen[0].headers["host"] == f"hooks.test:{hook.port}"
    by_address = await webhooks.post(hook.url("127.0.0.1"), BODY, HEADERS)
    assert by_address.outcome == domain.RETRY and "CERTIFICATE_VERIFY_FAILED" in by_address.detail
    assert len(hook.seen) == 1
    await webhooks.close()


async def test_with_a_proxy_every_webhook_goes_through_it_and_it_resolves_names(
    receivers: list[Receiver],
) -> None:
    proxy = await receiver(receivers)
    dns = Resolver({})
    webhooks = sender(False, dns, proxy=f"http://127.0.0.1:{proxy.port}")
    result = await webhooks.post("http://hooks.test:8080/hook?x=1", BODY, HEADERS)
    assert result.outcome == domain.DELIVERED, result
    (seen,) = proxy.seen
    assert seen.request_line == "POST http://hooks.test:8080/hook?x=1 HTTP/1.1" and seen.body == BODY
    assert dns.calls == []  # no lookup here: the proxy resolves
    refused = await webhooks.post("http://169.254.169.254/latest/meta-data/", BODY, HEADERS)
    assert refused.outcome == domain.FAILED and len(proxy.seen) == 1  # an internal address never leaves
    await webhooks.close()


class OneSecret:
    async def webhook_secrets(self, account_id: str) -> list[str]:
        return ["whsec_" + "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="]


class NoMail:
    async def send(self, message: EmailMessage) -> Result:
        raise AssertionError("no email in these notices")


CIPHER = FieldCipher([DEV_ENCRYPTION_KEY])


def revoked(key_id: str, url: str) -> KeyRevoked:
    now = datetime.now(UTC)
    key = key_view(
        now,
        2,
        key_id=key_id,
        name="ci",
        status="revoked",
        expires_at=now + dt.timedelta(days=1),
        notify_sealed=CIPHER.encrypt(json.dumps({"webhook_url": url}), context=NOTIFY_CONTEXT),
    )
    return KeyRevoked(account_id="acct", key_id=key_id, key=key, reason="by hand", occurred_at=now)


@pytest.mark.parametrize("allow_private", [True, False])
async def test_the_delivery_log_records_a_refused_target_as_a_permanent_failure(
    receivers: list[Receiver], tmp_path: Path, allow_private: bool
) -> None:
    hook = await receiver(receivers)
    store = NotifierStore(create_engine(f"sqlite+aiosqlite:///{tmp_path}/notifier.db"))
    await store.prepare_schema()
    webhooks = sender(allow_private)
    service = NotifierService(
        store, cipher=CIPHER, mailer=NoMail(), webhooks=webhooks, secrets=OneSecret(), sender="k@example.com"
    )
    try:
        event = revoked("key_ssrf", hook.url())
        assert await service.on_event(event) is None  # no retry pending either way
        assert await service.on_event(event) is None
        (delivery,) = await store.deliveries("key_ssrf")
        attempts = await store.attempts(delivery.id)
        if allow_private:
            assert delivery.status == domain.DELIVERED and len(hook.seen) == 1
        else:
            assert delivery.status == domain.FAILED and hook.seen == []
            assert "target refused" in (delivery.last_error or "")
            assert [a.outcome for a in attempts] == [domain.FAILED]  # recorded once, never retried
    finally:
        await webhooks.close()
        await store.close()


def test_ipv6_host_header_keeps_its_brackets() -> None:
    from shared.webhook_targets import parse_target

    target = parse_target("http://[2606:4700::1]:8443/x")
    assert target.literal == ipaddress.ip_address("2606:4700::1")
    assert target.host_header == "[2606:4700::1]:8443"
