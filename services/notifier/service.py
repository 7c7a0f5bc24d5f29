"""Notifier use cases: turn a key event into at most one email and one signed webhook per
(key, purpose, expiry), retrying temporary failures with backoff for up to a day.

No NATS, no HTTP and no tables here: mail goes through a `Mailer`, webhooks through a `WebhookSender`, the
account's signing secret comes from a `SecretSource`, the delivery log is a `ports.NotifierStore`. Retries
are not a loop of ours: `on_event` returns how long to wait, and the handler hands the event back to
JetStream with that delay, so a pending retry survives any restart.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Protocol

from shared.crypto import FieldCipher
from shared.events import NOTIFY_CONTEXT, KeyEvent
from shared.text import one_line
from shared.timeutil import Clock, utcnow

from . import domain
from .ports import NotifierStore

log = logging.getLogger("notifier")


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one attempt: `code` is the SMTP reply or HTTP status (None: no answer)."""

    outcome: str
    detail: str
    retry_after: float | None = None


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> Result: ...


class WebhookSender(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Result: ...


class SecretSource(Protocol):
    async def webhook_secrets(self, account_id: str) -> Sequence[str]:
        """The account's signing secrets, the current one first."""
        ...


class NotifierService:
    def __init__(
        self,
        store: NotifierStore,
        *,
        cipher: FieldCipher,
        mailer: Mailer,
        webhooks: WebhookSender,
        secrets: SecretSource,
        sender: str,
        policy: domain.RetryPolicy | None = None,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.mailer = mailer
        self.webhooks = webhooks
        self.secrets = secrets
        self.sender = sender
        self.policy = policy or domain.RetryPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.outcomes: dict[tuple[str, str], int] = {}

    def channels(self, event: KeyEvent) -> dict[str, str]:
        if not event.key.notify_sealed:
            return {}
        notify = json.loads(self.cipher.decrypt(event.key.notify_sealed, context=NOTIFY_CONTEXT))
        found = {domain.EMAIL: notify.get("email"), domain.WEBHOOK: notify.get("webhook_url")}
        return {channel: str(target) for channel, target in found.items() if target}

    async def on_event(self, event: KeyEvent) -> float | None:
        """Deliver what is still due for this event; return seconds until it should be seen again
        (a retry is pending), or None when every channel is delivered or given up."""
        notice = domain.notice_for(event)
        if notice is None:
            return None
        if self.clock() - notice.occurred_at > self.policy.give_up_after:
            # A consumer created on an old stream replays history: a notice this old helps nobody.
            log.info(
                "skipping %s for %s: the event is older than %s",
                notice.purpose,
                notice.key_id,
                self.policy.give_up_after,
            )
            return None
        waits: list[float] = []
        for channel, target in self.channels(event).items():
            delivery = await self.store.ensure_delivery(notice, channel)
            wait = await self._deliver(delivery, notice, channel, target)
            if wait is not None:
                waits.append(wait)
        return min(waits) if waits else None

    async def _deliver(
        self, delivery: domain.Delivery, notice: domain.Notice, channel: str, target: str
    ) -> float | None:
        if delivery.status in (domain.DELIVERED, domain.FAILED):
            return None
        now = self.clock()
        if delivery.next_attempt_at is not None and now < delivery.next_attempt_at:
            return (delivery.next_attempt_at - now).total_seconds()
        attempt_id = await self.store.start_attempt(delivery.id, now)
        try:
            if channel == domain.EMAIL:
                result = await self._mail(notice, target)
            else:
                result = await self._post(notice, target)
        except Exception as exc:  # an adapter bug or an unexpected error: temporary, logged, retried
            result = Result(domain.RETRY, f"{type(exc).__name__}: {exc}")
        # The detail goes into the delivery log and the service log: it quotes SMTP servers, receivers
        # and exceptions, so it is kept to one bounded line.
        result = Result(result.outcome, one_line(result.detail, 1000), result.retry_after)
        finished = self.clock()
        delay: float | None = None
        status = result.outcome
        if result.outcome == domain.RETRY:
            first = delivery.first_attempt_at or now
            delay = domain.next_delay(
                self.policy, delivery.attempts + 1, first, finished, result.retry_after, self.rng
            )
            if delay is None:
                status = domain.FAILED
                result = Result(domain.FAILED, f"gave up after {self.policy.give_up_after}: {result.detail}")
            else:
                status = "retrying"
        await self.store.finish_attempt(
            delivery.id,
            attempt_id,
            result.outcome,
            result.detail,
            finished,
            status=status,
            next_attempt_at=finished + timedelta(seconds=delay) if delay is not None else None,
        )
        self.outcomes[(channel, result.outcome)] = self.outcomes.get((channel, result.outcome), 0) + 1
        log.info(
            "%s %s for %s: %s (%s)",
            channel,
            one_line(notice.purpose, 64),
            one_line(notice.key_id, 64),
            result.outcome,
            result.detail,
        )
        return delay

    async def _mail(self, notice: domain.Notice, address: str) -> Result:
        try:
            message = domain.email_message(notice, self.sender, address)
        except domain.UndeliverableAddress as exc:
            # No retry can make a malformed address deliverable (a new one comes by PATCH).
            return Result(domain.FAILED, str(exc))
        return await self.mailer.send(message)

    async def _post(self, notice: domain.Notice, url: str) -> Result:
        secrets = await self.secrets.webhook_secrets(notice.account_id)
        if not secrets:
            # The issuer makes a secret when the account has none; an empty answer is a fault to retry,
            # never a reason to send unsigned.
            return Result(domain.RETRY, "no webhook secret from the issuer; nothing is sent unsigned")
        body = domain.webhook_body(notice)
        timestamp = int(self.clock().timestamp())
        headers = domain.webhook_headers(secrets, notice.webhook_id(), timestamp, body)
        return await self.webhooks.post(url, body, headers)
