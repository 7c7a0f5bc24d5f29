"""The hot path's precomputed forms give the answers of the plain rules: allowed-scope sets vs scope
parsing, integer networks vs `ipaddress`, `round3` vs `round`, the address throttle's one float vs a
bucket, the limiter's inlined take vs `Bucket.take`; and `decide` as a whole vs a reference written
with the plain rules, over a random request mix."""

from __future__ import annotations

import gc
import ipaddress
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.validator.addresses import address_value, parse_ip
from services.validator.domain import decide
from services.validator.projection import P_ALLOWED, Entry, Projection
from services.validator.ratelimit import Bucket, FailureThrottle, KeyLimiter, round3, shape_of
from services.validator.service import ValidatorService
from shared import scopes as scope_rules
from shared import tokens
from shared.events import KeyView, RateLimit
from shared.validation import Code
from tests.support.factories import key_view

PEPPER = b"unit-pepper"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
JUNK_SCOPES = ["", "compute", "compute:", ":read", "compute:read:x", "Compute:read", "compute:READ", "x:read"]


def view(token: str, key_id: str, **changes: Any) -> KeyView:
    """A key view for `token` (its real digest and prefix), expiring a day after NOW."""
    fields: dict[str, Any] = dict(
        key_id=key_id,
        account_id="acct_" + key_id,
        prefix=tokens.display_prefix(token),
        digest=tokens.digest(PEPPER, token),
        environment=tokens.parse(token).environment,
        expires_at=NOW + timedelta(days=1),
    )
    return key_view(NOW, **(fields | changes))


def test_allowed_scopes_are_what_the_grants_satisfy() -> None:
    projection = Projection()
    rng = random.Random(3)
    for i in range(40):
        granted = rng.sample(scope_rules.ALL_SCOPES, rng.randrange(1, 5))
        projection.apply(view(tokens.generate("prod"), f"k{i}", scopes=granted))
        entry = projection.entry(f"k{i}")
        assert entry is not None
        grants = scope_rules.grants(granted)
        for scope in (*scope_rules.ALL_SCOPES, *JUNK_SCOPES):
            try:
                resource, level = scope_rules.parse(scope)
                expected = grants.get(resource, 0) >= level
            except scope_rules.UnknownScope:
                expected = False
            assert (scope in entry.profile[P_ALLOWED]) == expected, (granted, scope)


def test_address_value_is_ipaddress_as_integers() -> None:
    rng = random.Random(5)
    samples = [
        "1.2.3.4",
        "0.0.0.0",
        "255.255.255.255",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4 ",
        "256.1.1.1",
        "1.2.3.0x4",
        "::1",
        "2001:db8::1",
        "::ffff:10.1.2.3",
        "::7f00:1",
        "fe80::1%eth0",
        "",
        "nonsense",
        "1.2.3.4\x00",
    ]
    samples += [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(200)]
    for ip in samples:
        address = parse_ip(ip) if ip else None
        expected = None if address is None else (address.version, int(address))
        assert address_value(ip) == expected, ip
    assert address_value(None) is None


def test_round3_is_round() -> None:
    rng = random.Random(11)
    values = [0.0, 1e-9, 0.0005, 0.0625, 1.0005, 2.5e-4, 0.1235, 99.9995, 1e6, 1e6 + 0.0005, 5e7 / 3]
    values += [n / 2000 for n in range(0, 20_000)]  # every x.xxx5 tie
    values += [rng.uniform(0, 200) for _ in range(20_000)] + [rng.uniform(0, 1e7) for _ in range(2_000)]
    for x in values:
        assert round3(x) == round(x, 3), x
        assert str(round3(x)) == str(round(x, 3)), x


class ReferenceThrottle:
    """The address throttle as a bucket per address (what FailureThrottle's one float stands for)."""

    def __init__(self, per_minute: int) -> None:
        self.shape = (per_minute / 60.0, float(per_minute))
        self.buckets: dict[str, Bucket] = {}

    def blocked(self, address: str, now: float) -> float:
        bucket = self.buckets.get(address)
        if bucket is None:
            return 0.0
        bucket.refill(now)
        return bucket.retry_after() if bucket.tokens < 1.0 else 0.0

    def failed(self, address: str, now: float) -> None:
        bucket = self.buckets.setdefault(address, Bucket(self.shape, now))
        bucket.refill(now)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)


