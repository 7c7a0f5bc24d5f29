"""Events from other platform services: account deleted / suspended / resumed, leaked secrets, and
bad payloads that go to the dead-letter subject without stopping the consumer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.api import DeliverPolicy

from shared.events import STREAM_EVENTS
from shared.messaging import STREAM_DEAD_LETTERS
from shared.platform import STREAM_PLATFORM

from .stack import Stack, eventually, other_account, sqlite_stack_with_client


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with sqlite_stack_with_client(nats_server.url, make_database_url, tmp_path, "pe") as running:
        yield running


async def test_suspended_account_is_refused_then_restored(stack: Stack) -> None:
    account, admin = await other_account(stack)
    key = (await stack.create_key(admin=admin))["key"]
    mine = (await stack.create_key())["key"]
    await stack.wait_demo_status(key, 200)
    nc = stack.extra["nc"]
    await nc.publish(
        "platform.accounts.suspended", orjson.dumps({"account_id": account, "reason": "billing"})
    )
    await stack.wait_demo_status(key, 401)
    assert await stack.demo_status(mine) == 200, "other accounts are untouched"
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth(admin))).status_code == 401
    await nc.publish("platform.accounts.resumed", orjson.dumps({"account_id": account}))
    await stack.wait_demo_status(key, 200)
    assert (await stack.issuer.get("/v2/keys", headers=stack.auth(admin))).status_code == 200


async def test_deleted_account_loses_every_key(stack: Stack) -> None:
    account, admin = await other_account(stack)
    keys = [(await stack.create_key(admin=admin, name=f"k{i}"))["key"] for i in range(3)]
    for key in keys:
        await stack.wait_demo_status(key, 200)
    await stack.extra["nc"].publish("platform.accounts.deleted", orjson.dumps({"account_id": account}))
    for key in keys:
        await stack.wait_demo_status(key, 401)
    listed = await stack.issuer_app.state.service.store.page_keys(
        account, status=None, environment=None, now=datetime.now(UTC), limit=10, before_seq=None
    )
    assert {k.status for k in listed} == {"revoked"}


async def test_leaked_secret_is_revoked_by_token_or_digest(stack: Stack) -> None:
    by_token = await stack.create_key(name="leaky")
    by_digest = await stack.create_key(name="leaky too")
    await stack.wait_demo_status(by_token["key"], 200)
    nc = stack.extra["nc"]
    await nc.publish("platform.secrets.leaked", orjson.dumps({"token": by_token["key"], "source": "github"}))
    await stack.wait_demo_status(by_token["key"], 401)
    digest = stack.issuer_app.state.service.digest(by_digest["key"])
    await nc.publish("platform.secrets.leaked", orjson.dumps({"digest": digest, "source": "gitlab"}))
    await stack.wait_demo_status(by_digest["key"], 401)
    got = await stack.issuer.get(f"/v2/keys/{by_token['id']}", headers=stack.auth())
    assert got.json()["status"] == "revoked"


async def test_a_leak_report_is_erased_from_the_stream_once_applied(stack: Stack) -> None:
    """The bus does not keep a leaked plaintext token: the issuer erases each report it has applied
    (a report that could not be applied is erased too: its dead letter holds the token's prefix only)."""
    leaky = await stack.create_key(name="leaky")
    await stack.wait_demo_status(leaky["key"], 200)
    nc = stack.extra["nc"]
    js = nc.jetstream()
    url = "https://gist.github.com/someone/abc123"
    ack = await js.publish(
        "platform.secrets.leaked", orjson.dumps({"token": leaky["key"], "source": "gitleaks", "url": url})
    )
    bad = await js.publish("platform.secrets.leaked", b"{not json " + leaky["key"].encode())
    assert ack.stream == STREAM_PLATFORM
    await stack.wait_demo_status(leaky["key"], 401)

    async def erased() -> bool:
        gone = 0
        for seq in (ack.seq, bad.seq):
            try:
                await js.get_msg(STREAM_PLATFORM, seq)
            except nats.js.errors.NotFoundError:
                gone += 1
        return gone == 2

    await eventually(erased, timeout=5)
    # The revocation kept where it leaked, on the KeyRevoked event.
    sub = await js.subscribe("keys.events.key.revoked", stream=STREAM_EVENTS, ordered_consumer=True)
    events: list[dict[str, Any]] = []

    async def revoked_event() -> bool:
        try:
            msg = await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            return False
        event = orjson.loads(msg.data)
        if event["key_id"] == leaky["id"]:
            events.append(event)
        return bool(events)

    await eventually(revoked_event, timeout=5)
    assert events[0]["leak_url"] == url and events[0]["leak_source"] == "gitleaks"
    assert url in events[0]["reason"]


async def test_bad_payloads_go_to_the_dead_letter_subject_and_the_consumer_goes_on(stack: Stack) -> None:
    nc = stack.extra["nc"]
    js = nc.jetstream()
    leaked = (await stack.create_key())["key"]
    marker = uuid.uuid4().hex
    # Only letters from now on: earlier tests of the session leave their own in the shared stream.
    sub = await js.subscribe(
        "keys.dlq.>", stream=STREAM_DEAD_LETTERS, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    await nc.publish("platform.accounts.suspended", orjson.dumps({"reason": marker}))
    await nc.publish("platform.secrets.leaked", b"{not json " + leaked.encode())
    await nc.publish("platform.accounts.deleted", b"[]")
    seen: list[dict[str, Any]] = []

    async def three_dead_letters() -> bool:
        try:
            msg = await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            return False
        assert leaked.encode() not in msg.data, "a leaked token must not be copied into the dead letters"
        seen.append(orjson.loads(msg.data))
        return len([s for s in seen if s["subject"].startswith("platform.")]) >= 3

    await eventually(three_dead_letters, timeout=10)
    assert any("account_id" in s["reason"] and marker in s["payload"] for s in seen)
    # The consumer is still alive: a good event after the bad ones is applied.
    await nc.publish("platform.secrets.leaked", orjson.dumps({"token": leaked}))
    await stack.wait_demo_status(leaked, 401)
