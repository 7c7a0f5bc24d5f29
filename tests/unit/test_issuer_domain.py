from datetime import UTC, datetime, timedelta

import pytest

from services.issuer import domain
from shared.errors import Forbidden, InvalidInput

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def test_unknown_scope_is_a_422_naming_it() -> None:
    with pytest.raises(InvalidInput) as info:
        domain.check_scopes(["compute:read", "compute:fly"], ["compute:admin"])
    assert "compute:fly" in info.value.message and info.value.field == "scopes"


def test_no_escalation() -> None:
    with pytest.raises(Forbidden, match="storage:read"):
        domain.check_scopes(["storage:read"], ["compute:admin", "admin:write"])
    assert domain.check_scopes(["compute:read"], ["compute:write"]) == ["compute:read"]


def test_cidrs_are_canonical_networks_and_bad_ones_named() -> None:
    assert domain.check_cidrs(["203.0.113.7/24", "::1/128"]) == ["203.0.113.0/24", "::1/128"]
    with pytest.raises(InvalidInput, match=r"'10\.0\.0\.0/33'"):
        domain.check_cidrs(["10.0.0.0/33"])


def test_expiry_rules() -> None:
    assert domain.resolve_expiry(NOW, None, None, 90) == (NOW + timedelta(days=90), 90)
    at = NOW + timedelta(seconds=16)
    assert domain.resolve_expiry(NOW, None, at, 90) == (at, None)
    for args in ((5, at), (None, NOW - timedelta(seconds=1)), (None, NOW + timedelta(days=366))):
        with pytest.raises(InvalidInput):
            domain.resolve_expiry(NOW, args[0], args[1], 90)


def test_effective_status_follows_the_clock() -> None:
    later = NOW + timedelta(hours=1)
    assert domain.effective_status("active", later, None, NOW) == "active"
    assert domain.effective_status("active", later, None, later) == "expired"
    assert domain.effective_status("rotating", later, NOW, NOW) == "revoked"
    assert domain.effective_status("revoked", later, None, NOW) == "revoked"
