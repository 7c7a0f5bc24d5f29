"""The hot path's reshaped token checks give the same answers as shared.tokens, and IP matching is by
network and version (IPv4-mapped IPv6 peers count as IPv4)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from services.validator.addresses import parse_ip
from services.validator.domain import decide
from services.validator.keyring import digest_with
from services.validator.projection import Projection
from services.validator.token_shape import well_formed
from shared import tokens
from shared.validation import Code
from tests.support.factories import token_view


def test_digest_matches_hmac_for_short_and_long_peppers() -> None:
    token = tokens.generate("stg")
    for pepper in (b"p", b"x" * 64, b"y" * 65, bytes(range(200))):
        assert digest_with(pepper, token) == tokens.digest(pepper, token)


def test_well_formed_matches_the_reference() -> None:
    rng = random.Random(7)
    samples = [tokens.generate(env) for env in ("prod", "stg", "dev") for _ in range(50)]
    mutated = []
    for token in samples:
        i = rng.randrange(len(token))
        mutated.append(token[:i] + rng.choice(tokens.ALPHABET + "_-") + token[i + 1 :])
    extra = ["", "cnx_prod_", "cnx_qa_" + "a" * 36, samples[0][:-1], samples[0] + "a"]
    for candidate in samples + mutated + extra:
        assert well_formed(candidate) == tokens.is_well_formed(candidate), candidate
    assert not well_formed(samples[0] + "\n"), "stricter than a $-anchored regex"
    assert all(well_formed(t) for t in samples)


def test_ip_networks_match_by_version_and_mapped_ipv4() -> None:
    token = tokens.generate("prod")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    projection = Projection()
    projection.apply(token_view(token, b"p", now, ip_allowlist=["127.0.0.0/8", "2001:db8::/32"]))

    def code(ip: str | None) -> str:
        return str(decide(projection, [b"p"], token, None, ip, None, now.timestamp())[0]["code"])

    assert code("127.0.0.1") == Code.VALID
    assert code("::ffff:127.0.0.1") == Code.VALID
    assert code("2001:db8::1") == Code.VALID
    assert code("::7f00:1") == Code.IP_NOT_ALLOWED
    assert code("10.0.0.1") == Code.IP_NOT_ALLOWED
    assert code(None) == Code.IP_NOT_ALLOWED
    assert parse_ip("nonsense") is None
