"""(f) kill -9 nats-server (JetStream on disk) between the scheduling and the firing of 1,000 schedules:
500 keys, each with one expiry notice and its expiry, all due while the server is dead. After the
restart every schedule fires once (one KeyExpiring and one KeyExpired per key, one email each where
the key asks for mail), and a key revoked during the outage gets no expiry notice."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.faults.harness import (
    deliveries,
    fault_stack,
    issuer_rows,
    mail_notices,
    poll,
    read_stream,
    report,
    stream_subjects,
    wait_idle,
)
from tests.integration.lifecycle_harness import Mailbox
from tests.support.databases import DatabaseFactory

FIRED = re.compile(r'^cnx_rotator_fired_total\{action="([^"]*)",purpose="([^"]*)"\} ([0-9.e+]+)$', re.M)
KEYS = 500  # x (notice + expiry) = 1,000 schedules
NOTICE_S = 8
EXPIRES_IN_S = 24
WITH_MAIL = 20  # keys that also ask for an email, so the notices themselves are counted
CREATORS = 4


def fired(url: str) -> Counter[tuple[str, str]]:
    """(purpose, action) -> fired schedules the rotator handled, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return Counter({(p, a): int(float(n)) for a, p, n in FIRED.findall(text)})


def test_nats_killed_before_1000_schedules_fire(
    make_nats_server: Any, make_database_url: DatabaseFactory, tmp_path: Path
) -> None:
    nats = make_nats_server()
    mailbox = Mailbox()
    mailbox.start()
    env = {"CNX_SMTP_PORT": str(mailbox.port), "CNX_EXPIRY_NOTICES": f"{NOTICE_S}s"}
    try:
        with fault_stack(nats.url, tmp_path / "data", "sqlite", make_database_url, **env) as (stack, stores):
            expires_at = datetime.now(UTC) + timedelta(seconds=EXPIRES_IN_S)
            notice_due = expires_at - timedelta(seconds=NOTICE_S)
            mail = {"email": "owner@example.com"}
            ids: list[str] = []
            lock = threading.Lock()

            def mail_ids() -> set[str]:
                rows = stores.query("issuer", "SELECT id FROM issuer_keys WHERE notify_sealed IS NOT NULL")
                return {row[0] for row in rows}

            def create(part: int) -> None:
                with httpx.Client(base_url=stack.url("issuer"), headers=stack.admin(), timeout=10) as c:
                    for i in range(part, KEYS, CREATORS):
                        body: dict[str, object] = {
                            "name": f"scheduled {i}",
                            "environment": "prod",
                            "scopes": ["compute:read"],
                            "expires_at": expires_at.isoformat(),
                        }
                        if i < WITH_MAIL:
                            body["notify"] = mail
                        response = c.post("/v2/keys", json=body)
                        assert response.status_code == 201, response.text
                        with lock:
                            ids.append(response.json()["id"])

            started = time.monotonic()
            threads = [threading.Thread(target=create, args=(n,)) for n in range(CREATORS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            created_s = time.monotonic() - started
            assert len(ids) == KEYS

            def scheduled() -> int:
                return len(stream_subjects(nats.url, "KEYS_SCHEDULES", "keys.schedule.>"))

            until_due = (notice_due - datetime.now(UTC)).total_seconds() - 1
            try:
                poll(lambda: scheduled() >= 2 * KEYS, until_due, interval=0.25, what=f"{2 * KEYS} schedules")
            except AssertionError as exc:
                subjects = stream_subjects(nats.url, "KEYS_SCHEDULES", ">")
                purposes = Counter(s.split(".")[2] for s in subjects)
                raise AssertionError(f"{exc}: {len(subjects)} subjects, by purpose {purposes}") from None
            scheduled_s = time.monotonic() - started
            schedules = scheduled()
            killed_before_due_s = (notice_due - datetime.now(UTC)).total_seconds()
            nats.kill()
            killed = time.monotonic()
            # A key with mail, revoked while NATS is dead: the issuer commits it to its outbox.
            victim = sorted(ids)[0]
            with httpx.Client(base_url=stack.url("issuer"), headers=stack.admin(), timeout=10) as c:
                if victim not in mail_ids():
                    assert c.patch(f"/v2/keys/{victim}", json={"notify": mail}).status_code == 200
                assert c.post(f"/v2/keys/{victim}/revoke").status_code == 200
            # The outage lasts until both schedules of every key are past due.
            poll(
                lambda: datetime.now(UTC) > expires_at + timedelta(seconds=1),
                EXPIRES_IN_S + 10,
                interval=0.2,
                what="every schedule past due",
            )
            nats.start()
            restarted = time.monotonic()

            def settled() -> bool:
                statuses = Counter(s for k, (s, _) in issuer_rows(stores).items() if k in set(ids))
                return statuses.get("expired", 0) == KEYS - 1 and statuses.get("revoked", 0) == 1

            expired_s = poll(settled, 90, interval=0.5, what="every key expired after the restart")
            rotator = stack.processes["rotator"]
            fired_s = poll(lambda: sum(fired(rotator.url).values()) >= 2 * (KEYS - 1), 60, interval=0.5)
            wait_idle(nats.url, [("KEYS_SCHEDULES", "rotator-fired"), ("KEYS_EVENTS", "notifier")], 60)
            mail_keys = mail_ids() & set(ids)
            poll(
                lambda: deliveries(stores).get("delivered", 0) >= len(mail_keys),
                60,
                interval=0.5,
                what="the expiry notices mailed",
            )
            handled = fired(rotator.url)
            events = [m.body for m in read_stream(nats.url) if m.subject != "keys.events.key.used"]
            expiring = Counter(e["key_id"] for e in events if e["type"] == "KeyExpiring")
            expired = Counter(e["key_id"] for e in events if e["type"] == "KeyExpired")
            mails = mail_notices(mailbox)
            victim_mail = sorted(subject for (key, subject) in mails if key == victim)
            report(
                "f. kill -9 nats-server before 1,000 schedules fire",
                keys=KEYS,
                schedules=schedules,
                created_s=round(created_s, 2),
                scheduled_s=round(scheduled_s, 2),
                killed_before_first_due_s=round(killed_before_due_s, 2),
                outage_s=round(restarted - killed, 2),
                all_expired_after_restart_s=round(expired_s, 2),
                all_fired_after_restart_s=round(fired_s, 2),
                fired_handled=dict(handled),
                expiring_events=sum(expiring.values()),
                expiring_keys_twice=sum(1 for n in expiring.values() if n > 1),
                expired_events=sum(expired.values()),
                expired_keys_twice=sum(1 for n in expired.values() if n > 1),
                emails=sum(mails.values()),
                duplicate_emails=sum(n - 1 for n in mails.values()),
                revoked_during_outage_mail=victim_mail,
            )
            assert all(n == 1 for n in expired.values()) and set(expired) == set(ids) - {victim}
            # Each schedule handled once: the victim's two were cancelled (or found it revoked).
            by_purpose = Counter[str]()
            for (purpose, _), n in handled.items():
                by_purpose[purpose] += n
            assert all(KEYS - 1 <= n <= KEYS for n in by_purpose.values()) and len(by_purpose) == 2, handled
            # Both due in the outage: the notice comes after the expiry, so the expiry mail covers it.
            assert all(n == 1 for n in expiring.values())
            assert all(n == 1 for n in mails.values())
            assert victim not in expired
            assert victim_mail and all("revoked" in s for s in victim_mail), victim_mail
            assert victim not in expiring, "the revoked key got an expiry notice event"
    finally:
        mailbox.stop()
