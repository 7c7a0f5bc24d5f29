"""The bus's identities as `cnx-keys up` configures them (shared/natsidentities.py, one function for both),
tried from outside: anonymous clients are refused; the platform identity validates keys (a running
validator answers) but cannot take `keys.validate` requests, forge key events or send commands; and
the whole stack, each service as itself, creates, rotates, revokes and notifies with no permission
violation logged by the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from services.devstack.smtp_sink import SmtpSink
from services.validator.natswire import ProtocolError, WireClient
from shared.events import STREAM_EVENTS
from shared.natsidentities import PLATFORM
from shared.natsserver import free_port
from tests.support.nats import SecuredNats

from .stack import ProcessStack, poll, process_stack


@pytest.fixture
def secured(make_secured_nats_server: Any) -> SecuredNats:
    return make_secured_nats_server()  # type: ignore[no-any-return]


@pytest.fixture
def validator_stack(secured: SecuredNats, tmp_path: Path) -> Iterator[ProcessStack]:
    with process_stack(secured, tmp_path / "data", ["issuer", "validator"]) as running:
        yield running


@asynccontextmanager
async def client(url: str, inbox: str = "_INBOX") -> AsyncIterator[tuple[NatsClient, list[str]]]:
    """A nats-py connection and the permission errors the server sent it. A service identity's replies
    come to its own inbox prefix (`_INBOX_<service>`)."""
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        url, allow_reconnect=False, connect_timeout=3, error_cb=record, inbox_prefix=inbox
    )
    try:
        yield nc, errors
    finally:
        await nc.close()


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_anonymous_clients_are_refused(secured: SecuredNats) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(secured.url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
    lean = WireClient(secured.url, name="anonymous", connect_timeout=3)
    with pytest.raises(ProtocolError, match=r"(?i)authorization"):
        await lean.start()
    wrong = secured.url_for(PLATFORM).replace(secured.passwords[PLATFORM], "not-the-password")
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(wrong, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)


async def test_platform_validates_keys_and_cannot_do_more(
    secured: SecuredNats, validator_stack: ProcessStack
) -> None:
    key = str(validator_stack.create_key(scopes=["compute:read"])["key"])
    async with client(secured.url_for(PLATFORM)) as (nc, errors):
        # It may validate: a running validator answers.
        async def answer() -> dict[str, Any]:
            reply = await nc.request("keys.validate", orjson.dumps({"key": key, "scope": "compute:read"}), 3)
            return orjson.loads(reply.data)  # type: ignore[no-any-return]

        for _ in range(100):  # the key reaches the validator within moments of its 201
            if (await answer())["code"] == "VALID":
                break
            await asyncio.sleep(0.05)
        assert (await answer())["code"] == "VALID"

        # It may not take validation requests, in the validators' group or not.
        for queue in ("validators", ""):
            errors.clear()
            taken: list[bytes] = []

            async def take(msg: Any, taken: list[bytes] = taken) -> None:
                taken.append(msg.data)

            await nc.subscribe("keys.validate", queue=queue, cb=take)
            await nc.flush()
            await until(lambda: any("permissions violation for subscription" in e for e in errors))
            assert (await answer())["code"] == "VALID"  # still the validator's answer
            assert taken == []

        # It may not forge key events nor send commands.
        async with client(secured.url_for("validator"), "_INBOX_validator") as (watcher, _):
            js = watcher.jetstream()
            before = (await js.stream_info(STREAM_EVENTS)).state.last_seq
            errors.clear()
            await nc.publish("keys.events.key.revoked", b'{"key_id": "k"}')
            await nc.flush()
            await until(lambda: any("permissions violation for publish" in e for e in errors))
            errors.clear()
            with pytest.raises(Exception):  # noqa: B017 (timeout or no responders)
                await nc.request("keys.cmd.revoke", b'{"key_id": "k", "reason": "x"}', timeout=1)
            await until(lambda: any("keys.cmd.revoke" in e for e in errors))
            assert (await js.stream_info(STREAM_EVENTS)).state.last_seq == before
        assert (await answer())["code"] == "VALID"  # no command revoked the key


async def test_only_validators_join_the_validators_group(secured: SecuredNats) -> None:
    for identity in ("issuer", "rotator", "notifier"):
        async with client(secured.url_for(identity)) as (nc, errors):
            await nc.subscribe("keys.validate", queue="validators")
            await nc.flush()
            await until(lambda errors=errors: any("violation" in e for e in errors))


def test_the_whole_stack_works_with_each_service_as_itself(secured: SecuredNats, tmp_path: Path) -> None:
    """Create, validate through the demo API (a platform service), rotate with a short grace (the rotator's
    schedule fires, it asks the issuer to end the grace), revoke, and the notifier mails the owner (it asks
    the issuer for the webhook secret too): all under the permissions, none violated."""

    # The SMTP sink serves from a loop of its own thread while this test drives the stack over HTTP.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sink = asyncio.run_coroutine_threadsafe(
        SmtpSink(tmp_path / "mail", "127.0.0.1", free_port()).start(), loop
    ).result(10)
    try:
        with process_stack(
            secured,
            tmp_path / "data",
            ["issuer", "validator", "rotator", "notifier", "demo"],
            CNX_SMTP_PORT=str(sink.port),
        ) as stack:
            created = stack.create_key(
                notify={"email": "owner@example.com", "webhook_url": "http://127.0.0.1:9/"}
            )
            key = str(created["key"])
            poll(lambda: stack.instances_status(key) == 200, timeout=15)
            rotated = httpx.post(
                f"{stack.url('issuer')}/v2/keys/rotate",
                json={"key_id": created["id"], "grace_period_hours": 0},
                headers=stack.admin(),
                timeout=10,
            )
            assert rotated.status_code == 201, rotated.text
            new_key = str(rotated.json()["key"])
            poll(lambda: stack.instances_status(new_key) == 200, timeout=15)
            poll(lambda: stack.instances_status(key) == 401, timeout=30)
            revoked = httpx.post(
                f"{stack.url('issuer')}/v2/keys/{rotated.json()['id']}/revoke",
                headers=stack.admin(),
                timeout=10,
            )
            assert revoked.status_code == 200, revoked.text
            poll(lambda: stack.instances_status(new_key) == 401, timeout=15)
            poll(lambda: len(list((tmp_path / "mail").glob("*.eml"))) >= 2, timeout=30)
        log = secured.server.log_text()
        assert "Violation" not in log, log
    finally:
        asyncio.run_coroutine_threadsafe(sink.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
