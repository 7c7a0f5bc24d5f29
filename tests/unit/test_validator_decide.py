from datetime import UTC, datetime, timedelta

from services.validator.domain import decide
from services.validator.projection import Projection
from shared import tokens
from shared.events import KeyView
from shared.validation import Code
from tests.support.factories import token_view

PEPPER = b"unit-pepper"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def make_view(token: str, revision: int = 1, **changes: object) -> KeyView:
    changes.setdefault("scopes", ["compute:read", "storage:write"])
    return token_view(token, PEPPER, NOW, revision, **changes)


def check(
    projection: Projection,
    token: str | None,
    scope: str | None = None,
    ip: str | None = None,
    env: str | None = None,
    at: datetime = NOW,
) -> str:
    reply, _ = decide(projection, [PEPPER], token, scope, ip, env, at.timestamp())
    return str(reply["code"])


def test_codes_in_order_of_the_checks() -> None:
    token = tokens.generate("prod")
    projection = Projection()
    projection.apply(make_view(token))
    assert check(projection, None) == Code.MISSING
    assert check(projection, "garbage") == Code.MALFORMED
    assert check(projection, token[:-1] + ("A" if token[-1] != "A" else "B")) == Code.MALFORMED
    assert check(projection, tokens.generate("prod")) == Code.NOT_FOUND
    assert check(projection, token, "compute:read") == Code.VALID
    assert check(projection, token, "storage:read") == Code.VALID
    assert check(projection, token, "compute:write") == Code.SCOPE_DENIED
    assert check(projection, token, "no:such") == Code.SCOPE_DENIED
    assert check(projection, token, env="dev") == Code.ENV_MISMATCH


def test_expiry_is_enforced_to_the_second() -> None:
    token = tokens.generate("prod")
    projection = Projection()
    expires = NOW + timedelta(seconds=10)
    projection.apply(make_view(token, expires_at=expires))
    assert check(projection, token, at=expires - timedelta(milliseconds=1)) == Code.VALID
    assert check(projection, token, at=expires) == Code.EXPIRED


def test_rotating_key_is_valid_until_grace_ends() -> None:
    token = tokens.generate("prod")
    projection = Projection()
    grace = NOW + timedelta(seconds=6)
    projection.apply(make_view(token, status="rotating", grace_until=grace))
    assert check(projection, token, at=grace - timedelta(milliseconds=1)) == Code.VALID
    assert check(projection, token, at=grace) == Code.REVOKED


def test_revisions_make_events_idempotent() -> None:
    token = tokens.generate("prod")
    projection = Projection()
    assert projection.apply(make_view(token, revision=1))
    assert projection.apply(make_view(token, revision=2, status="revoked"))
    assert not projection.apply(make_view(token, revision=1))  # a late duplicate of the creation
    assert check(projection, token) == Code.REVOKED


def test_ip_allowlist_matches_networks() -> None:
    token = tokens.generate("prod")
    projection = Projection()
    projection.apply(make_view(token, ip_allowlist=["203.0.113.0/24", "::1/128"]))
    assert check(projection, token, ip="203.0.113.7") == Code.VALID
    assert check(projection, token, ip="::1") == Code.VALID
    assert check(projection, token, ip="127.0.0.1") == Code.IP_NOT_ALLOWED
    assert check(projection, token, ip=None) == Code.IP_NOT_ALLOWED
    assert check(projection, token, ip="not-an-ip") == Code.IP_NOT_ALLOWED
