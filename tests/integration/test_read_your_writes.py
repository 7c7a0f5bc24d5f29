"""Read-your-writes: a key works at every validator replica the moment its 201 returns.

A real nats-server, the issuer as a process driven over HTTP, validator replicas in-process (each its
own store, durable consumer and lean NATS connection). Each created key is used at once, over NATS
(`keys.validate`, any replica of the queue group) and over HTTP forward-auth (each replica in turn), and
must be VALID every time. Then what read-your-writes must not cost: a flood of forged (well-formed,
checksum-correct) tokens makes a bounded number of JetStream API requests, and a NOT_FOUND is held no
longer than the stream needs, or the configured wait when the replica cannot catch up."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest

from services.validator.app import ValidatorRuntime
from shared import tokens
from shared.events import SUBJECT_VALIDATE
from shared.natsserver import EmbeddedNats, free_port
from shared.settings import Settings
from tests.e2e.stack import ProcessStack, process_stack
from tests.support.databases import DatabaseFactory
from tests.support.nats import RunningNats

from .stack import eventually

CREATIONS = 150
ROUTES = ["GET /v2/instances=compute:read"]
# Each key is used twice, far within its plan's burst, so a 429 never hides the answer under test.
KEY_BODY = {"name": "fresh", "environment": "prod", "scopes": ["compute:read"]}
FORWARD_AUTH_HEADERS = {"X-Original-URL": "http://api.test/v2/instances", "X-Original-Method": "GET"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningNats]:
    """A nats-server of the test's own, with its monitoring port (the flood test reads `/jsz`)."""
    running = EmbeddedNats(tmp_path / "nats", monitor_port=free_port(), log_file=tmp_path / "nats.log")
    running.start()
    yield RunningNats(running)
    running.stop()


@contextmanager
def issuer_process(nats_url: str, tmp: Path, databases: DatabaseFactory) -> Iterator[ProcessStack]:
    with process_stack(
        nats_url,
        tmp / "issuer",
        ["issuer"],
        CNX_ISSUER_DATABASE_URL=databases("issuer", "sqlite"),
        # One admin key creates keys back to back, past the management API's own 100-call burst.
        CNX_MANAGEMENT_RATE_LIMIT="0",
    ) as stack:
        yield stack


@asynccontextmanager
async def replicas(
    nats_url: str, tmp: Path, databases: DatabaseFactory, count: int, **settings: Any
) -> AsyncIterator[list[ValidatorRuntime]]:
    runtimes: list[ValidatorRuntime] = []
    async with AsyncExitStack() as exits:
        for n in range(count):
            runtime = ValidatorRuntime(
                Settings(
                    nats_url=nats_url,
                    data_dir=tmp,
                    validator_database_url=databases(f"validator-{n}", "sqlite"),
                    instance_id=f"ryw-{tmp.name[-8:]}-{n}",
                    route_scopes=ROUTES,
                    validator_heartbeat=timedelta(milliseconds=100),
                    **settings,
                )
            )
            await runtime.start()
            exits.push_async_callback(runtime.stop)
            runtimes.append(runtime)
        # Every replica sees every other before the test sends anything (ownership settled).
        for runtime in runtimes:

            async def sees_all(runtime: ValidatorRuntime = runtime) -> bool:
                return len(runtime.cluster.ownership.members) == count

            await eventually(sees_all, timeout=5)
        yield runtimes


async def use_at_once(nc: Any, forward_auth: httpx.AsyncClient, secret: str) -> tuple[str, str]:
    """The key over NATS and over HTTP forward-auth at the same moment: the two codes."""
    ask = nc.request(SUBJECT_VALIDATE, orjson.dumps({"key": secret, "scope": "compute:read"}), timeout=3)
    verify = forward_auth.get(
        "/v2/auth/verify", headers={"Authorization": f"Bearer {secret}", **FORWARD_AUTH_HEADERS}
    )
    answer, response = await asyncio.gather(ask, verify)
    return orjson.loads(answer.data)["code"], response.headers.get("x-cnx-code", str(response.status_code))


