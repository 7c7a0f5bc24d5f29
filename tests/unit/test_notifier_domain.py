"""Pure rules of the notifier: Standard Webhooks signatures, retry classification and backoff, notices."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier import domain
from shared.events import KeyExpiring, KeyRevoked, KeyView, RevocationCause
from tests.support.factories import key_view

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def view() -> KeyView:
    return key_view(NOW, 2, name="ci", environment="stg", expires_at=NOW + timedelta(days=1))


def test_signature_follows_standard_webhooks() -> None:
    body = b'{"type":"key.expiring"}'
    header = domain.sign(SECRET, "msg_1", 1700000000, body)
    expected = hmac.new(b"k" * 32, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert header == "v1," + base64.b64encode(expected).decode()
    assert domain.verify(SECRET, "msg_1", 1700000000, body, "v1,bogus " + header)
    assert not domain.verify(SECRET, "msg_1", 1700000001, body, header)
    headers = domain.webhook_headers([SECRET], "msg_1", 1700000000, body)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == header
    with pytest.raises(ValueError):
        domain.webhook_headers([], "msg_1", 1, body)  # never unsigned


def test_during_an_overlap_each_secret_signs_the_new_one_first() -> None:
    body = b'{"type":"key.revoked"}'
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    header = domain.webhook_headers([SECRET, old], "msg_2", 1700000000, body)["webhook-signature"]
    new_part, old_part = header.split(" ")
    assert new_part == domain.sign(SECRET, "msg_2", 1700000000, body)
    assert old_part == domain.sign(old, "msg_2", 1700000000, body)
    assert domain.verify(old, "msg_2", 1700000000, body, header)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (None, domain.RETRY),
        (421, domain.RETRY),
        (451, domain.RETRY),
        (450, domain.RETRY),
        (550, domain.FAILED),
        (554, domain.FAILED),
        (250, domain.DELIVERED),
    ],
)
def test_smtp_classification(code: int | None, outcome: str) -> None:
    assert domain.classify_smtp(code) == outcome


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, domain.RETRY),
        (500, domain.RETRY),
        (503, domain.RETRY),
        (429, domain.RETRY),
        (410, domain.FAILED),
        (200, domain.DELIVERED),
        (204, domain.DELIVERED),
    ],
)
def test_http_classification(status: int | None, outcome: str) -> None:
    assert domain.classify_http(status) == outcome


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = domain.RetryPolicy(base=timedelta(seconds=5), cap=timedelta(hours=1))
    rng = random.Random(1)
    delays = [domain.next_delay(policy, n, NOW, NOW, rng=rng) for n in range(1, 15)]
    assert all(d is not None for d in delays)
    assert 2.5 <= delays[0] <= 5 and 5 <= delays[1] <= 10  # type: ignore[operator]
    assert max(delays) <= 3600  # type: ignore[type-var]
    assert len(set(delays)) == len(delays)


def test_retry_after_is_honoured_and_retries_stop_after_a_day() -> None:
    policy = domain.RetryPolicy()
    assert domain.next_delay(policy, 1, NOW, NOW, retry_after=120) == 120
    late = NOW + timedelta(hours=23, minutes=59)
    assert domain.next_delay(policy, 20, NOW, late) is None
    assert domain.parse_retry_after("30", NOW) == 30
    assert domain.parse_retry_after("Thu, 01 Jan 2026 12:01:00 GMT", NOW) == 60
    assert domain.parse_retry_after("soon", NOW) is None


def test_notice_names_the_key_and_is_identified_by_key_purpose_and_expiry() -> None:
    event = KeyExpiring(account_id="acct", key_id="key_1", key=view(), notice="1d")
    notice = domain.notice_for(event)
    assert notice is not None and notice.type == "key.expiring" and notice.purpose == "expiring-1d"
    again = domain.notice_for(KeyExpiring(account_id="acct", key_id="key_1", key=view(), notice="1d"))
    assert again is not None and again.dedupe_key("email") == notice.dedupe_key("email")
    assert notice.dedupe_key("email") != notice.dedupe_key("webhook")
    body = json.loads(domain.webhook_body(notice))
    assert body["type"] == "key.expiring" and body["key_id"] == "key_1" and body["prefix"] == "cnx_prod_abcd"
    assert body["name"] == "ci" and body["environment"] == "stg"
    assert body["expires_at"] == "2026-01-02T12:00:00Z"
    mail = domain.email_message(notice, "keys@example.com", "owner@example.com")
    assert "cnx_prod_abcd" in mail["Subject"] and "ci" in mail["Subject"]
    text = mail.get_content()
    assert "stg" in text and "2026-01-02 12:00:00 UTC" in text and "renew" in text and "rotate" in text


def test_grace_end_revocation_is_its_own_notice() -> None:
    revoked = KeyRevoked(account_id="acct", key_id="key_1", key=view(), reason="rotation grace period ended")
    ended = domain.notice_for(revoked.model_copy(update={"cause": RevocationCause.GRACE_ENDED}))
    # An older issuer's event has no cause: its text says it.
    legacy = domain.notice_for(revoked)
    by_hand = domain.notice_for(
        KeyRevoked(account_id="acct", key_id="key_1", key=view(), cause=RevocationCause.USER)
    )
    # The cause decides, whatever the text says (an owner's own reason may read like a grace end).
    mimic = domain.notice_for(revoked.model_copy(update={"cause": RevocationCause.USER}))
    assert ended is not None and legacy is not None and by_hand is not None and mimic is not None
    assert ended.purpose == legacy.purpose == "grace-ended"
    assert by_hand.purpose == mimic.purpose == "revoked"
    assert ended.type == by_hand.type == "key.revoked"
