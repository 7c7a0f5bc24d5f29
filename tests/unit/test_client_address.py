"""The client address behind trusted proxies (shared.client_address) and the management API's token
bucket (services.issuer.ratelimit): pure functions, no I/O."""

from __future__ import annotations

import pytest

from services.issuer.ratelimit import ManagementLimiter
from shared.client_address import client_address, parse_networks

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.1.1.1", "203.0.113.9", "203.0.113.9"),  # one hop from our proxy
        ("10.1.1.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the client's own entry is skipped
        ("10.1.1.1", "203.0.113.9, 10.2.2.2", "203.0.113.9"),  # walked past our second proxy
        ("10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),  # all ours: the leftmost
        ("203.0.113.7", "10.9.9.9", "203.0.113.7"),  # an untrusted peer's header is not read
        ("10.1.1.1", None, "10.1.1.1"),
        ("10.1.1.1", " , ", "10.1.1.1"),
        ("::ffff:10.1.1.1", "203.0.113.9", "203.0.113.9"),  # IPv4-mapped peer of a dual-stack socket
        ("fd00::1", "2001:db8::5", "2001:db8::5"),
        ("10.1.1.1", "garbage", "garbage"),  # not an address: matches no allowlist downstream
        (None, "203.0.113.9", None),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, expected: str | None) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("127.0.0.1", "10.9.9.9", ()) == "127.0.0.1"


def test_management_bucket() -> None:
    limiter = ManagementLimiter(per_minute=60, burst=2)
    assert limiter.take("a", 0.0) == 0.0 and limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == pytest.approx(1.0)
    assert limiter.take("b", 0.0) == 0.0  # its own bucket
    assert limiter.take("a", 1.0) == 0.0  # a token a second
    assert ManagementLimiter(per_minute=0, burst=1).take("a", 0.0) == 0.0  # off