@pytest.mark.parametrize("count", [1, 3])
async def test_a_created_key_works_at_once_on_every_replica_over_nats_and_http(
    count: int, server: RunningNats, make_database_url: DatabaseFactory, tmp_path: Path
) -> None:
    with issuer_process(server.url, tmp_path, make_database_url) as issuer_stack:
        async with replicas(server.url, tmp_path, make_database_url, count) as runtimes:
            nc = await nats.connect(server.url)
            forward_auths = [
                httpx.AsyncClient(transport=httpx.ASGITransport(app=r.app), base_url="http://validator")
                for r in runtimes
            ]
            issuer = httpx.AsyncClient(
                base_url=issuer_stack.url("issuer"), headers=issuer_stack.admin(), timeout=10
            )
            codes: Counter[str] = Counter()
            try:
                for n in range(CREATIONS):
                    response = await issuer.post("/v2/keys", json=KEY_BODY)
                    assert response.status_code == 201, response.text
                    over_nats, over_http = await use_at_once(
                        nc, forward_auths[n % count], response.json()["key"]
                    )
                    codes[f"nats {over_nats}"] += 1
                    codes[f"http {over_http}"] += 1
            finally:
                await nc.close()
                await issuer.aclose()
                for client in forward_auths:
                    await client.aclose()
    assert codes == {"nats VALID": CREATIONS, "http VALID": CREATIONS}, codes
    # Fresh keys were really caught by the hold at least sometimes (or the test would prove nothing):
    # the replicas were behind the 201 and caught up before answering.
    assert sum(r.hold.held_total for r in runtimes) > 0


async def jetstream_api_requests(server: RunningNats) -> int:
    assert server.monitor_url is not None
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{server.monitor_url}/jsz")).json()["api"]["total"])


async def test_a_flood_of_forged_tokens_costs_a_bounded_number_of_jetstream_requests(
    server: RunningNats, make_database_url: DatabaseFactory, tmp_path: Path
) -> None:
    flood = 2000
    async with replicas(server.url, tmp_path, make_database_url, 1) as (runtime,):
        nc = await nats.connect(server.url)
        try:
            forged = [orjson.dumps({"key": tokens.generate("prod")}) for _ in range(flood)]
            before = await jetstream_api_requests(server)
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(nc.request(SUBJECT_VALIDATE, body, timeout=5) for body in forged)
            )
            took = time.perf_counter() - started
            after = await jetstream_api_requests(server)
        finally:
            await nc.close()
    assert Counter(orjson.loads(a.data)["code"] for a in answers) == {"NOT_FOUND": flood}
    hold = runtime.hold
    # Every forged token was held or refused a place, and one question to JetStream settled many.
    assert hold.held_total + hold.refused_full >= flood
    assert hold.rounds < flood / 10, (hold.rounds, flood)
    # The server counted (nearly) only those questions: not one per request.
    assert after - before <= hold.rounds + 5, (after - before, hold.rounds)
    assert hold.timed_out == 0
    assert took < 5


async def test_an_unknown_key_is_answered_once_caught_up_and_after_the_wait_at_worst(
    server: RunningNats, make_database_url: DatabaseFactory, tmp_path: Path
) -> None:
    wait = 0.4
    async with replicas(
        server.url, tmp_path, make_database_url, 1, read_your_writes_wait=timedelta(seconds=wait)
    ) as (runtime,):
        nc = await nats.connect(server.url)
        forged = orjson.dumps({"key": tokens.generate("prod")})
        try:
            # Nothing newer in the stream: NOT_FOUND as soon as one question says so, well inside the wait.
            started = time.perf_counter()
            answer = await nc.request(SUBJECT_VALIDATE, forged, timeout=3)
            caught_up = time.perf_counter() - started
            assert orjson.loads(answer.data)["code"] == "NOT_FOUND"
            assert caught_up < wait / 2, caught_up

            # This replica's consumer stopped while the stream moves on: it cannot catch up, so the
            # NOT_FOUND comes when the wait is over, not later (and not never).
            assert runtime.events is not None
            await runtime.events.stop()
            js = nc.jetstream()
            await js.publish("keys.events.key.used", b"{}")
            started = time.perf_counter()
            answer = await nc.request(SUBJECT_VALIDATE, forged, timeout=3)
            stuck = time.perf_counter() - started
            assert orjson.loads(answer.data)["code"] == "NOT_FOUND"
            assert wait * 0.9 <= stuck < wait + 0.5, stuck
            assert runtime.hold.timed_out == 1
        finally:
            await nc.close()
