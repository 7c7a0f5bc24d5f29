"""Notifier use cases on an in-memory delivery log and fake channels: once per notice, retries."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from services.notifier import domain
from services.notifier.service import NOTIFY_CONTEXT, NotifierService, Result
from shared.crypto import FieldCipher
from shared.events import KeyExpiring, KeyView
from shared.settings import DEV_ENCRYPTION_KEY
from tests.support.fake_stores import FakeNotifierStore

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CIPHER = FieldCipher([DEV_ENCRYPTION_KEY])


class Mailer:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> Result:
        result = self.results.pop(0) if self.results else Result(domain.DELIVERED, "250 OK")
        if result.outcome == domain.DELIVERED:
            self.sent.append(message)
        return result


class Hooks:
    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        self.posts.append((url, body, headers))
        return Result(domain.DELIVERED, "HTTP 204")


class Secrets:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = (
            ["whsec_" + "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="] if secrets is None else secrets
        )

    async def webhook_secrets(self, account_id: str) -> list[str]:
        return list(self.secrets)


class Clock:
    now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def rig() -> Any:
    mailer, hooks, clock = Mailer(), Hooks(), Clock()
    service = NotifierService(
        FakeNotifierStore(clock),
        cipher=CIPHER,
        mailer=mailer,
        webhooks=hooks,
        secrets=Secrets(),
        sender="keys@example.com",
        policy=domain.RetryPolicy(base=timedelta(seconds=10)),
        clock=clock,
        rng=random.Random(7),
    )
    return service, mailer, hooks, clock


def expiring() -> KeyExpiring:
    sealed = CIPHER.encrypt(
        json.dumps({"email": "o@example.com", "webhook_url": "https://h.example/x"}), context=NOTIFY_CONTEXT
    )
    key = KeyView(
        key_id="key_1",
        account_id="acct",
        prefix="cnx_prod_abcd",
        digest="d" * 64,
        name="ci",
        environment="prod",
        scopes=["compute:read"],
        plan="starter",
        status="active",
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        notify_sealed=sealed,
        revision=3,
    )
    return KeyExpiring(account_id="acct", key_id="key_1", key=key, notice="1d", occurred_at=NOW)


async def test_each_channel_delivers_once_however_often_the_event_comes(rig: Any) -> None:
    service, mailer, hooks, _ = rig
    event = expiring()
    assert await service.on_event(event) is None
    assert await service.on_event(event) is None
    assert await service.on_event(expiring()) is None  # same notice, new event id
    assert len(mailer.sent) == 1 and len(hooks.posts) == 1
    _, body, headers = hooks.posts[0]
    (secret,) = await Secrets().webhook_secrets("acct")
    assert domain.verify(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body, headers["webhook-signature"]
    )


async def test_a_temporary_failure_is_retried_after_the_backoff_and_logged(rig: Any) -> None:
    service, mailer, _, clock = rig
    mailer.results = [Result(domain.RETRY, "SMTP 451 try later")]
    delay = await service.on_event(expiring())
    assert delay is not None and 5 <= delay <= 10
    assert await service.on_event(expiring()) == pytest.approx(delay)  # too early: nothing sent
    assert mailer.sent == []
    clock.now = NOW + timedelta(seconds=delay)
    assert await service.on_event(expiring()) is None
    assert len(mailer.sent) == 1
    (row,) = [r for r in await service.store.deliveries("key_1") if r.channel == domain.EMAIL]
    assert row.status == domain.DELIVERED and row.attempts == 2
    assert [a.outcome for a in await service.store.attempts(row.id)] == ["retry", "delivered"]


async def test_a_permanent_failure_is_not_retried(rig: Any) -> None:
    service, mailer, _, _ = rig
    mailer.results = [Result(domain.FAILED, "SMTP 550 no such user")]
    assert await service.on_event(expiring()) is None
    assert await service.on_event(expiring()) is None
    (row,) = [r for r in await service.store.deliveries("key_1") if r.channel == domain.EMAIL]
    assert row.status == domain.FAILED and row.attempts == 1


async def test_no_secret_from_the_issuer_means_no_webhook_and_a_retry(rig: Any) -> None:
    """Never unsigned: an empty answer (an issuer fault) leaves the webhook pending, not sent bare."""
    service, _, hooks, _ = rig
    service.secrets = Secrets([])
    delay = await service.on_event(expiring())
    assert delay is not None and hooks.posts == []
    (delivery,) = [d for d in await service.store.deliveries("key_1") if d.channel == domain.WEBHOOK]
    assert delivery.status == "retrying" and "unsigned" in (delivery.last_error or "")
