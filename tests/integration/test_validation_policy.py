"""Validation policy on a real nats-server with the real issuer and validator(s): rate limits (one key's
bucket held by one owner replica, also with 3 replicas in the queue group), plan changes, IP allowlists,
environments, last-used, the forward-auth route table and the failed-validation throttle."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.errors import NoRespondersError
from prometheus_client.parser import text_string_to_metric_families

from services.validator.app import ValidatorRuntime
from services.validator.cluster import owner_subject
from services.validator.store import ValidatorStore
from shared.client import ValidationClient
from shared.db import create_engine
from shared.events import STREAM_EVENTS, KeyView
from shared.settings import Settings
from shared.validation import SUBJECT_PLANS_CHANGED, Code

from .stack import Stack, eventually, running_stack, running_validator, stack_settings

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def nginx(method: str, path: str) -> dict[str, str]:
    """What an ingress-nginx auth subrequest says about the original request (the default flavor)."""
    return {"X-Original-Method": method, "X-Original-URL": f"https://api.example{path}"}


# GET /v2/instances: compute:read in this module's route table.
LIST = nginx("GET", "/v2/instances")


def policy_settings(nats_server: Any, make_database_url: Any, tmp_path: Path, **changes: Any) -> Settings:
    settings = stack_settings(
        nats_server.url,
        tmp_path,
        make_database_url("issuer", "sqlite"),
        make_database_url("validator", "sqlite"),
        f"pol-{uuid.uuid4().hex[:8]}",
    )
    return settings.model_copy(update=changes)


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = policy_settings(
        nats_server,
        make_database_url,
        tmp_path,
        trusted_proxies=["10.0.0.0/8"],
        failed_auth_per_minute=5,
        route_scopes=[
            "GET /v2/instances=compute:read",
            "POST /v2/instances=compute:write",
            "GET /v2/prod-only/**=compute:read@prod",
        ],
    )
    async with running_stack(settings) as running:
        yield running


@pytest.fixture
async def nc(nats_server: Any) -> AsyncIterator[Any]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


async def known_to(runtimes: list[ValidatorRuntime], key_id: str) -> None:
    async def check() -> bool:
        return all(r.service.projection.entry(key_id) is not None for r in runtimes)

    await eventually(check, timeout=5.0)


async def test_starter_key_130_at_once_then_one_a_second(stack: Stack, nc: Any) -> None:
    created = await stack.create_key(plan="starter")
    await known_to([stack.validator], created["id"])
    client = ValidationClient(nc, timeout=5.0)
    calls = [client.validate(created["key"], scope="compute:read") for _ in range(130)]
    results = await asyncio.gather(*calls)
    codes = Counter(r.code for r in results)
    print(f"1 replica, 130 at once: {dict(codes)}")
    assert 97 <= codes[Code.VALID] <= 103, codes
    assert codes[Code.VALID] + codes[Code.RATE_LIMITED] == 130, codes
    limited = [r for r in results if r.code == Code.RATE_LIMITED]
    assert all(r.retry_after_s and 0 < r.retry_after_s <= 1.0 for r in limited)
    assert all(r.rate_limit and r.rate_limit.limit == 100 and r.rate_limit.remaining == 0 for r in limited)
    admitted_first = sorted((r.rate_limit.remaining for r in results if r.valid), reverse=True)  # type: ignore[union-attr]
    assert admitted_first[0] == 99

    # Over HTTP the same bucket: 429 with Retry-After in whole seconds and the RateLimit headers.
    response = await stack.forward_auth.get("/v2/auth/verify", headers={**stack.auth(created["key"]), **LIST})
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["ratelimit-limit"] == "100" and response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) >= 99

    # It refills at one a second: the next request passes about a second later, not before.
    start = time.monotonic()

    async def one_passes() -> bool:
        return (await client.validate(created["key"])).valid

    waited = await eventually(one_passes, timeout=3.0, interval=0.05)
    assert 0.5 <= time.monotonic() - start <= 2.0, waited
    assert not (await client.validate(created["key"])).valid


async def test_forward_auth_headers_on_a_good_answer(stack: Stack) -> None:
    created = await stack.create_key(plan="professional", scopes=["compute:write"])
    await known_to([stack.validator], created["id"])
    response = await stack.forward_auth.get(
        "/v2/auth/verify",
        headers={**stack.auth(created["key"]), **nginx("GET", "/v2/instances?page=2")},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-key-id"] == created["id"]
    assert response.headers["x-account-id"] == "default"
    assert response.headers["x-key-scopes"] == "compute:write"
    assert response.headers["ratelimit-limit"] == "2000" and response.headers["ratelimit-remaining"] == "1999"


async def test_plan_change_reaches_the_accounts_keys(stack: Stack, nc: Any) -> None:
    created = await stack.create_key(plan="starter")
    await known_to([stack.validator], created["id"])
    client = ValidationClient(nc)
    assert (await client.validate(created["key"])).rate_limit.limit == 100  # type: ignore[union-attr]
    change = {
        "account_id": "default",
        "plan": "enterprise",
        "rate_limit": {"requests_per_minute": 120_000, "burst": None},
    }
    answer = orjson.loads((await nc.request(SUBJECT_PLANS_CHANGED, orjson.dumps(change), timeout=2)).data)
    assert answer["ok"] and answer["applied"]
    assert (await client.validate(created["key"])).rate_limit.limit == 120_000  # type: ignore[union-attr]
    # Kept across a restart of the replica.
    await stack.validator.stop()
    async with running_validator(stack.settings) as restarted:
        assert restarted.service.account_shapes["default"] == (2000.0, 120_000.0)


async def test_ip_allowlists_as_networks(stack: Stack, nc: Any) -> None:
    other_net = await stack.create_key(ip_allowlist=["203.0.113.0/24"])
    loopback = await stack.create_key(ip_allowlist=["127.0.0.0/8"])
    ipv6 = await stack.create_key(ip_allowlist=["::1/128", "2001:db8::/32"])
    await known_to([stack.validator], ipv6["id"])
    await known_to([stack.validator], other_net["id"])
    await known_to([stack.validator], loopback["id"])
    client = ValidationClient(nc)
    assert (await client.validate(other_net["key"], ip="127.0.0.1")).code == Code.IP_NOT_ALLOWED
    assert (await client.validate(other_net["key"])).code == Code.IP_NOT_ALLOWED, "no address, no admission"
    assert (await client.validate(other_net["key"], ip="203.0.113.77")).valid
    assert (await client.validate(loopback["key"], ip="127.0.0.1")).valid
    assert (await client.validate(loopback["key"], ip="127.8.9.10")).valid
    assert (await client.validate(ipv6["key"], ip="::1")).valid
    assert (await client.validate(ipv6["key"], ip="2001:db8:1::5")).valid
    assert (await client.validate(ipv6["key"], ip="::2")).code == Code.IP_NOT_ALLOWED
    assert (await client.validate(ipv6["key"], ip="127.0.0.1")).code == Code.IP_NOT_ALLOWED
    assert (await client.validate(ipv6["key"], ip="not-an-ip")).code == Code.IP_NOT_ALLOWED

    # HTTP: the peer (127.0.0.1 here) unless it is a trusted proxy (10.0.0.0/8 in this stack).
    verify = "/v2/auth/verify"
    refused = await stack.forward_auth.get(verify, headers={**stack.auth(other_net["key"]), **LIST})
    assert refused.status_code == 403 and refused.json()["code"] == "IP_NOT_ALLOWED"
    assert (
        await stack.forward_auth.get(verify, headers={**stack.auth(loopback["key"]), **LIST})
    ).status_code == 200
    spoofed = await stack.forward_auth.get(
        verify, headers={**LIST, **stack.auth(other_net["key"]), "X-Forwarded-For": "203.0.113.7"}
    )
    assert spoofed.status_code == 403, "X-Forwarded-For from an untrusted peer is ignored"
    app = stack.validator.app
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.1.2.3", 5000)), base_url="http://validator"
    ) as via_proxy:
        through = await via_proxy.get(
            verify,
            headers={**LIST, **stack.auth(other_net["key"]), "X-Forwarded-For": "6.6.6.6, 203.0.113.7"},
        )
        assert through.status_code == 200, through.text
        assert (
            await via_proxy.get(verify, headers={**stack.auth(loopback["key"]), **LIST})
        ).status_code == 403


async def test_environment_requirements(stack: Stack, nc: Any) -> None:
    dev = await stack.create_key(environment="dev")
    prod = await stack.create_key(environment="prod")
    await known_to([stack.validator], dev["id"])
    await known_to([stack.validator], prod["id"])
    client = ValidationClient(nc)
    assert (await client.validate(dev["key"], environment="prod")).code == Code.ENV_MISMATCH
    assert (await client.validate(prod["key"], environment="prod")).valid
    verify = "/v2/auth/verify"
    by_header = await stack.forward_auth.get(
        verify, headers={**LIST, **stack.auth(dev["key"]), "X-Required-Environment": "prod"}
    )
    assert by_header.status_code == 403 and by_header.json()["code"] == "ENV_MISMATCH"
    by_route = await stack.forward_auth.get(
        verify, headers={**stack.auth(dev["key"]), **nginx("GET", "/v2/prod-only/x")}
    )
    assert by_route.status_code == 403 and by_route.json()["code"] == "ENV_MISMATCH"
    ok = await stack.forward_auth.get(
        verify, headers={**stack.auth(prod["key"]), **nginx("GET", "/v2/prod-only/x")}
    )
    assert ok.status_code == 200


async def test_route_table_decides_the_scope(stack: Stack) -> None:
    """The default flavor (nginx): the original request only from X-Original-Method/-URL, the
    requirement only from the table or the auth URL's query; no route: 403 NO_ROUTE."""
    reader = await stack.create_key(scopes=["compute:read"])
    await known_to([stack.validator], reader["id"])
    verify = "/v2/auth/verify"
    auth = stack.auth(reader["key"])
    fa = stack.forward_auth
    assert (await fa.get(verify, headers={**auth, **LIST})).status_code == 200
    denied = await fa.get(verify, headers={**auth, **nginx("POST", "/v2/instances")})
    assert denied.status_code == 403 and denied.json()["code"] == "SCOPE_DENIED"
    # A header naming a weaker scope, or the other flavors' headers, change nothing.
    for extra in (
        {"X-Required-Scope": "compute:read"},
        {"X-Original-URI": "/v2/instances"},
        {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v2/instances"},
    ):
        again = await fa.get(verify, headers={**auth, **nginx("POST", "/v2/instances"), **extra})
        assert again.json()["code"] == "SCOPE_DENIED", extra
    # Envoy's request-line shape and Traefik's headers mean nothing to an nginx-flavored validator.
    for path, headers in (
        (verify + "/v2/instances", auth),
        (verify, {**auth, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v2/instances"}),
        (verify, {**auth, **nginx("PUT", "/v2/instances")}),
        (verify + "?scope=compute:read", {**auth, **nginx("GET", "/v2/instances/../instances")}),
    ):
        refused = await fa.get(path, headers=headers)
        assert refused.status_code == 403 and refused.headers["x-cnx-code"] == "NO_ROUTE", path
    # A path no route names, covered by the auth URL's own scope.
    covered = await fa.get(verify + "?scope=compute:read", headers={**auth, **nginx("PUT", "/v2/x")})
    assert covered.status_code == 200
    stricter = await fa.get(
        verify + "?scope=compute:write", headers={**auth, **nginx("GET", "/v2/instances")}
    )
    assert stricter.json()["code"] == "SCOPE_DENIED", "route and URL requirements apply together"


async def test_guessing_address_is_throttled_other_addresses_are_not(stack: Stack) -> None:
    good = await stack.create_key()
    await known_to([stack.validator], good["id"])
    verify = "/v2/auth/verify"
    app = stack.validator.app

    def via(address: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(address, 5000)), base_url="http://validator"
        )

    async with via("198.51.100.66") as attacker, via("198.51.100.77") as user:
        for guess in range(5):
            fake = f"cnx_prod_{'x' * 30}{guess:06d}"
            assert (await attacker.get(verify, headers={**stack.auth(fake), **LIST})).status_code == 401
        blocked = await attacker.get(verify, headers={**stack.auth(good["key"]), **LIST})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert "x-key-id" not in blocked.headers
        started = time.monotonic()
        for _ in range(20):
            assert (await user.get(verify, headers={**stack.auth(good["key"]), **LIST})).status_code == 200
        assert time.monotonic() - started < 2.0


async def test_last_used_shows_within_10_seconds(stack: Stack, nc: Any) -> None:
    created = await stack.create_key()
    assert created["last_used_at"] is None
    await known_to([stack.validator], created["id"])
    before = time.time()
    assert (await ValidationClient(nc).validate(created["key"])).valid

    async def shown() -> bool:
        key = (await stack.issuer.get(f"/v2/keys/{created['id']}", headers=stack.auth())).json()
        return key["last_used_at"] is not None

    took = await eventually(shown, timeout=10.0, interval=0.2)
    key = (await stack.issuer.get(f"/v2/keys/{created['id']}", headers=stack.auth())).json()
    assert datetime.fromisoformat(key["last_used_at"]).timestamp() >= before - 1
    assert took < 10.0


async def test_usage_nats_did_not_take_is_sent_with_the_next_flush(stack: Stack) -> None:
    created = await stack.create_key()
    await known_to([stack.validator], created["id"])
    runtime = stack.validator
    connection = runtime._nc
    runtime._nc = None  # NATS away for this replica's usage flushes
    try:
        assert runtime.service.validate(created["key"], "compute:read", throttle=False)["valid"]
        await runtime.flush_usage()
        assert [e.key_id for e in runtime._unsent] == [created["id"]]
    finally:
        runtime._nc = connection

    async def shown() -> bool:
        key = (await stack.issuer.get(f"/v2/keys/{created['id']}", headers=stack.auth())).json()
        return key["last_used_at"] is not None

    await eventually(shown, timeout=10.0, interval=0.2)
    assert not runtime._unsent


async def test_metrics_count_answers_by_transport_and_code_and_event_lag(stack: Stack, nc: Any) -> None:
    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await stack.forward_auth.get("/metrics")).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def answers(metrics: dict[Any, float], transport: str, code: str) -> float:
        return metrics.get(("cnx_validator_answers_total", (("code", code), ("transport", transport))), 0.0)

    created = await stack.create_key()
    await known_to([stack.validator], created["id"])
    before = await scrape()
    client = ValidationClient(nc)
    assert (await client.validate(created["key"], scope="compute:read")).code == Code.VALID
    assert (await client.validate(created["key"] + "x")).code == Code.MALFORMED
    assert (await client.validate(created["key"], scope="storage:read")).code == Code.SCOPE_DENIED
    verify = "/v2/auth/verify"
    assert (
        await stack.forward_auth.get(verify, headers={**stack.auth(created["key"]), **LIST})
    ).status_code == 200
    after = await scrape()
    assert answers(after, "nats", "VALID") - answers(before, "nats", "VALID") == 1
    assert answers(after, "nats", "MALFORMED") - answers(before, "nats", "MALFORMED") == 1
    assert answers(after, "nats", "SCOPE_DENIED") - answers(before, "nats", "SCOPE_DENIED") == 1
    assert answers(after, "http", "VALID") - answers(before, "http", "VALID") == 1

    # The key's creation went through the events consumer: its lag was observed, and it was short. (It
    # is observed once the batch is stored, after the key was known in memory: polled.)
    async def lag_observed() -> bool:
        nonlocal after
        after = await scrape()
        return after[("cnx_validator_event_lag_seconds_count", ())] >= 1

    await eventually(lag_observed)
    within_5s = after[("cnx_validator_event_lag_seconds_bucket", (("le", "5.0"),))]
    assert within_5s == after[("cnx_validator_event_lag_seconds_count", ())]


# Several replicas in the `validators` queue group.


async def replicas(
    stack: Stack, count: int, exit_stack: AsyncExitStack, tmp_path: Path
) -> list[ValidatorRuntime]:
    runtimes = [stack.validator]
    for i in range(count - 1):
        instance = f"{stack.settings.instance_id}-r{i}"
        settings = stack.settings.model_copy(
            update={
                "instance_id": instance,
                "validator_database_url": f"sqlite+aiosqlite:///{tmp_path}/validator-{instance}.db",
            }
        )
        runtimes.append(await exit_stack.enter_async_context(running_validator(settings)))

    async def all_see_all() -> bool:
        return all(len(r.cluster.ownership.members) == count for r in runtimes)

    await eventually(all_see_all, timeout=5.0)

    # A new replica has replayed the whole events stream (every earlier test's, on the session's shared
    # nats-server) before start() returns: test_new_replica_answers_only_once_caught_up.
    return runtimes


class SlowStore(ValidatorStore):
    """A store whose first write takes a second: a replica that answered before catching up with the
    events stream would be seen answering from a half-replayed picture."""

    slowed = False

    async def save(self, views: Sequence[KeyView], last_seq: int, **retention: Any) -> None:
        if not self.slowed:
            self.slowed = True
            await asyncio.sleep(1.0)  # the slowness under test, not a wait for something
        await super().save(views, last_seq, **retention)


async def test_new_replica_answers_only_once_caught_up(stack: Stack, tmp_path: Path) -> None:
    """A replica starting with an empty store replays the events stream before it answers or says it is
    ready: a key revoked before it started is REVOKED from its first answer, not VALID (or NOT_FOUND)
    from a half-replayed picture."""
    kept = await stack.create_key()
    revoked = await stack.create_key()
    response = await stack.issuer.post(f"/v2/keys/{revoked['id']}/revoke", headers=stack.auth())
    assert response.status_code == 200, response.text

    async def stack_validator_has_it() -> bool:
        entry = stack.validator.service.projection.entry(revoked["id"])
        return entry is not None and entry.status == "revoked"

    await eventually(stack_validator_has_it, timeout=5.0)  # so the revocation is in the stream
    nc = await nats.connect(stack.settings.nats_url)
    try:
        stream_end = (await nc.jetstream().stream_info(STREAM_EVENTS)).state.last_seq
    finally:
        await nc.close()
    instance = f"{stack.settings.instance_id}-fresh"
    settings = stack.settings.model_copy(update={"instance_id": instance})
    store = SlowStore(create_engine(f"sqlite+aiosqlite:///{tmp_path}/validator-{instance}.db"))
    fresh = ValidatorRuntime(settings, store=store)
    try:
        await fresh.start()
        assert fresh.ready()
        assert store.slowed and fresh.service.last_seq >= stream_end
        assert fresh.service.validate(kept["key"], "compute:read", throttle=False)["code"] == Code.VALID
        assert fresh.service.validate(revoked["key"], "compute:read", throttle=False)["code"] == Code.REVOKED
    finally:
        await fresh.stop()


async def hammer(nats_url: str, key: str, seconds: float, concurrency: int = 16) -> Counter[str]:
    """One client: `concurrency` requests in flight for `seconds`; counts the answers by code."""
    codes: Counter[str] = Counter()
    conn = await nats.connect(nats_url)
    client = ValidationClient(conn, timeout=5.0)
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            codes[(await client.validate(key, scope="compute:read")).code] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await conn.drain()
    return codes


async def test_three_replicas_keep_one_keys_limit(stack: Stack, tmp_path: Path, nats_server: Any) -> None:
    async with AsyncExitStack() as exit_stack:
        runtimes = await replicas(stack, 3, exit_stack, tmp_path)
        created = await stack.create_key(plan="professional")
        await known_to(runtimes, created["id"])
        owners = {r.cluster.ownership.owner(created["id"]) for r in runtimes}
        assert len(owners) == 1, "every replica names the same owner"
        seconds = 6.0
        started = time.monotonic()
        counts = await asyncio.gather(*(hammer(nats_server.url, created["key"], seconds) for _ in range(3)))
        elapsed = time.monotonic() - started
        total: Counter[str] = sum(counts, Counter())
        expected = 2000 + 1000 * elapsed / 60
        admitted = total[Code.VALID]
        print(f"3 replicas, {elapsed:.1f}s: admitted {admitted} of {expected:.0f} expected; {dict(total)}")
        assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected, total)
        assert total[Code.RATE_LIMITED] > 0 and set(total) <= {Code.VALID, Code.RATE_LIMITED}, total
        assert sum(r.cluster.forwarded for r in runtimes) > 0, "non-owners passed requests on"
        # Every answer counted once, by the replica that decided it: the owner counts those passed on.
        decided = sum(sum(r.cluster.answers[t].values()) for r in runtimes for t in ("nats", "peer"))
        assert decided >= sum(total.values()), (decided, total)
        assert sum(sum(r.cluster.answers["peer"].values()) for r in runtimes) > 0
        buckets = [r.service.limiter.buckets.get(created["id"]) for r in runtimes]
        assert sum(b is not None for b in buckets) == 1, "one bucket, on the owner"


