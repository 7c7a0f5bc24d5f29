"""(d) The SMTP server and the webhook receiver are down while notices are due: the notifier keeps them
(JetStream redelivery with backoff, its delivery log), and once both are back each notice arrives
exactly once on each channel. The process-tier twin of tests/integration/test_lifecycle_delivery.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.stack import poll
from tests.faults.harness import fault_stack, report
from tests.faults.sinks import WebhookSink, deliveries, mail_notices
from tests.faults.streams import wait_idle
from tests.integration.lifecycle_harness import Mailbox
from tests.support.databases import DatabaseFactory

KEYS = 5  # each: one rotated notice, and one revoked notice for another key
NOTICES = 2 * KEYS


def test_notices_wait_for_smtp_and_webhooks_then_arrive_once(
    make_nats_server: Any, make_database_url: DatabaseFactory, tmp_path: Path
) -> None:
    nats = make_nats_server()
    mailbox = Mailbox()
    mailbox.start()
    hooks = WebhookSink().start()
    env = {"CNX_SMTP_PORT": str(mailbox.port)}
    try:
        with fault_stack(nats.url, tmp_path / "data", "sqlite", make_database_url, **env) as (stack, stores):
            mailbox.stop()
            hooks.stop()
            down_at = time.monotonic()
            notify = {"email": "owner@example.com", "webhook_url": hooks.url}
            with httpx.Client(base_url=stack.url("issuer"), headers=stack.admin(), timeout=10) as issuer:
                for i in range(KEYS):
                    rotated = stack.create_key(name=f"rotated {i}", notify=notify)
                    response = issuer.post(
                        "/v2/keys/rotate", json={"key_id": rotated["id"], "grace_period_hours": 1}
                    )
                    assert response.status_code == 201, response.text
                    revoked = stack.create_key(name=f"revoked {i}", notify=notify)
                    assert issuer.post(f"/v2/keys/{revoked['id']}/revoke").status_code == 200

            # Down long enough that every delivery is refused twice (its first retry fails too).
            def attempts() -> int:
                return int(stores.query("notifier", "SELECT count(*) FROM notifier_attempts")[0][0])

            poll(lambda: attempts() >= 4 * NOTICES, 60, interval=0.2, what="two refused attempts each")
            failed_attempts = attempts()
            assert deliveries(stores).get("retrying", 0) == 2 * NOTICES
            mailbox.start()
            hooks.start()
            back_at = time.monotonic()
            delivered_s = poll(
                lambda: deliveries(stores).get("delivered", 0) == 2 * NOTICES,
                60,
                interval=0.2,
                what="every notice delivered after the sinks returned",
            )
            wait_idle(nats.url, [("KEYS_EVENTS", "notifier")], 30)
            mails, webhooks = mail_notices(mailbox), hooks.notices()
            report(
                "d. SMTP and webhook receiver down, then back",
                notices_per_channel=NOTICES,
                down_s=round(back_at - down_at, 2),
                attempts_while_down=failed_attempts,
                delivered_after_return_s=round(delivered_s, 2),
                emails=sum(mails.values()),
                webhooks=sum(webhooks.values()),
                duplicate_emails=sum(n - 1 for n in mails.values()),
                duplicate_webhooks=sum(n - 1 for n in webhooks.values()),
                deliveries=dict(deliveries(stores)),
            )
            assert sum(mails.values()) == len(mails) == NOTICES
            assert sum(webhooks.values()) == len(webhooks) == NOTICES
    finally:
        hooks.stop()
        mailbox.stop()
