"""Delivery under failure: SMTP down then up, webhook 5xx/429 retried, SMTP 5xx and webhook 410 not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.integration.lifecycle_harness import SETTLE, Lifecycle, eventually, in_seconds, lifecycle


async def deliveries(life: Lifecycle, key_id: str, channel: str) -> list:  # type: ignore[type-arg]
    rows = await life.apps["notifier"].state.service.store.deliveries(key_id)
    return [r for r in rows if r.channel == channel]


async def test_smtp_down_then_up_delivers_once(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=[timedelta(seconds=2)]) as life:
        life.mailbox.stop()
        key = await life.create_key(expires_at=in_seconds(60), notify={"email": "owner@example.com"})
        store = life.apps["notifier"].state.service.store
        response = await life.issuer.post(f"/v2/keys/{key['id']}/revoke", headers=life.auth())
        assert response.status_code == 200

        async def failed_twice() -> bool:
            rows = await deliveries(life, key["id"], "email")
            return bool(rows) and rows[0].attempts >= 2 and rows[0].status == "retrying"

        await eventually(failed_twice, timeout=SETTLE)
        life.mailbox.start()

        async def delivered() -> bool:
            rows = await deliveries(life, key["id"], "email")
            return bool(rows) and rows[0].status == "delivered"

        await eventually(delivered, timeout=SETTLE)
        assert len(life.mailbox.for_key(key["id"])) == 1
        row = (await deliveries(life, key["id"], "email"))[0]
        attempts = await store.attempts(row.id)
        assert [a.outcome for a in attempts][-1] == "delivered"
        assert all(a.outcome == "retry" for a in attempts[:-1]) and len(attempts) >= 3


async def test_smtp_4xx_is_retried_and_5xx_is_not(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=[]) as life:
        life.mailbox.reply = "451 4.3.0 try again later"
        first = await life.create_key(notify={"email": "a@example.com"})
        await life.issuer.post(f"/v2/keys/{first['id']}/revoke", headers=life.auth())

        async def refused_once() -> bool:
            return life.mailbox.refused >= 1

        await eventually(refused_once)
        life.mailbox.reply = None
        await eventually(lambda: len(life.mailbox.for_key(first["id"])) == 1, timeout=SETTLE)

        life.mailbox.reply = "550 5.1.1 no such user"
        second = await life.create_key(notify={"email": "b@example.com"})
        await life.issuer.post(f"/v2/keys/{second['id']}/revoke", headers=life.auth())

        async def failed() -> bool:
            rows = await deliveries(life, second["id"], "email")
            return bool(rows) and rows[0].status == "failed"

        await eventually(failed)
        row = (await deliveries(life, second["id"], "email"))[0]
        assert row.attempts == 1 and "550" in (row.last_error or "")


async def test_webhook_5xx_and_429_are_retried_410_is_not(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, expiry_notices=[]) as life:
        await life.webhook_secret()
        life.webhooks.statuses = [503, 429]
        life.webhooks.retry_after = "1"
        key = await life.create_key(notify={"webhook_url": life.webhooks.url})
        await life.issuer.post(f"/v2/keys/{key['id']}/revoke", headers=life.auth())

        async def delivered() -> bool:
            rows = await deliveries(life, key["id"], "webhook")
            return bool(rows) and rows[0].status == "delivered"

        await eventually(delivered, timeout=SETTLE)
        received = life.webhooks.for_key(key["id"])
        assert [h.status for h in received] == [503, 429, 204]
        # The same message id on every attempt, so a receiver can de-duplicate.
        assert len({h.headers["webhook-id"] for h in received}) == 1

        life.webhooks.statuses = [410]
        gone = await life.create_key(notify={"webhook_url": life.webhooks.url})
        await life.issuer.post(f"/v2/keys/{gone['id']}/revoke", headers=life.auth())

        async def failed() -> bool:
            rows = await deliveries(life, gone["id"], "webhook")
            return bool(rows) and rows[0].status == "failed"

        await eventually(failed)
        assert (await deliveries(life, gone["id"], "webhook"))[0].attempts == 1
        assert len(life.webhooks.for_key(gone["id"])) == 1
