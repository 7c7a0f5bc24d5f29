"""Webhooks are always signed, and a secret rotation has no gap: the issuer and notifier apps on a real
nats-server, a real receiver; signatures checked with the Standard Webhooks algorithm written out here
(as its reference libraries do it), not with the notifier's own code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import timedelta
from pathlib import Path

from tests.integration.lifecycle_harness import SETTLE, Hook, Lifecycle, eventually, lifecycle

OVERLAP = timedelta(seconds=5)


def standard_webhooks_verify(secret: str, hook: Hook, tolerance_s: int = 300) -> bool:
    """Standard Webhooks: key = base64 after `whsec_`; signed content `{id}.{timestamp}.{body}`;
    `webhook-signature` is space-separated `v1,<base64 HMAC-SHA256>`, any one of which may match;
    the timestamp must be recent."""
    msg_id, timestamp = hook.headers["webhook-id"], hook.headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{msg_id}.{timestamp}.".encode() + hook.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for versioned in hook.headers["webhook-signature"].split(" "):
        version, _, signature = versioned.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


async def revoked_hook(life: Lifecycle) -> Hook:
    key = await life.create_key(notify={"webhook_url": life.webhooks.url})
    response = await life.issuer.post(f"/v2/keys/{key['id']}/revoke", headers=life.auth())
    assert response.status_code == 200, response.text

    async def arrived() -> bool:
        return len(life.webhooks.delivered(key["id"], "key.revoked")) == 1

    await eventually(arrived, timeout=SETTLE)
    return life.webhooks.delivered(key["id"], "key.revoked")[0]


async def signing_secrets(life: Lifecycle) -> list[str]:
    return await life.apps["issuer"].state.service.webhook_secrets(life.settings.default_account)  # type: ignore[no-any-return]


async def test_an_account_without_a_secret_gets_one_and_its_webhooks_are_signed(tmp_path: Path) -> None:
    async with lifecycle(tmp_path, services=("notifier",), expiry_notices=[]) as life:
        hook = await revoked_hook(life)
        (made,) = await signing_secrets(life)  # made by the issuer when the notifier asked
        assert made.startswith("whsec_") and len(base64.b64decode(made[6:])) == 32
        assert len(hook.headers["webhook-signature"].split(" ")) == 1
        assert standard_webhooks_verify(made, hook)


async def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(tmp_path: Path) -> None:
    async with lifecycle(
        tmp_path, services=("notifier",), expiry_notices=[], webhook_secret_overlap=OVERLAP
    ) as life:
        old = await life.webhook_secret()
        new = await life.webhook_secret()
        assert old != new
        during = await revoked_hook(life)
        first, second = during.headers["webhook-signature"].split(" ")
        assert first.startswith("v1,") and second.startswith("v1,")
        assert standard_webhooks_verify(new, during) and standard_webhooks_verify(old, during)
        # The new secret's signature comes first.
        assert standard_webhooks_verify(
            new, Hook({**during.headers, "webhook-signature": first}, during.body, 204)
        )
        assert standard_webhooks_verify(
            old, Hook({**during.headers, "webhook-signature": second}, during.body, 204)
        )

        async def overlap_over() -> bool:
            return len(await signing_secrets(life)) == 1

        await eventually(overlap_over, timeout=OVERLAP.total_seconds() + 5)
        after = await revoked_hook(life)
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        assert standard_webhooks_verify(new, after) and not standard_webhooks_verify(old, after)


async def test_a_third_rotation_drops_the_oldest_secret(tmp_path: Path) -> None:
    """One previous secret is kept: rotating twice within the overlap ends the first secret at once."""
    async with lifecycle(tmp_path, services=("notifier",), expiry_notices=[]) as life:
        first = await life.webhook_secret()
        second = await life.webhook_secret()
        third = await life.webhook_secret()
        assert await signing_secrets(life) == [third, second]
        hook = await revoked_hook(life)
        assert standard_webhooks_verify(third, hook) and standard_webhooks_verify(second, hook)
        assert not standard_webhooks_verify(first, hook)
