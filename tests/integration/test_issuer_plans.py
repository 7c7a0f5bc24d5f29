"""platform.plans.changed end to end on a real nats-server with the in-process issuer and validator: the
issuer's key objects and new keys follow the account's plan, the validators enforce the same limits,
the publisher's request is answered by a validator only, and a bad payload changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.issuer.tables import IssuerOutbox
from shared.client import ValidationClient
from shared.events import PLAN_LIMITS, KeyUpdated, parse_event
from shared.messaging import STREAM_DEAD_LETTERS
from shared.validation import SUBJECT_PLANS_CHANGED

from .stack import Stack, eventually, other_account, sqlite_stack_with_client

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
async def stack(nats_server: Any, make_database_url: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with sqlite_stack_with_client(nats_server.url, make_database_url, tmp_path, "plan") as running:
        yield running


def change(account: str, plan: str, at: datetime | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"account_id": account, "plan": plan, **extra}
    if at is not None:
        body["occurred_at"] = at.isoformat()
    return orjson.dumps(body)


async def key_object(stack: Stack, admin: str, key_id: str) -> dict[str, Any]:
    response = await stack.issuer.get(f"/v2/keys/{key_id}", headers=stack.auth(admin))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def wait_plan(stack: Stack, admin: str, key_id: str, plan: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def has_plan() -> bool:
        seen.update(await key_object(stack, admin, key_id))
        return bool(seen["plan"] == plan)

    await eventually(has_plan, timeout=5.0)
    return seen


async def test_an_upgrade_reaches_key_objects_new_keys_and_validators(stack: Stack) -> None:
    nc = stack.extra["nc"]
    account, admin = await other_account(stack)
    starter = await stack.create_key(admin=admin)
    await stack.wait_demo_status(starter["key"], 200)
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "starter", T0))
    await wait_plan(stack, admin, starter["id"], "starter")
    on_starter = await stack.create_key(admin=admin)
    assert on_starter["plan"] == "starter" and on_starter["rate_limit"]["burst"] == 100

    answer = await nc.request(SUBJECT_PLANS_CHANGED, change(account, "professional", T0 + timedelta(hours=1)))
    assert orjson.loads(answer.data) == {"ok": True, "applied": True, "instance": stack.validator.cluster.me}

    for key in (starter, on_starter):
        upgraded = await wait_plan(stack, admin, key["id"], "professional")
        assert upgraded["rate_limit"] == PLAN_LIMITS["professional"].model_dump()
    listed = (await stack.issuer.get("/v2/keys", headers=stack.auth(admin))).json()["data"]
    assert {k["plan"] for k in listed} == {"professional"}
    created = await stack.create_key(admin=admin)
    assert (
        created["plan"] == "professional"
        and created["rate_limit"] == PLAN_LIMITS["professional"].model_dump()
    )

    # The validators enforce the professional bucket, and hold the issuer's view of the key too.
    client = ValidationClient(nc)
    result = await client.validate(starter["key"])
    assert result.valid and result.rate_limit is not None and result.rate_limit.limit == 2000
    projection = stack.validator.service.projection

    async def revision_seen() -> bool:
        entry = projection.entry(starter["id"])
        return entry is not None and entry.revision == 3

    await eventually(revision_seen)


async def test_only_a_validator_answers_the_request(stack: Stack) -> None:
    nc = stack.extra["nc"]
    account, admin = await other_account(stack)
    key = await stack.create_key(admin=admin)
    inbox = nc.new_inbox()
    answers = await nc.subscribe(inbox)
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "enterprise", T0), reply=inbox)
    # The issuer handles one message at a time: once it has applied a second change, whatever it did
    # with the first (an answer included) is on its connection; the flushes get it to us if it exists.
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "starter", T0 + timedelta(seconds=1)))
    await wait_plan(stack, admin, key["id"], "starter")
    await stack.issuer_app.state.broker.connection.flush()
    got: list[dict[str, Any]] = []

    async def validator_answered() -> bool:
        await nc.flush()
        while answers.pending_msgs:
            got.append(orjson.loads((await answers.next_msg(timeout=1)).data))
        return bool(got)

    await eventually(validator_answered)
    assert got == [{"ok": True, "applied": True, "instance": stack.validator.cluster.me}]


async def updates_of(stack: Stack, key_id: str) -> list[KeyUpdated]:
    """Every KeyUpdated the issuer wrote for the key (the outbox keeps published rows)."""
    query = select(IssuerOutbox).where(IssuerOutbox.subject == "keys.events.key.updated")
    async with AsyncSession(stack.issuer_app.state.service.store.engine) as session:
        rows = (await session.exec(query)).all()
    events = [parse_event(row.payload) for row in rows]
    return [e for e in events if isinstance(e, KeyUpdated) and e.key_id == key_id]


async def test_a_late_change_and_a_redelivery_change_nothing(stack: Stack) -> None:
    nc = stack.extra["nc"]
    account, admin = await other_account(stack)
    key = await stack.create_key(admin=admin)
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "starter", T0 + timedelta(hours=1)))
    first = await wait_plan(stack, admin, key["id"], "starter")
    assert [e.changed for e in await updates_of(stack, key["id"])] == [["plan", "rate_limit"]]

    # The same change again, then an older one, then a change of another account: once that is
    # applied, the issuer has handled the two before it (it takes one message at a time).
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "starter", T0 + timedelta(hours=1)))
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "professional", T0))
    marker_account, marker_admin = await other_account(stack)
    marker = await stack.create_key(admin=marker_admin)
    await nc.publish(SUBJECT_PLANS_CHANGED, change(marker_account, "starter"))
    await wait_plan(stack, marker_admin, marker["id"], "starter")

    assert await key_object(stack, admin, key["id"]) == first
    assert len(await updates_of(stack, key["id"])) == 1, "no second round of events"


async def test_a_bad_payload_goes_to_the_dead_letters_and_changes_nothing(stack: Stack) -> None:
    nc = stack.extra["nc"]
    account, admin = await other_account(stack)
    key = await stack.create_key(admin=admin)
    before = await key_object(stack, admin, key["id"])
    js = nc.jetstream()
    dead = await js.subscribe(
        f"keys.dlq.{SUBJECT_PLANS_CHANGED}", stream=STREAM_DEAD_LETTERS, ordered_consumer=True
    )
    await nc.publish(SUBJECT_PLANS_CHANGED, change(account, "platinum"))
    await nc.publish(SUBJECT_PLANS_CHANGED, b"{not json")
    letters: list[dict[str, Any]] = []

    async def two_letters() -> bool:
        try:
            letters.append(orjson.loads((await dead.next_msg(timeout=0.2)).data))
        except nats.errors.TimeoutError:
            pass
        return len(letters) >= 2

    await eventually(two_letters, timeout=10)
    assert all(letter["subject"] == SUBJECT_PLANS_CHANGED for letter in letters)
    assert any("plan" in letter["reason"] and "platinum" in letter["payload"] for letter in letters)
    assert await key_object(stack, admin, key["id"]) == before
    account_row = await stack.issuer_app.state.service.store.get_or_create_account(account)
    assert account_row.plan == "professional" and account_row.plan_changed_at is None
    assert await updates_of(stack, key["id"]) == []
