"""The issuer's NATS handlers, in memory (FastStream's TestNatsBroker) with a fake use-case layer:
each parses, calls one use case and answers; bad platform payloads go to the dead-letter subject."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from services.issuer import handlers
from services.issuer.domain import Key
from shared import tokens


class FakeService:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def _key(self, key_id: str, status: str) -> Key:
        return Key(
            id=key_id,
            account_id="a",
            digest="d" * 64,
            prefix="cnx_prod_abcd",
            name="k",
            environment="prod",
            scopes=["compute:read"],
            plan="starter",
            status=status,
            created_at=datetime.now(UTC),
            revision=2,
        )

    def status_of(self, key: Key) -> str:
        return key.status

    async def revoke_by_command(self, key_id: str, reason: str | None) -> Key:
        self.calls.append(("revoke", (key_id, reason)))
        return self._key(key_id, "revoked")

    async def end_grace(self, key_id: str) -> Key | None:
        self.calls.append(("end_grace", key_id))
        return None

    async def report_leak(
        self, token: str | None, digest: str | None, source: str | None, url: str | None = None
    ) -> Key:
        self.calls.append(("leak", source))
        return self._key("key_leaked", "revoked")

    async def set_account_suspended(self, account_id: str, suspended: bool) -> int:
        self.calls.append(("suspend", (account_id, suspended)))
        return 3


@pytest.fixture
def service() -> FakeService:
    return FakeService()


async def test_revoke_command_answers_with_the_new_status(service: FakeService) -> None:
    broker = NatsBroker()
    handlers.register(broker, service)  # type: ignore[arg-type]
    async with TestNatsBroker(broker) as test_broker:
        reply = await test_broker.request({"key_id": "key_1", "reason": "leak"}, "keys.cmd.revoke")
        assert await reply.decode() == {
            "ok": True,
            "key_id": "key_1",
            "status": "revoked",
            "revision": 2,
            "expires_at": None,
        }
        missing = await test_broker.request({"key_id": "key_2"}, "keys.cmd.end_grace")
        assert await missing.decode() == {"ok": False, "error": "not_found"}
    assert service.calls == [("revoke", ("key_1", "leak")), ("end_grace", "key_2")]


@pytest.mark.parametrize(
    ("subject", "body", "where"),
    [
        ("keys.cmd.revoke", {"reason": "no key id"}, "key_id"),
        ("keys.cmd.end_grace", {"key_id": ""}, "key_id"),
        ("keys.cmd.renew", {"key_id": "key_1", "extend_days": 0}, "extend_days"),
        ("keys.cmd.status", ["key_1"], "body"),
        ("keys.cmd.webhook_secret", {"key_id": "key_1"}, "account_id"),
    ],
)
async def test_a_bad_command_body_is_answered_with_an_error_and_changes_nothing(
    service: FakeService, subject: str, body: object, where: str
) -> None:
    broker = NatsBroker()
    handlers.register(broker, service)  # type: ignore[arg-type]
    async with TestNatsBroker(broker) as test_broker:
        answer = await (await test_broker.request(body, subject)).decode()
    assert answer["ok"] is False and answer["error"] == "bad_request"  # type: ignore[index]
    assert where in answer["detail"]  # type: ignore[index]
    assert service.calls == []


async def test_platform_events_dispatch_by_subject(service: FakeService) -> None:
    outcome = await handlers.handle_platform_event(
        service,
        "platform.accounts.suspended",
        orjson.dumps({"account_id": "acme"}),  # type: ignore[arg-type]
    )
    assert outcome == "changed 3 keys" and service.calls == [("suspend", ("acme", True))]
    leaked = await handlers.handle_platform_event(
        service,
        "platform.secrets.leaked",
        orjson.dumps({"token": tokens.generate("prod"), "source": "gh"}),  # type: ignore[arg-type]
    )
    assert leaked == "revoked key_leaked"


def test_dead_letters_keep_the_reason_but_never_the_token() -> None:
    token = tokens.generate("prod")
    subject, body = handlers.dead_letter(
        "platform.secrets.leaked", f"bad: {token}", b'{"token": "' + token.encode()
    )
    assert subject == "keys.dlq.platform.secrets.leaked"
    assert token.encode() not in body and tokens.display_prefix(token).encode() in body
    assert orjson.loads(body)["subject"] == "platform.secrets.leaked"
