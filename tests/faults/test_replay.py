"""(c) The whole KEYS_EVENTS stream replayed into every consumer a second time (each message published
again under a new Nats-Msg-Id, so the server keeps it): the validator projection, the issuer's usage
counts and the schedules stay as they were, and no email or webhook is sent twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats

from tests.e2e.stack import poll
from tests.faults.audit import validator_code
from tests.faults.harness import fault_stack, report
from tests.faults.sinks import WebhookSink, deliveries, mail_notices
from tests.faults.streams import consumer_states, consumers_idle, read_stream, stream_subjects, wait_idle
from tests.integration.lifecycle_harness import Mailbox
from tests.support.databases import DatabaseFactory, run_sync

CONSUMERS = [
    ("KEYS_EVENTS", "validator-e2e"),
    ("KEYS_EVENTS", "rotator"),
    ("KEYS_EVENTS", "notifier"),
    ("KEYS_EVENTS", "issuer-usage"),
    ("KEYS_SCHEDULES", "rotator-fired"),
]
# Seen here: the rotator's batch consumer can hold a key event unacknowledged (never nak'ed, not
# redelivered) until its ack_wait of 60 s runs out; its backlog is reported in the figures rather than
# waited for (a missed grace-period notice would still fail the notice count below).
ROTATOR_UNACKED = frozenset({"rotator"})
PER_KIND = 4
# expiring + expired, rotated + grace-ended, revoked: notices per channel.
NOTICES = PER_KIND * 2 + PER_KIND * 2 + PER_KIND


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def republish(nats_url: str) -> int:
    """Every message of KEYS_EVENTS again, same subject and payload, a new Nats-Msg-Id."""
    messages = read_stream(nats_url)

    async def run() -> int:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            last = 0
            for m in messages:
                ack = await js.publish(m.subject, m.data, headers={"Nats-Msg-Id": f"replay-{m.seq}"})
                last = ack.seq
            return last
        finally:
            await nc.close()

    run_sync(run)
    return len(messages)


def test_replaying_every_event_changes_nothing(
    make_nats_server: Any, make_database_url: DatabaseFactory, tmp_path: Path
) -> None:
    nats_server = make_nats_server()
    mailbox = Mailbox()
    mailbox.start()
    hooks = WebhookSink().start()
    env = {"CNX_SMTP_PORT": str(mailbox.port), "CNX_EXPIRY_NOTICES": "3s"}
    try:
        with fault_stack(nats_server.url, tmp_path / "data", "sqlite", make_database_url, **env) as (
            stack,
            stores,
        ):
            notify = {"email": "owner@example.com", "webhook_url": hooks.url}
            issuer = httpx.Client(base_url=stack.url("issuer"), headers=stack.admin(), timeout=10)
            validator = httpx.Client(base_url=stack.url("validator"), timeout=5)
            try:
                for i in range(PER_KIND):
                    stack.create_key(name=f"expiring {i}", expires_at=in_seconds(7), notify=notify)
                    rotated = stack.create_key(name=f"rotated {i}", notify=notify)
                    response = issuer.post(
                        "/v2/keys/rotate", json={"key_id": rotated["id"], "grace_period_hours": 0.001}
                    )
                    assert response.status_code == 201, response.text
                    revoked = stack.create_key(name=f"revoked {i}", notify=notify)
                    assert issuer.post(f"/v2/keys/{revoked['id']}/revoke").status_code == 200
                used = [stack.create_key(name=f"used {i}") for i in range(3)]
                poll(lambda: all(validator_code(validator, str(k["key"])) == "VALID" for k in used), 10)
                for key in used:
                    for _ in range(4):
                        assert validator_code(validator, str(key["key"])) == "VALID"

                def uses() -> int:
                    return int(
                        stores.query("issuer", "SELECT coalesce(sum(use_count), 0) FROM issuer_keys")[0][0]
                    )

                poll(lambda: uses() >= 3 * 5, 20, what="usage recorded by the issuer")
                try:
                    settled_s = poll(
                        lambda: (
                            len(mailbox.messages) >= NOTICES
                            and hooks.count() >= NOTICES
                            and deliveries(stores).get("delivered", 0) >= 2 * NOTICES
                        ),
                        75,
                        interval=0.2,
                        what=f"{NOTICES} notices on each channel",
                    )
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc}: mail {sorted(mail_notices(mailbox).items())}, "
                        f"webhooks {sorted(hooks.notices().items())}, deliveries {deliveries(stores)}"
                    ) from None
                wait_idle(nats_server.url, CONSUMERS, 30, ROTATOR_UNACKED)

                def snapshot() -> dict[str, object]:
                    return {
                        "validator": stores.query(
                            "validator", "SELECT key_id, revision, view FROM validator_keys ORDER BY key_id"
                        ),
                        "issuer": stores.query(
                            "issuer",
                            "SELECT id, status, revision, use_count, last_used_at FROM issuer_keys "
                            "ORDER BY id",
                        ),
                        "mail": mail_notices(mailbox),
                        "webhooks": hooks.notices(),
                        "deliveries": deliveries(stores),
                        "schedules": stream_subjects(nats_server.url, "KEYS_SCHEDULES", ">"),
                    }

                before = snapshot()
                events_before = len(read_stream(nats_server.url))
                replayed = republish(nats_server.url)
                drained_s = poll(
                    lambda: consumers_idle(nats_server.url, CONSUMERS),
                    30,
                    interval=0.2,
                    what="replay drained",
                )
                after = snapshot()
                events_after = len(read_stream(nats_server.url))
                # A usage flush may land meanwhile; anything else the replay caused would be a new event.
                new_events = [
                    m.subject
                    for m in read_stream(nats_server.url)[events_before + replayed :]
                    if m.subject != "keys.events.key.used"
                ]
            finally:
                issuer.close()
                validator.close()
            changed = [name for name in before if before[name] != after[name]]
            report(
                "c. replay the whole event stream",
                events_replayed=replayed,
                events_before=events_before,
                events_after=events_after,
                new_events_caused=len(new_events),
                emails=len(mailbox.messages),
                webhooks=hooks.count(),
                duplicate_emails=sum(n - 1 for n in mail_notices(mailbox).values() if n > 1),
                duplicate_webhooks=sum(n - 1 for n in hooks.notices().values() if n > 1),
                state_changed=changed,
                notices_settled_s=round(settled_s, 2),
                replay_drained_s=round(drained_s, 2),
                consumers=consumer_states(nats_server.url, CONSUMERS),
            )
            assert changed == [], {name: (before[name], after[name]) for name in changed}
            assert new_events == []
            assert all(n == 1 for n in mail_notices(mailbox).values())
            assert all(n == 1 for n in hooks.notices().values())
            assert len(mailbox.messages) == hooks.count() == NOTICES
    finally:
        hooks.stop()
        mailbox.stop()
