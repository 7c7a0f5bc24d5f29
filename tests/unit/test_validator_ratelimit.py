"""Token bucket math with an injected clock, the address throttle, and the service's use of both."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.validator.ratelimit import Bucket, FailureThrottle, KeyLimiter, shape_of
from services.validator.service import ValidatorService
from shared import tokens
from shared.events import RateLimit
from shared.validation import Code, PlansChanged
from tests.support.factories import token_view

T0 = 1_800_000_000.0
PEPPER = b"unit-pepper"


def test_plan_shapes() -> None:
    assert shape_of("starter", None) == (1.0, 100.0)
    assert shape_of("professional", None) == (1000 / 60, 2000.0)
    # Enterprise: burst null means a bucket of one minute of the rate, no more.
    assert shape_of("enterprise", RateLimit(requests_per_minute=6000, burst=None)) == (100.0, 6000.0)
    assert shape_of("enterprise", {"requests_per_minute": 600, "burst": 50}) == (10.0, 50.0)
    assert shape_of("enterprise", None) is None


def test_starter_bucket_admits_its_burst_then_one_a_second() -> None:
    limiter = KeyLimiter()
    shape = shape_of("starter", None)
    assert shape is not None
    admitted = [limiter.admit("k", shape, T0)[0] for _ in range(130)]
    assert admitted.count(True) == 100 and admitted[:100] == [True] * 100
    ok, bucket = limiter.admit("k", shape, T0)
    assert not ok and bucket.retry_after() == pytest.approx(1.0)
    assert bucket.state() == {"limit": 100, "remaining": 0, "reset_s": 100.0}
    assert not limiter.admit("k", shape, T0 + 0.999)[0]
    assert limiter.admit("k", shape, T0 + 1.0)[0]
    assert not limiter.admit("k", shape, T0 + 1.5)[0]
    # Over a whole minute of hammering: 100 + 60 (the burst and one minute of refill).
    total = 101 + sum(limiter.admit("k", shape, T0 + 1 + i / 100)[0] for i in range(1, 5901))
    assert total == 160


def test_professional_over_a_minute_is_limit_plus_burst() -> None:
    limiter = KeyLimiter()
    shape = shape_of("professional", None)
    assert shape is not None
    admitted = sum(limiter.admit("k", shape, T0 + i * 0.005)[0] for i in range(12_000))  # 60 s at 200/s
    assert admitted == pytest.approx(3000, abs=2)


def test_refill_is_capped_and_state_reports_whole_tokens() -> None:
    bucket = Bucket((1.0, 100.0), T0)
    for _ in range(10):
        assert bucket.take(T0)
    assert bucket.state()["remaining"] == 90 and bucket.reset_after() == pytest.approx(10.0)
    bucket.refill(T0 + 3600)
    assert bucket.tokens == 100.0 and bucket.state()["reset_s"] == 0
    bucket.refill(T0 - 5)  # a clock step backwards adds nothing
    assert bucket.tokens == 100.0


def test_reshape_keeps_tokens_capped_and_buckets_of_keys_are_apart() -> None:
    limiter = KeyLimiter()
    pro = shape_of("professional", None)
    starter = shape_of("starter", None)
    assert pro is not None and starter is not None
    for _ in range(500):
        limiter.admit("a", pro, T0)
    ok, bucket = limiter.admit("a", starter, T0)  # downgraded: 1499 tokens capped at 100
    assert ok and bucket.capacity == 100 and bucket.tokens == 99
    assert limiter.admit("b", starter, T0)[1].tokens == 99
    assert limiter.prune(T0 + 10_000) == 2 and len(limiter) == 0


def test_failure_throttle_blocks_an_address_and_refills() -> None:
    throttle = FailureThrottle(per_minute=30)
    for i in range(29):
        throttle.failed("198.51.100.7", T0 + i * 0.001)
        assert throttle.blocked("198.51.100.7", T0 + i * 0.001) == 0
    throttle.failed("198.51.100.7", T0 + 0.03)
    wait = throttle.blocked("198.51.100.7", T0 + 0.03)
    assert 0 < wait <= 2.0
    assert throttle.blocked("203.0.113.9", T0 + 0.03) == 0
    assert throttle.blocked("198.51.100.7", T0 + 0.03 + wait + 0.01) == 0
    assert FailureThrottle(0).enabled is False


def test_failure_throttle_memory_is_bounded() -> None:
    throttle = FailureThrottle(per_minute=5)
    throttle.MAX_ADDRESSES = 100
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", T0 + i)
    assert len(throttle.addresses) <= 100


# The service: decision, then the owner's bucket, then usage.


class NullStore:
    def __init__(self) -> None:
        self.plans: list[PlansChanged] = []

    async def save_plan(self, change: PlansChanged) -> None:
        self.plans.append(change)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_service(**kwargs: object) -> tuple[ValidatorService, Clock, NullStore]:
    clock = Clock()
    store = NullStore()
    service = ValidatorService(store, peppers=[PEPPER], clock=clock, **kwargs)  # type: ignore[arg-type]
    return service, clock, store


def add_key(service: ValidatorService, key_id: str = "key_1", **changes: object) -> str:
    token = tokens.generate(str(changes.pop("environment", "prod")))
    service.projection.apply(
        token_view(token, PEPPER, datetime.fromtimestamp(T0, UTC), key_id=key_id, **changes)
    )
    return token


def test_service_rate_limits_with_retry_after_and_state() -> None:
    service, clock, _ = make_service()
    token = add_key(service)
    replies = [service.validate(token, "compute:read") for _ in range(130)]
    assert sum(r["valid"] for r in replies) == 100
    assert replies[0]["rate_limit"] == {"limit": 100, "remaining": 99, "reset_s": 1.0}
    refused = replies[-1]
    assert refused["code"] == Code.RATE_LIMITED and refused["retry_after_s"] == pytest.approx(1.0)
    assert refused["key_id"] == "key_1" and refused["rate_limit"]["remaining"] == 0
    clock.now += 1.0
    assert service.validate(token)["valid"]
    assert not service.validate(token)["valid"]
    (used,) = service.take_usage()
    # Every validation of the key counts; only admitted ones are uses (the rest refused: the limit).
    assert (used.count, used.allowed, used.refused) == (132, 101, 31)


def test_refusals_other_than_the_limit_take_no_token() -> None:
    service, _, _ = make_service()
    token = add_key(service)
    for _ in range(200):
        assert service.validate(token, "compute:write")["code"] == Code.SCOPE_DENIED
    assert service.validate(token, "compute:read")["rate_limit"]["remaining"] == 99


async def test_plan_change_applies_to_the_accounts_keys() -> None:
    service, clock, store = make_service()
    token = add_key(service)
    other = add_key(service, key_id="key_2", account_id="other")
    for _ in range(100):
        service.validate(token)
    assert service.validate(token)["code"] == Code.RATE_LIMITED
    assert await service.change_plan(PlansChanged(account_id="acct", plan="professional"))
    assert service.validate(token)["rate_limit"]["limit"] == 2000  # reshaped now, still empty
    clock.now += 0.07  # a token comes every 0.06 s at 1000/min
    reply = service.validate(token)
    assert reply["valid"] and reply["rate_limit"]["limit"] == 2000
    assert service.validate(other)["rate_limit"]["limit"] == 100
    change = PlansChanged(
        account_id="acct", plan="enterprise", rate_limit=RateLimit(requests_per_minute=600_000, burst=None)
    )
    await service.change_plan(change)
    clock.now += 1
    assert service.validate(token)["rate_limit"]["limit"] == 600_000
    assert len(store.plans) == 2
    # An older change than the newest applied is ignored.
    newer = PlansChanged(account_id="acct", plan="starter", occurred_at=datetime.fromtimestamp(T0 + 100, UTC))
    older = PlansChanged(account_id="acct", plan="professional", occurred_at=datetime.fromtimestamp(T0, UTC))
    assert await service.change_plan(newer)
    assert not await service.change_plan(older)
    assert service.shape_for(service.projection.entry("key_1")) == (1.0, 100.0)  # type: ignore[arg-type]


def test_guessing_address_is_throttled_without_slowing_others() -> None:
    service, clock, _ = make_service(failed_auth_per_minute=5)
    token = add_key(service)
    for _ in range(5):
        assert service.validate(tokens.generate("prod"), ip="198.51.100.7")["code"] == Code.NOT_FOUND
    refused = service.validate(token, ip="198.51.100.7")
    assert refused["code"] == Code.RATE_LIMITED and refused["retry_after_s"] > 0
    assert "key_id" not in refused, "a throttled address learns nothing about the key"
    assert service.validate(token, ip="203.0.113.5")["valid"]
    assert service.validate("garbage", ip="192.0.2.1")["code"] == Code.MALFORMED
    assert service.validate(None, ip="192.0.2.1")["code"] == Code.MISSING
    clock.now += 60
    assert service.validate(token, ip="198.51.100.7")["valid"]


def test_required_environment_of_the_validator() -> None:
    service, _, _ = make_service(required_environment="prod")
    prod = add_key(service)
    dev = add_key(service, key_id="key_dev", environment="dev")
    assert service.validate(prod)["valid"]
    assert service.validate(dev)["code"] == Code.ENV_MISMATCH
