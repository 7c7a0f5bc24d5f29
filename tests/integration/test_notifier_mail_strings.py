"""Strings that reach mail and logs, through real parts: the notifier's use case on a real SQLite
delivery log, its real SMTP adapter (aiosmtplib) talking to a real SMTP server (aiosmtpd on a free
port) that refuses some recipients the way a mail server does.

A permanently bad address (one that fails the address rule, as a row stored before the rule was
tightened may; or a 5xx on RCPT) is a failure recorded once and never retried; a 4xx or a server that
cannot be reached is retried. Whatever a key's name or a reason carries, the mail's headers are the
ones the notifier writes, and none carries a control character.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.notifier import domain
from services.notifier.adapters import SmtpMailer
from services.notifier.service import NOTIFY_CONTEXT, NotifierService, Result
from services.notifier.store import NotifierStore
from shared.crypto import FieldCipher
from shared.db import create_engine
from shared.events import KeyExpiring, KeyRevoked, KeyView
from shared.natsserver import free_port
from shared.settings import DEV_ENCRYPTION_KEY
from shared.text import UNSAFE
from tests.support.factories import key_view

NOW = datetime.now(UTC).replace(microsecond=0)
CIPHER = FieldCipher([DEV_ENCRYPTION_KEY])
# What the server answers to RCPT TO, by recipient; anyone else is accepted.
REFUSALS = {
    "gone@example.com": "550 5.1.1 no such user",
    "bad@example.com": "553 5.1.3 mailbox name not allowed",
    "full@example.com": "452 4.2.2 mailbox full, try later",
    "busy@example.com": "450 4.2.1 mailbox busy",
}
HOSTILE_NAME = "ci\x07\x1b[31m\r\nBcc: victim@example.net\r\n\r\nforged body\u202e\x9b"
EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "message-id",
    "x-cloudnexus-key-id",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
}


@dataclass
class _Recorder:
    received: list[bytes] = field(default_factory=list)
    rcpt: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.rcpt.append(address)
        if address in REFUSALS:
            return REFUSALS[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append(content if isinstance(content, bytes) else content.encode())
        return "250 Message accepted for delivery"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[_Recorder, int]]:
    recorder = _Recorder()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(recorder, hostname="test-mx"), "127.0.0.1", 0
    )
    try:
        yield recorder, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        close_clients = getattr(server, "close_clients", None)
        if close_clients is not None:
            close_clients()
        await server.wait_closed()


class _NoWebhooks:
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        raise AssertionError("no webhook in these tests")


class _NoSecrets:
    async def webhook_secrets(self, account_id: str) -> list[str]:
        return []


async def _service(tmp_path: Path, port: int) -> NotifierService:
    store = NotifierStore(create_engine(f"sqlite+aiosqlite:///{tmp_path}/notifier.db"))
    await store.prepare_schema()
    return NotifierService(
        store,
        cipher=CIPHER,
        mailer=SmtpMailer("127.0.0.1", port, timeout=5.0),
        webhooks=_NoWebhooks(),
        secrets=_NoSecrets(),
        sender="keys@cloudnexus.example",
        rng=random.Random(1),
    )


def _key(key_id: str, address: str, name: str = "ci") -> KeyView:
    # Sealed as the issuer seals it; the address is whatever an older row may hold.
    sealed = CIPHER.encrypt(json.dumps({"email": address}), context=NOTIFY_CONTEXT)
    return key_view(NOW, key_id=key_id, name=name, expires_at=NOW + timedelta(days=1), notify_sealed=sealed)


def _expiring(key_id: str, address: str, name: str = "ci") -> KeyExpiring:
    return KeyExpiring(
        account_id="acct", key_id=key_id, key=_key(key_id, address, name), notice="1d", occurred_at=NOW
    )


async def _email_delivery(service: NotifierService, key_id: str) -> Any:
    (row,) = [r for r in await service.store.deliveries(key_id) if r.channel == domain.EMAIL]
    return row


@pytest.mark.parametrize(
    "address",
    [
        "owner@example.com\x00",
        "owner@example.com\r\nBcc: victim@example.net",
        "owner@example.com\nX-Injected: 1",
        "Owner <owner@example.com>",
        "owner@@example.com",
        "owner\x07@example.com",
    ],
)
async def test_a_stored_address_that_fails_the_rule_is_a_permanent_failure_sent_nowhere(
    tmp_path: Path, smtp: tuple[_Recorder, int], address: str
) -> None:
    recorder, port = smtp
    service = await _service(tmp_path, port)
    try:
        assert await service.on_event(_expiring("key_bad", address)) is None  # nothing to retry
        assert await service.on_event(_expiring("key_bad", address)) is None  # a redelivery: no attempt
        row = await _email_delivery(service, "key_bad")
        assert row.status == domain.FAILED and row.attempts == 1
        assert "not deliverable" in (row.last_error or "")
        assert recorder.rcpt == [] and recorder.received == []
    finally:
        await service.store.close()


@pytest.mark.parametrize("address", ["gone@example.com", "bad@example.com"])
async def test_a_5xx_on_rcpt_is_a_permanent_failure(
    tmp_path: Path, smtp: tuple[_Recorder, int], address: str
) -> None:
    recorder, port = smtp
    service = await _service(tmp_path, port)
    try:
        assert await service.on_event(_expiring("key_5xx", address)) is None
        assert await service.on_event(_expiring("key_5xx", address)) is None
        row = await _email_delivery(service, "key_5xx")
        assert row.status == domain.FAILED and row.attempts == 1
        assert REFUSALS[address][:3] in (row.last_error or "")
        assert recorder.rcpt == [address]  # asked once, never again
        assert [a.outcome for a in await service.store.attempts(row.id)] == [domain.FAILED]
    finally:
        await service.store.close()


@pytest.mark.parametrize("address", ["full@example.com", "busy@example.com"])
async def test_a_4xx_on_rcpt_is_retried(tmp_path: Path, smtp: tuple[_Recorder, int], address: str) -> None:
    _, port = smtp
    service = await _service(tmp_path, port)
    try:
        delay = await service.on_event(_expiring("key_4xx", address))
        assert delay is not None and delay > 0
        row = await _email_delivery(service, "key_4xx")
        assert row.status == "retrying"
    finally:
        await service.store.close()


async def test_a_server_that_cannot_be_reached_is_retried(tmp_path: Path) -> None:
    service = await _service(tmp_path, free_port())  # nothing listens there
    try:
        assert await service.on_event(_expiring("key_down", "owner@example.com")) is not None
        assert (await _email_delivery(service, "key_down")).status == "retrying"
    finally:
        await service.store.close()


def _headers_and_subject(raw: bytes) -> tuple[set[str], str, str]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return {k.lower() for k in parsed}, str(parsed["subject"]), parsed.get_content()


async def test_control_characters_in_a_name_or_reason_never_reach_the_mail_raw(
    tmp_path: Path, smtp: tuple[_Recorder, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A name or a reason from an older row or a platform event (never through the API) with BEL, ESC,
    CR/LF, a bidi override and an 8-bit CSI: the mail has exactly the notifier's headers, a one-line
    Subject without a control character, and the recipient is only the owner."""
    recorder, port = smtp
    service = await _service(tmp_path, port)
    try:
        expiring = _expiring("key_name", "owner@example.com", name=HOSTILE_NAME)
        revoked = KeyRevoked(
            account_id="acct",
            key_id="key_name2",
            key=_key("key_name2", "owner@example.com", name=HOSTILE_NAME),
            reason="leaked\r\nBcc: victim@example.net\x1b]0;pwned\x07",
            occurred_at=NOW,
        )
        with caplog.at_level(logging.INFO, logger="notifier"):
            assert await service.on_event(expiring) is None
            assert await service.on_event(revoked) is None
        assert len(recorder.received) == 2
        assert recorder.rcpt == ["owner@example.com", "owner@example.com"]
        for raw in recorder.received:
            headers, subject, text = _headers_and_subject(raw)
            assert headers == EXPECTED_HEADERS, headers
            assert not UNSAFE.search(subject), repr(subject)
            assert "\ufffd" in subject  # what was replaced is shown, not hidden
            assert b"victim@example.net" not in raw.split(b"\r\n\r\n", 1)[0]  # not in any header
            for line in text.splitlines():
                assert not UNSAFE.search(line), repr(line)
        assert caplog.records and not any(UNSAFE.search(r.getMessage()) for r in caplog.records)
        _, _, revoked_text = _headers_and_subject(recorder.received[1])
        assert "leaked\ufffd\ufffdBcc: victim@example.net" in revoked_text  # reason kept, on one line
    finally:
        await service.store.close()


