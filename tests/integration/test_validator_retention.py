"""Memory bounded by live keys, end to end: a real nats-server, a validator runtime with its real SQLite
store and a clock the test moves. A revoked key answers REVOKED within CNX_PROJECTION_RETENTION and
NOT_FOUND after it (over NATS too, through the read-your-writes hold, which answers at once), is gone
from the store, comes back neither at a restart's hydration nor at a new replica's replay of the whole
events stream; a key past its expiry goes the same way with no KeyExpired event at all."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from services.validator import app as validator_app
from services.validator.app import ValidatorRuntime
from shared import tokens
from shared.events import SUBJECT_VALIDATE, Event, KeyCreated, KeyRevoked, encode_event
from shared.settings import Settings
from shared.validation import Code
from tests.support.factories import token_view

from .stack import eventually

RETENTION = timedelta(hours=1)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings_for(nats_url: str, tmp: Path, name: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        data_dir=tmp,
        validator_database_url=f"sqlite+aiosqlite:///{tmp / f'{name}.db'}",
        instance_id=name,
        projection_retention=RETENTION,
    )


@asynccontextmanager
async def running(settings: Settings, clock: Callable[[], float]) -> AsyncIterator[ValidatorRuntime]:
    runtime = ValidatorRuntime(settings, clock=clock)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def stored_key_ids(settings: Settings) -> set[str]:
    path = settings.validator_database_url.split(":///", 1)[1]
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT key_id FROM validator_keys")}


async def publish(nc: Any, *events: Event) -> None:
    js = nc.jetstream()
    for event in events:
        await js.publish(event.subject, encode_event(event), headers={"Nats-Msg-Id": event.event_id})


async def answers(runtime: ValidatorRuntime, token: str, code: str) -> None:
    async def check() -> bool:
        return bool(runtime.service.validate(token, throttle=False)["code"] == code)

    await eventually(check)


@pytest.fixture
def fast_prune(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's own periodic prune, every usage flush rather than every minute."""
    monkeypatch.setattr(validator_app, "USAGE_FLUSH_S", 0.05)
    monkeypatch.setattr(validator_app, "PRUNE_EVERY_S", 0.0)


async def test_a_dead_key_answers_until_the_retention_then_is_gone_for_good(
    make_nats_server: Any, tmp_path: Path, fast_prune: None
) -> None:
    server = make_nats_server()
    clock = Clock()
    start = clock.now
    revoked, lapsing, live = (tokens.generate("prod") for _ in range(3))
    pepper = Settings().pepper_values()[0]
    at = datetime.fromtimestamp(start, UTC)

    def view(token: str, key_id: str, revision: int = 1, **changes: Any) -> Any:
        changes.setdefault("expires_at", None)
        return token_view(token, pepper, at, revision, key_id=key_id, **changes)

    settings = settings_for(server.url, tmp_path, "retention-a")
    nc = await nats.connect(server.url)
    try:
        async with running(settings, clock) as runtime:
            await publish(
                nc,
                KeyCreated(account_id="acct", key_id="key_revoked", key=view(revoked, "key_revoked")),
                KeyCreated(
                    account_id="acct",
                    key_id="key_lapsing",
                    key=view(lapsing, "key_lapsing", expires_at=at + timedelta(seconds=10)),
                ),
                KeyCreated(account_id="acct", key_id="key_live", key=view(live, "key_live")),
            )
            await answers(runtime, live, Code.VALID)
            await publish(
                nc,
                KeyRevoked(
                    account_id="acct",
                    key_id="key_revoked",
                    occurred_at=at,
                    key=view(revoked, "key_revoked", 2, status="revoked"),
                ),
            )
            await answers(runtime, revoked, Code.REVOKED)

            # Within the retention (prunes run meanwhile): REVOKED, EXPIRED, and still stored.
            clock.now = start + RETENTION.total_seconds() - 1
            pruned, passes = runtime.service.pruned_total, runtime.service.prunes

            async def two_more_passes() -> bool:  # one may have begun before the clock moved
                return runtime.service.prunes >= passes + 2

            await eventually(two_more_passes)
            assert runtime.service.pruned_total == pruned
            assert runtime.service.validate(revoked, throttle=False)["code"] == Code.REVOKED
            assert runtime.service.validate(lapsing, throttle=False)["code"] == Code.EXPIRED
            assert stored_key_ids(settings) == {"key_revoked", "key_lapsing", "key_live"}

            # After it: NOT_FOUND, out of memory and out of the store, with nothing but the clock moved.
            clock.now = start + RETENTION.total_seconds() + 11
            await answers(runtime, revoked, Code.NOT_FOUND)
            await answers(runtime, lapsing, Code.NOT_FOUND)

            async def out_of_store() -> bool:
                return stored_key_ids(settings) == {"key_live"}

            await eventually(out_of_store)
            assert len(runtime.service.projection) == 1
            assert runtime.service.validate(live, throttle=False)["code"] == Code.VALID

            # Over NATS, a pruned key's NOT_FOUND goes through the read-your-writes hold: the replica
            # is caught up, so it is answered at once, and NOT_FOUND.
            began = time.monotonic()
            reply = await nc.request(SUBJECT_VALIDATE, orjson.dumps({"key": revoked}), timeout=3)
            assert orjson.loads(reply.data)["code"] == Code.NOT_FOUND
            assert time.monotonic() - began < settings.read_your_writes_wait.total_seconds()
            reply = await nc.request(SUBJECT_VALIDATE, orjson.dumps({"key": live}), timeout=3)
            assert orjson.loads(reply.data)["code"] == Code.VALID

        # A restart: hydration and the stream's resumption bring nothing back.
        async with running(settings, clock) as runtime:
            assert runtime.service.validate(revoked, throttle=False)["code"] == Code.NOT_FOUND
            assert runtime.service.validate(lapsing, throttle=False)["code"] == Code.NOT_FOUND
            assert runtime.service.validate(live, throttle=False)["code"] == Code.VALID
            assert len(runtime.service.projection) == 1

        # A new replica, empty store, replays the whole stream: the dead keys land dead past their
        # retention and are never taken in, in memory or in its store.
        fresh = settings_for(server.url, tmp_path, "retention-b")
        async with running(fresh, clock) as runtime:
            assert runtime.service.validate(live, throttle=False)["code"] == Code.VALID
            assert runtime.service.validate(revoked, throttle=False)["code"] == Code.NOT_FOUND
            assert runtime.service.validate(lapsing, throttle=False)["code"] == Code.NOT_FOUND
            assert len(runtime.service.projection) == 1
            assert stored_key_ids(fresh) == {"key_live"}
    finally:
        await nc.close()
