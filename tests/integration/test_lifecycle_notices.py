"""Expiry notices: scheduled in NATS, sent by email and as signed webhooks, exactly once each."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.integration.lifecycle_harness import (
    SETTLE,
    Lifecycle,
    eventually,
    in_seconds,
    lifecycle,
    verify_hook,
)

NOTICES = [timedelta(seconds=4), timedelta(seconds=2)]


def subjects(life: Lifecycle, key_id: str) -> list[str]:
    return sorted(str(m["Subject"]) for m in life.mailbox.for_key(key_id))


async def all_delivered(life: Lifecycle, key_id: str, count: int) -> bool:
    rows = await life.apps["notifier"].state.service.store.deliveries(key_id)
    return len(rows) == count and all(r.status == "delivered" for r in rows)


async def test_expiring_key_gets_each_notice_once_and_is_marked_expired(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=NOTICES) as life:
        secret = await life.webhook_secret()
        key = await life.create_key(
            name="billing job",
            expires_at=in_seconds(6),
            notify={"email": "owner@example.com", "webhook_url": life.webhooks.url},
        )

        async def expired() -> bool:
            return await life.stored_status(key["id"]) == "expired"

        await eventually(expired, timeout=SETTLE)
        # 2 notices + the expiry, on each of 2 channels.
        await eventually(lambda: all_delivered(life, key["id"], 6), timeout=SETTLE)

        mails = life.mailbox.for_key(key["id"])
        assert len(mails) == 3, subjects(life, key["id"])
        expiring = [m for m in mails if "expires" in str(m["Subject"])]
        assert len(expiring) == 2
        for mail in mails:
            assert key["prefix"] in str(mail["Subject"])
            text = mail.get_payload()
            assert "billing job" in str(text) and "prod" in str(text)
        assert "renew" in str(expiring[0].get_payload())

        hooks = life.webhooks.delivered(key["id"])
        assert sorted(h.json["type"] for h in hooks) == ["key.expired", "key.expiring", "key.expiring"]
        assert len({h.headers["webhook-id"] for h in hooks}) == 3
        for hook in hooks:
            assert verify_hook(hook, secret)
            assert hook.json["prefix"] == key["prefix"]
            assert hook.json["environment"] == "prod" and hook.json["name"] == "billing job"
            assert hook.json["expires_at"]

        assert (await life.key(key["id"]))["status"] == "expired"


async def test_rotation_and_grace_end_are_notified(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, rotation_grace=timedelta(seconds=1), expiry_notices=[]) as life:
        await life.webhook_secret()
        key = await life.create_key(notify={"email": "owner@example.com", "webhook_url": life.webhooks.url})
        response = await life.issuer.post("/v2/keys/rotate", json={"key_id": key["id"]}, headers=life.auth())
        assert response.status_code == 201
        await eventually(lambda: all_delivered(life, key["id"], 4), timeout=SETTLE)
        types = sorted(h.json["type"] for h in life.webhooks.delivered(key["id"]))
        assert types == ["key.revoked", "key.rotated"]
        assert any("Grace period ended" in s for s in subjects(life, key["id"]))


async def test_auto_renew_key_is_renewed_instead_of_notified(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=[timedelta(seconds=2)]) as life:
        key = await life.create_key(
            expires_at=in_seconds(3), auto_renew=True, notify={"email": "owner@example.com"}
        )

        async def renewed() -> bool:
            return (await life.key(key["id"]))["expires_at"] != key["expires_at"]

        await eventually(renewed, timeout=SETTLE)
        assert (await life.key(key["id"]))["status"] == "active"
        assert life.mailbox.for_key(key["id"]) == []