def test_the_header_cannot_be_injected_through_the_message_builder() -> None:
    """Defence in depth, without the adapter: the pure builder itself never writes a raw CR/LF into a
    header, whatever the notice holds, and refuses an address that fails the rule."""
    notice = domain.notice_for(_expiring("key_x\r\nX-Evil: 1", "owner@example.com", name=HOSTILE_NAME))
    assert notice is not None
    message = domain.email_message(notice, "keys@cloudnexus.example", "owner@example.com")
    headers, subject, _ = _headers_and_subject(message.as_bytes())
    assert headers == EXPECTED_HEADERS
    assert "\r" not in subject and "\n" not in subject
    assert "\r" not in message["X-CloudNexus-Key-Id"]
    with pytest.raises(domain.UndeliverableAddress):
        domain.email_message(notice, "keys@cloudnexus.example", "owner@example.com\r\nBcc: x@example.net")


async def test_smtp_5xx_and_4xx_are_told_apart_by_the_adapter(smtp: tuple[_Recorder, int]) -> None:
    """The adapter alone, message by message: what the service then records."""
    _, port = smtp
    mailer = SmtpMailer("127.0.0.1", port, timeout=5.0)
    notice = domain.notice_for(_expiring("key_a", "owner@example.com"))
    assert notice is not None
    outcomes = {}
    for address in [*REFUSALS, "owner@example.com"]:
        result = await mailer.send(domain.email_message(notice, "keys@cloudnexus.example", address))
        outcomes[address] = result.outcome
    assert outcomes == {
        "gone@example.com": domain.FAILED,
        "bad@example.com": domain.FAILED,
        "full@example.com": domain.RETRY,
        "busy@example.com": domain.RETRY,
        "owner@example.com": domain.DELIVERED,
    }