def test_failure_throttle_matches_a_bucket_per_address() -> None:
    rng = random.Random(13)
    throttle, reference = FailureThrottle(per_minute=30), ReferenceThrottle(30)
    now = 1_800_000_000.0
    for _ in range(20_000):
        now += rng.choice((0.0, 0.01, 0.1, 1.0, 2.5, 30.0))
        address = f"10.0.0.{rng.randrange(4)}"
        if rng.random() < 0.6:
            throttle.failed(address, now)
            reference.failed(address, now)
        assert throttle.blocked(address, now) == pytest.approx(reference.blocked(address, now), abs=1e-6)
    pruned = throttle.prune(now + 120)
    assert pruned == 4 and not throttle.addresses


def test_limiter_admit_matches_bucket_take_through_plan_changes() -> None:
    rng = random.Random(17)
    shapes = [shape_of("starter", None), shape_of("professional", None), (10.0, 50.0)]
    limiter = KeyLimiter()
    reference: dict[str, Bucket] = {}
    now = 1_800_000_000.0
    for _ in range(30_000):
        now += rng.choice((0.0, 0.001, 0.05, 0.5, 3.0))
        key_id = f"k{rng.randrange(3)}"
        shape = shapes[rng.randrange(3)] if rng.random() < 0.02 else shapes[int(key_id[1])]
        assert shape is not None
        bucket = reference.get(key_id)
        if bucket is None:
            bucket = reference[key_id] = Bucket(shape, now)
        elif (bucket.rate, bucket.capacity) != shape:
            bucket.reshape(shape, now)
        expected = bucket.take(now)
        admitted, got = limiter.admit(key_id, shape, now)
        assert admitted == expected
        assert (got.tokens, got.stamp, got.rate, got.capacity) == (
            bucket.tokens,
            bucket.stamp,
            bucket.rate,
            bucket.capacity,
        )


def reference_decide(
    views: list[KeyView], key: str | None, scope: str | None, ip: str | None, now: float
) -> str:
    """The validation rules of DESIGN.md in their plain form: no interning, no inlining."""
    if not key:
        return Code.MISSING
    if not tokens.is_well_formed(key):
        return Code.MALFORMED
    digest = tokens.digest(PEPPER, key)
    found = [v for v in views if v.digest == digest]
    if not found:
        return Code.NOT_FOUND
    v = found[0]
    if v.status == "revoked" or (
        v.status == "rotating" and v.grace_until and now >= v.grace_until.timestamp()
    ):
        return Code.REVOKED
    if v.status == "expired" or (v.expires_at and now >= v.expires_at.timestamp()):
        return Code.EXPIRED
    if v.ip_allowlist:
        address = parse_ip(ip) if ip else None
        networks = [ipaddress.ip_network(c, strict=False) for c in v.ip_allowlist]
        if address is None or not any(n.version == address.version and address in n for n in networks):
            return Code.IP_NOT_ALLOWED
    if scope:
        try:
            resource, level = scope_rules.parse(scope)
        except scope_rules.UnknownScope:
            return Code.SCOPE_DENIED
        if scope_rules.grants(v.scopes).get(resource, 0) < level:
            return Code.SCOPE_DENIED
    return Code.VALID


