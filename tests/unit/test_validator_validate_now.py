"""Cluster.validate_now, what the validator's HTTP server answers before any ASGI cycle: the same answer
as `validate` and the same traces (buckets, throttle, counts) when it needs no waiting, and None with
nothing changed when it does (a NOT_FOUND held for read-your-writes, a key another replica owns)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.validator.cluster import Cluster
from services.validator.service import ValidatorService
from shared import tokens
from shared.events import RateLimit
from tests.unit.test_validator_fastpath import NOW, PEPPER, view

IP = "198.51.100.7"


class Connected:
    """What validate_now reads of a NATS connection."""

    is_connected = True


def cluster_of(keys: list[tuple[str, str]], clock: list[float]) -> Cluster:
    service = ValidatorService(
        None,  # type: ignore[arg-type]  # no store: the projection is filled by hand
        peppers=[PEPPER],
        clock=lambda: clock[0],
        failed_auth_per_minute=3,
    )
    for token, key_id in keys:
        service.projection.apply(
            view(
                token,
                key_id,
                expires_at=NOW + timedelta(days=3650),
                rate_limit=RateLimit(requests_per_minute=1, burst=2),
            )
        )
    return Cluster(None, service, "v-0")


def requests(valid: str) -> list[tuple[Any, ...]]:
    unknown = tokens.generate("prod")
    return [
        (valid, "compute:read", IP, None),
        (valid, "compute:admin", IP, None),  # SCOPE_DENIED: counted against the key
        (valid, None, IP, "dev"),  # ENV_MISMATCH
        (valid, None, IP, None),
        (valid, None, IP, None),  # the bucket (burst 2) is empty: RATE_LIMITED
        (None, None, IP, None),  # MISSING
        ("cnx_prod_nope", None, IP, None),  # MALFORMED: a guess, throttled
        (unknown, None, IP, None),  # NOT_FOUND: a guess
        (unknown, None, IP, None),
        (valid, None, IP, None),  # the address is throttled now, a valid key too
    ]


async def test_validate_now_answers_and_counts_as_validate() -> None:
    token = tokens.generate("prod")
    clock_a, clock_b = [NOW.timestamp()], [NOW.timestamp()]
    by_validate = cluster_of([(token, "key_a")], clock_a)
    by_now = cluster_of([(token, "key_a")], clock_b)
    for request in requests(token):
        expected = await by_validate.validate(*request)
        got = by_now.validate_now(*request)
        assert got == expected, request
        clock_a[0] += 0.1
        clock_b[0] += 0.1
    codes = [reply["code"] for reply in [by_now.validate_now(*r) for r in requests(token)[:1]]]
    assert codes == ["RATE_LIMITED"]  # the throttle holds for validate_now's own guesses too
    assert by_now.answers["http"] == {**by_validate.answers["http"], "RATE_LIMITED": 3}
    assert by_now.service._refused == by_validate.service._refused


async def test_a_not_found_held_for_read_your_writes_is_left_to_validate() -> None:
    clock = [NOW.timestamp()]
    cluster = cluster_of([], clock)
    cluster.hold = object()  # type: ignore[assignment]  # only its presence is read
    assert cluster.validate_now(tokens.generate("prod"), None, IP, None) is None
    # Nothing was recorded: validate, which waits, records it once.
    assert cluster.service.throttle.addresses == {} and cluster.answers["http"] == {}
    # A refusal that no catching up can change is answered at once.
    reply = cluster.validate_now("cnx_prod_nope", None, IP, None)
    assert reply is not None and reply["code"] == "MALFORMED"


async def test_a_key_another_replica_owns_is_left_to_validate() -> None:
    token = tokens.generate("prod")
    clock = [NOW.timestamp()]
    probe = Cluster(None, cluster_of([], clock).service, "v-0")
    probe.ownership.heard("v-1", clock[0])
    key_id = next(f"key_{n}" for n in range(100) if probe.ownership.owner(f"key_{n}") == "v-1")
    cluster = cluster_of([(token, key_id)], clock)
    cluster.nc = Connected()  # type: ignore[assignment]
    cluster.ownership.heard("v-1", clock[0])
    for _ in range(5):  # more than the bucket holds: none taken
        assert cluster.validate_now(token, None, IP, None) is None
    assert cluster.answers["http"] == {}
    # Disconnected, this replica answers from its own bucket (as validate does): the bucket is full.
    cluster.nc = None
    replies = [cluster.validate_now(token, None, IP, None) for _ in range(3)]
    assert [r["code"] for r in replies if r] == ["VALID", "VALID", "RATE_LIMITED"]