async def test_three_replicas_starter_burst(stack: Stack, tmp_path: Path, nc: Any) -> None:
    async with AsyncExitStack() as exit_stack:
        runtimes = await replicas(stack, 3, exit_stack, tmp_path)
        created = await stack.create_key(plan="starter")
        await known_to(runtimes, created["id"])
        clients = [ValidationClient(nc, timeout=5.0)]
        results = await asyncio.gather(*(clients[0].validate(created["key"]) for _ in range(130)))
        admitted = sum(r.valid for r in results)
        print(f"3 replicas, 130 at once: {admitted} admitted")
        assert 97 <= admitted <= 103, admitted
        # Forward-auth on a non-owner asks the owner: the same bucket, still empty.
        owner = runtimes[0].cluster.ownership.owner(created["id"])
        other = next(r for r in runtimes if r.cluster.me != owner)
        transport = httpx.ASGITransport(app=other.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as http:
            response = await http.get("/v2/auth/verify", headers={**stack.auth(created["key"]), **LIST})
        assert response.status_code == 429 and response.headers["ratelimit-remaining"] == "0"


async def test_owner_leaving_hands_its_keys_over(stack: Stack, tmp_path: Path, nc: Any) -> None:
    async with AsyncExitStack() as exit_stack:
        runtimes = await replicas(stack, 2, exit_stack, tmp_path)
        created = await stack.create_key(plan="starter")
        await known_to(runtimes, created["id"])
        owner = next(r for r in runtimes if r.cluster.ownership.mine(created["id"]))
        survivor = next(r for r in runtimes if r is not owner)
        await owner.stop()

        async def alone() -> bool:
            return survivor.cluster.ownership.members == (survivor.cluster.me,)

        await eventually(alone, timeout=3.0)
        assert (await ValidationClient(nc).validate(created["key"])).valid


async def test_owner_crash_costs_no_answers(stack: Stack, tmp_path: Path, nc: Any) -> None:
    """An owner that dies without a goodbye: the next request passed to it comes back "no responders",
    and the replica that passed it on answers itself and takes the dead replica's keys over."""
    async with AsyncExitStack() as exit_stack:
        runtimes = await replicas(stack, 2, exit_stack, tmp_path)
        keys = [await stack.create_key(plan="professional") for _ in range(6)]
        for key in keys:
            await known_to(runtimes, key["id"])
        victim = runtimes[1]
        survivor = runtimes[0]
        owned = [k for k in keys if victim.cluster.ownership.mine(k["id"])]
        assert owned, "with 6 keys each replica owns some (rendezvous hashing)"
        # A crash: the connection goes, no "bye", the heartbeat stops.
        assert victim.cluster._beat is not None and victim._nc is not None
        victim.cluster._beat.cancel()
        await victim._nc.close()
        # Both of its connections: nats-py (membership, passed-on requests) and the lean validate one.
        assert victim.cluster.wire is not None
        await victim.cluster.wire.close()

        async def owner_gone() -> bool:
            try:
                await nc.request(owner_subject(victim.cluster.me), b"{}", timeout=0.5)
            except NoRespondersError:
                return True
            return False

        await eventually(owner_gone, timeout=5.0)
        client = ValidationClient(nc, timeout=5.0)
        started = time.monotonic()
        results = await asyncio.gather(*(client.validate(k["key"]) for k in owned for _ in range(5)))
        assert all(r.valid for r in results), [r.code for r in results]
        assert time.monotonic() - started < 1.0, "answered at once, not after a timeout"
        assert survivor.cluster.ownership.members == (survivor.cluster.me,)
        assert survivor.cluster.forward_failures >= 1
