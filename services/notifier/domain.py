"""Pure rules of the notifier: what a notice says, how a webhook is signed, what is worth retrying.

No I/O and no clock: `now` and randomness are arguments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from shared import email_address
from shared.events import KeyEvent, KeyExpired, KeyExpiring, KeyRevoked, KeyRotated, RevocationCause
from shared.text import one_line
from shared.timeutil import iso

# How an issuer older than KeyRevoked.cause said a grace period ended: its events are read by this text.
LEGACY_GRACE_ENDED_REASON = "rotation grace period ended"

EMAIL = "email"
WEBHOOK = "webhook"

# Outcomes of one attempt.
DELIVERED = "delivered"
RETRY = "retry"
FAILED = "failed"  # permanent: never retried


def grace_ended(event: KeyRevoked) -> bool:
    """The revocation is a rotation's grace period ending: by its cause, or, for an event from before
    causes were sent (`cause` is None), by the issuer's text."""
    if event.cause is not None:
        return event.cause == RevocationCause.GRACE_ENDED
    return event.reason == LEGACY_GRACE_ENDED_REASON


@dataclass(frozen=True, slots=True)
class Notice:
    """One notice to send, whatever the channel: identified by (key, purpose, expiry)."""

    type: str  # key.expiring | key.expired | key.rotated | key.revoked
    purpose: str  # expiring-7d, expired, rotated, revoked, grace-ended
    key_id: str
    account_id: str
    prefix: str
    name: str
    environment: str
    expires_at: datetime | None
    occurred_at: datetime
    extra: dict[str, Any]

    def dedupe_key(self, channel: str) -> str:
        expiry = self.expires_at.astimezone(UTC).isoformat() if self.expires_at else "-"
        return hashlib.sha256(f"{self.key_id}|{self.purpose}|{expiry}|{channel}".encode()).hexdigest()[:40]

    def webhook_id(self) -> str:
        """Stable across retries and redeliveries, so receivers can de-duplicate (Standard Webhooks)."""
        return "msg_" + self.dedupe_key(WEBHOOK)[:32]


# The delivery log keeps at most this much of an attempt's detail (an SMTP reply, an exception).
MAX_DETAIL = 500


