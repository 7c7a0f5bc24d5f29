"""KeyUsed by outcome: the validator counts allowed and refused validations of a known key apart (plain
counters, as before), and an older validator's event reads as all allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import tokens
from shared.events import KeyUsed, parse_event
from shared.validation import Code
from tests.unit.test_validator_ratelimit import add_key, make_service


def test_refusals_of_a_known_key_are_counted_apart_from_uses() -> None:
    service, clock, _ = make_service()
    token = add_key(service, ip_allowlist=["10.0.0.0/8"])
    assert service.validate(token, "compute:read", "10.1.1.1")["valid"]
    assert service.validate(token, "compute:write", "10.1.1.1")["code"] == Code.SCOPE_DENIED
    assert service.validate(token, "compute:read", "192.0.2.1")["code"] == Code.IP_NOT_ALLOWED
    assert service.validate(token, "compute:read", "10.1.1.1", "stg")["code"] == Code.ENV_MISMATCH
    # Nobody's keys and malformed ones are no key's usage.
    assert service.validate(tokens.generate("prod"), "compute:read", "10.1.1.1")["code"] == Code.NOT_FOUND
    assert service.validate("cnx_prod_nope", "compute:read", "10.1.1.1")["code"] == Code.MALFORMED
    (used,) = service.take_usage()
    assert (used.count, used.allowed, used.refused, used.outcomes) == (4, 1, 3, (1, 3))
    assert used.last_used_at.timestamp() == clock.now


def test_a_key_refused_only_is_reported_with_the_time_of_its_last_refusal() -> None:
    service, clock, _ = make_service()
    token = add_key(service, status="revoked")
    clock.now += 5
    assert service.validate(token)["code"] == Code.REVOKED
    (used,) = service.take_usage()
    assert (used.count, used.allowed, used.refused) == (1, 0, 1)
    assert used.last_used_at.timestamp() == clock.now
    assert service.take_usage() == []


def test_an_older_validators_event_reads_as_all_allowed() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    old = {
        "type": "KeyUsed",
        "version": 1,
        "event_id": "e",
        "occurred_at": now.isoformat(),
        "account_id": "a",
        "key_id": "k",
        "last_used_at": (now - timedelta(seconds=1)).isoformat(),
        "count": 7,
    }
    event = parse_event(old)
    assert isinstance(event, KeyUsed) and event.outcomes == (7, 0)
    assert KeyUsed.model_validate({**old, "allowed": 5, "refused": 2}).outcomes == (5, 2)