def test_decide_matches_the_plain_rules() -> None:
    rng = random.Random(19)
    now = NOW.timestamp()
    projection = Projection()
    views: list[KeyView] = []
    tokens_ = []
    for i in range(60):
        token = tokens.generate(rng.choice(("prod", "stg", "dev")))
        status = rng.choice(("active", "active", "active", "revoked", "rotating", "expired"))
        changes: dict[str, Any] = dict(
            status=status,
            scopes=rng.sample(scope_rules.ALL_SCOPES, rng.randrange(1, 4)),
            expires_at=NOW + timedelta(seconds=rng.choice((-10, 10, 3600))),
            ip_allowlist=rng.choice(([], [], ["10.0.0.0/8"], ["2001:db8::/32", "192.0.2.7/32"])),
        )
        if status == "rotating":
            changes["grace_until"] = NOW + timedelta(seconds=rng.choice((-5, 5)))
        v = view(token, f"key_{i}", **changes)
        projection.apply(v)
        views.append(v)
        tokens_.append(token)
    ips = [
        None,
        "10.1.2.3",
        "192.0.2.7",
        "192.0.2.8",
        "2001:db8::5",
        "::ffff:10.0.0.1",
        "nonsense",
        "::7f00:1",
    ]
    scopes = [None, *scope_rules.ALL_SCOPES, "no:such", "compute"]
    for _ in range(5_000):
        kind = rng.random()
        if kind < 0.8:
            key: str | None = rng.choice(tokens_)
        elif kind < 0.85:
            key = tokens.generate("prod")
        elif kind < 0.95:
            token = rng.choice(tokens_)
            key = token[:-1] + ("A" if token[-1] != "A" else "B")
        else:
            key = rng.choice((None, "", "garbage"))
        scope, ip = rng.choice(scopes), rng.choice(ips)
        reply, entry = decide(projection, [PEPPER], key, scope, ip, None, now)
        assert reply["code"] == reference_decide(views, key, scope, ip, now), (key, scope, ip)
        if entry is not None:
            assert reply["key_id"] == entry.key_id and reply["account_id"] == entry.account_id
        if reply["valid"]:
            v = views[tokens_.index(key)]  # type: ignore[arg-type]
            assert reply == {
                "valid": True,
                "code": Code.VALID,
                "key_id": v.key_id,
                "account_id": v.account_id,
                "scopes": v.scopes,
                "environment": v.environment,
            }
            assert list(reply) == ["valid", "code", "key_id", "account_id", "scopes", "environment"]


def test_entry_reads_its_row() -> None:
    token = tokens.generate("stg")
    projection = Projection()
    grace = NOW + timedelta(hours=1)
    projection.apply(
        view(
            token,
            "key_e",
            status="rotating",
            grace_until=grace,
            plan="enterprise",
            rate_limit=RateLimit(requests_per_minute=600, burst=50),
            ip_allowlist=["10.0.0.0/8"],
            scopes=["storage:write"],
            revision=3,
        )
    )
    entry = projection.entry("key_e")
    assert isinstance(entry, Entry)
    assert (entry.key_id, entry.account_id, entry.environment, entry.status) == (
        "key_e",
        "acct_key_e",
        "stg",
        "rotating",
    )
    assert entry.scopes == ["storage:write"] and entry.grants == {"storage": 2}
    assert entry.grace_until == grace.timestamp() and entry.revision == 3 and entry.plan == "enterprise"
    assert entry.shape == (10.0, 50.0) and entry.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    reply, found = decide(projection, [PEPPER], token, None, "10.9.9.9", None, NOW.timestamp())
    assert reply["valid"] and found == entry and found is not None and found.row == entry.row


def test_usage_is_counted_per_key_and_taken_once() -> None:
    clock = [1_800_000_000.0]
    service = ValidatorService(None, peppers=[PEPPER], clock=lambda: clock[0])  # type: ignore[arg-type]
    first, second = tokens.generate("prod"), tokens.generate("prod")
    service.projection.apply(view(first, "key_a", expires_at=NOW + timedelta(days=3650)))
    service.projection.apply(
        view(second, "key_b", expires_at=NOW + timedelta(days=3650), plan="professional")
    )
    for _ in range(3):
        assert service.validate(first)["valid"]
        clock[0] += 1.0
    assert service.validate(second)["valid"]
    used = {u.key_id: u for u in service.take_usage()}
    assert used["key_a"].count == 3 and used["key_b"].count == 1
    assert used["key_a"].account_id == "acct_key_a"
    assert used["key_a"].last_used_at.timestamp() == 1_800_000_002.0
    assert used["key_b"].last_used_at.timestamp() == 1_800_000_003.0
    assert service.take_usage() == []


class OneViewStore:
    def __init__(self, text: str) -> None:
        self.text = text

    async def stream_views(self, cutoff: float = float("-inf")) -> Any:
        yield [(self.text, None)]

    async def load_plans(self) -> list[Any]:
        return []

    async def last_seq(self) -> int:
        return 7


async def test_hydrate_freezes_the_heap_only_when_asked() -> None:
    text = view(tokens.generate("prod"), "key_h").model_dump_json()
    before = gc.get_freeze_count()
    service = ValidatorService(OneViewStore(text), peppers=[PEPPER])  # type: ignore[arg-type]
    assert await service.hydrate() == 1 and service.last_seq == 7
    assert gc.get_freeze_count() == before
    frozen = ValidatorService(OneViewStore(text), peppers=[PEPPER], freeze_heap=True)  # type: ignore[arg-type]
    try:
        assert await frozen.hydrate() == 1
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