@dataclass(frozen=True, slots=True)
class Delivery:
    """The delivery of one notice on one channel (id: `Notice.dedupe_key(channel)`), as the delivery
    log holds it: written before its first attempt, so a redelivered event finds what was done."""

    id: str
    key_id: str
    account_id: str
    channel: str
    purpose: str
    type: str
    expires_at: datetime | None
    status: str  # pending | retrying | delivered | failed
    attempts: int
    first_attempt_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a delivery, logged `started` before sending and with its outcome after."""

    id: int
    delivery_id: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str  # started | delivered | retry | failed
    detail: str | None


def notice_for(event: KeyEvent) -> Notice | None:
    """The notice an event calls for, or None. A revocation that ends a grace period is the
    "grace period ends" notice."""
    key = event.key
    extra: dict[str, Any] = {}
    if isinstance(event, KeyExpiring):
        kind, purpose = "key.expiring", f"expiring-{event.notice}"
        extra["notice"] = event.notice
    elif isinstance(event, KeyExpired):
        kind, purpose = "key.expired", "expired"
    elif isinstance(event, KeyRotated):
        kind, purpose = "key.rotated", "rotated"
        extra.update(new_key_id=event.new_key_id, grace_until=iso(event.grace_until))
    elif isinstance(event, KeyRevoked):
        kind = "key.revoked"
        purpose = "grace-ended" if grace_ended(event) else "revoked"
        extra["reason"] = event.reason
        if event.leak_source or event.leak_url:
            # Revoked because its secret was found in the open: the owner must learn where.
            extra.update(leak_source=event.leak_source, leak_url=event.leak_url)
    else:
        return None
    return Notice(
        type=kind,
        purpose=purpose,
        key_id=key.key_id,
        account_id=key.account_id,
        prefix=key.prefix,
        name=key.name,
        environment=key.environment,
        expires_at=key.expires_at,
        occurred_at=event.occurred_at,
        extra=extra,
    )


def webhook_body(notice: Notice) -> bytes:
    body = {
        "type": notice.type,
        "timestamp": iso(notice.occurred_at),
        "data": None,
        "key_id": notice.key_id,
        "prefix": notice.prefix,
        "name": notice.name,
        "environment": notice.environment,
        "expires_at": iso(notice.expires_at),
        **notice.extra,
    }
    # Standard Webhooks puts the payload under `data`; the flat fields stay for simple receivers.
    body["data"] = {k: v for k, v in body.items() if k not in ("type", "timestamp", "data")}
    return json.dumps(body, separators=(",", ":")).encode()


def signing_key(secret: str) -> bytes:
    """`whsec_<base64>`: the HMAC key is the base64-decoded part after the prefix."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    digest = hmac.new(signing_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, part) for part in header.split())


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Signed with every secret given, the current one first: after a rotation the previous secret
    still signs during the overlap (Standard Webhooks: space-separated signatures, any one may match),
    so a receiver can switch to the new secret whenever it likes. Nothing is ever sent unsigned."""
    if not secrets:
        raise ValueError("a webhook is never sent unsigned: no secret given")
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets),
        "user-agent": "CloudNexus-Keys-Webhooks/1",
    }


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "never"


class UndeliverableAddress(ValueError):
    """The notification address can never receive mail (it fails the address rule, as a row stored
    under older rules may): a permanent failure, never retried."""


# Caps on what one stored string may take of a mail: a subject stays readable in a mail client.
_NAME_IN_SUBJECT = 100
_TEXT_FIELD = 1000


def email_message(notice: Notice, sender: str, to: str) -> EmailMessage:
    """Subject and text name the key (prefix, name, environment), its expiry and what to do.

    Every string that came from a key or an event goes through `one_line` before it is written,
    headers and text alike: a control character (CR/LF above all) can never start a header of its own
    or reach a mail client raw, whatever an older stored row or a platform event carries. The address
    is checked by the same rule the API applies; one that fails it raises `UndeliverableAddress`.
    """
    try:
        address = email_address.normalise(to)
    except email_address.InvalidEmail as exc:
        raise UndeliverableAddress(f"the notification address is not deliverable: {exc}") from None
    prefix = one_line(notice.prefix, 40)
    name = one_line(notice.name, _NAME_IN_SUBJECT)
    key_id = one_line(notice.key_id, 64)
    label = f"{prefix}... ({one_line(notice.name, _TEXT_FIELD)}, {one_line(notice.environment, 10)})"
    when = _when(notice.expires_at)

    def extra(field: str, default: str = "") -> str:
        value = notice.extra.get(field)
        return one_line(str(value), _TEXT_FIELD) if value else default

    how = (
        'To keep access without interruption, rotate it (POST /v2/keys/rotate {"key_id": '
        f'"{key_id}"}}) or renew it (POST /v2/keys/{key_id}/renew), or use the '
        "Developer Console."
    )
    if notice.type == "key.expiring":
        subject = f"[CloudNexus] API key {prefix} ({name}) expires {when}"
        text = f"Your API key {label} expires at {when}.\n\n{how}\n"
    elif notice.type == "key.expired":
        subject = f"[CloudNexus] API key {prefix} ({name}) has expired"
        text = (
            f"Your API key {label} expired at {when} and is no longer accepted.\n\n"
            "Create a new key in the Developer Console or with POST /v2/keys.\n"
        )
    elif notice.type == "key.rotated":
        subject = f"[CloudNexus] API key {prefix} ({name}) was rotated"
        text = (
            f"Your API key {label} was rotated; the new key is {extra('new_key_id')}.\n"
            f"The old key keeps working until {extra('grace_until')} and is then revoked. "
            f"It expires at {when}.\n\n"
            "Move your callers to the new key before then.\n"
        )
    else:
        if notice.purpose == "grace-ended":
            subject = f"[CloudNexus] Grace period ended: API key {prefix} ({name}) revoked"
            text = (
                f"The rotation grace period of your API key {label} has ended and the old key is now "
                f"revoked. Its expiry was {when}.\n\nCallers must use the new key.\n"
            )
        elif "leak_source" in notice.extra:
            subject = f"[CloudNexus] API key {prefix} ({name}) was revoked: it leaked"
            text = (
                f"Your API key {label} was found exposed in public and has been revoked.\n\n"
                f"Where it was found: {extra('leak_url', 'not given by the reporter')}\n"
                f"Reported by: {extra('leak_source', 'a secret scanner')}\n\n"
                "Anyone who saw it there could have used it until now: check what it was used for, "
                "remove it from that place (and its history), and create or rotate a key in the "
                "Developer Console or with the management API. Keep keys out of code and commits.\n"
            )
        else:
            subject = f"[CloudNexus] API key {prefix} ({name}) was revoked"
            text = (
                f"Your API key {label} was revoked ({extra('reason', 'no reason given')}); "
                f"it expired at {when}."
                "\n\nCreate or rotate a key in the Developer Console or with the management API.\n"
            )
    message = EmailMessage()
    message["From"] = sender
    message["To"] = address
    message["Subject"] = subject
    # The same Message-ID on every attempt, so a duplicate after a crash is recognisable.
    message["Message-ID"] = f"<{notice.dedupe_key(EMAIL)}@keys.cloudnexus>"
    message["X-CloudNexus-Key-Id"] = key_id
    message.set_content(text)
    return message


# Retry classification.


def classify_smtp(code: int | None) -> str:
    """SMTP reply code of a failure (None: could not connect or timed out). 4xx and no answer are
    temporary; 5xx is permanent."""
    if code is None or 400 <= code < 500:
        return RETRY
    if 200 <= code < 400:
        return DELIVERED
    return FAILED


def classify_http(status: int | None) -> str:
    """HTTP status of a webhook POST (None: timeout or connection error). 2xx delivered; 410 Gone means
    the receiver asked us to stop; anything else (5xx, 429, other 4xx, no answer) is retried."""
    if status is None:
        return RETRY
    if 200 <= status < 300:
        return DELIVERED
    if status == 410:
        return FAILED
    return RETRY


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(hours=1)
    give_up_after: timedelta = timedelta(days=1)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def next_delay(
    policy: RetryPolicy,
    attempts: int,
    first_attempt: datetime,
    now: datetime,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before the next attempt after `attempts` failures, or None to give up.

    Exponential backoff with jitter (between half and all of base * 2^(attempts-1), capped); a
    `Retry-After` from the receiver is honoured when longer. Gives up once the next attempt would
    fall beyond `give_up_after` from the first.
    """
    rng = rng or random.Random()
    growth: int = 2 ** max(attempts - 1, 0)  # int ** int is typed Any (a negative power is a float)
    ceiling = min(policy.base.total_seconds() * growth, policy.cap.total_seconds())
    delay = ceiling / 2 + rng.random() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    if (now - first_attempt).total_seconds() + delay > policy.give_up_after.total_seconds():
        return None
    return delay
