"""(f) kill -9 nats-server (JetStream on disk) between the scheduling and the firing of 1,000 schedules:
250 keys, each with three expiry notices and its expiry. The notices fall due while the server is dead
and fire at once when it is back; the expiries fire on time after it. Every schedule fires once (three
KeyExpiring and one KeyExpired per key, one email of each where the key asks for mail), and a key
revoked during the outage gets no expiry notice, although its past-due notice fires right after the
restart, in a race with its KeyRevoked coming out of the issuer's outbox."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.stack import poll
from tests.faults.audit import issuer_rows
from tests.faults.harness import fault_stack, report
from tests.faults.sinks import deliveries, mail_notices, mail_subjects
from tests.faults.streams import read_stream, stream_subjects, wait_idle
from tests.integration.lifecycle_harness import Mailbox
from tests.support.databases import DatabaseFactory

FIRED = re.compile(r'^cnx_rotator_fired_total\{action="([^"]*)",purpose="([^"]*)"\} ([0-9.e+]+)$', re.M)
KEYS = 250  # x (3 notices + expiry) = 1,000 schedules
NOTICES_S = (14, 12, 10)
NOTICE_S = max(NOTICES_S)  # the first notice
LAST_NOTICE_S = min(NOTICES_S)
SCHEDULES = KEYS * (len(NOTICES_S) + 1)
EXPIRES_IN_S = 36
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
    env = {"CNX_SMTP_PORT": str(mailbox.port), "CNX_EXPIRY_NOTICES": ",".join(f"{n}s" for n in NOTICES_S)}
    try:
        with fault_stack(nats.url, tmp_path / "data", "sqlite", make_database_url, **env) as (stack, stores):
            expires_at = datetime.now(UTC) + timedelta(seconds=EXPIRES_IN_S)
            notice_due = expires_at - timedelta(seconds=NOTICE_S)
            mail = {"email": "owner@example.com"}
            ids: list[str] = []
            mailed: list[str] = []  # the keys created with an email address
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
                            if i < WITH_MAIL:
                                mailed.append(response.json()["id"])

            started = time.monotonic()
            threads = [threading.Thread(target=create, args=(n,)) for n in range(CREATORS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            created_s = time.monotonic() - started
            assert len(ids) == KEYS

            def scheduled() -> int:
                subjects = stream_subjects(nats.url, "KEYS_SCHEDULES", "keys.schedule.>")
                ours = set(ids)
                return sum(1 for subject in subjects if subject.rsplit(".", 1)[-1] in ours)

            until_due = (notice_due - datetime.now(UTC)).total_seconds() - 1
            try:
                poll(
                    lambda: scheduled() >= SCHEDULES, until_due, interval=0.25, what=f"{SCHEDULES} schedules"
                )
            except AssertionError as exc:
                subjects = stream_subjects(nats.url, "KEYS_SCHEDULES", ">")
                purposes = Counter(s.split(".")[2] for s in subjects)
                raise AssertionError(f"{exc}: {len(subjects)} subjects, by purpose {purposes}") from None
            scheduled_s = time.monotonic() - started
            schedules = scheduled()
            killed_before_due_s = (notice_due - datetime.now(UTC)).total_seconds()
            nats.kill()
            killed = time.monotonic()
            # A key with mail since its creation, revoked while NATS is dead: the issuer commits the
            # revocation to its outbox; the rotator hears of it only after the restart.
            victim = sorted(mailed)[0]
            with httpx.Client(base_url=stack.url("issuer"), headers=stack.admin(), timeout=10) as c:
                assert c.post(f"/v2/keys/{victim}/revoke").status_code == 200
            # The outage lasts until every notice is past due; the expiries come after the restart.
            last_notice_due = expires_at - timedelta(seconds=LAST_NOTICE_S)
            poll(
                lambda: datetime.now(UTC) > last_notice_due + timedelta(seconds=1),
                EXPIRES_IN_S,
                interval=0.2,
                what="every notice past due",
            )
            restarted_before_expiry_s = (expires_at - datetime.now(UTC)).total_seconds()
            nats.start()
            restarted = time.monotonic()

            def settled() -> bool:
                statuses = Counter(s for k, (s, _) in issuer_rows(stores).items() if k in set(ids))
                return statuses.get("expired", 0) == KEYS - 1 and statuses.get("revoked", 0) == 1

            expired_s = poll(settled, 90, interval=0.5, what="every key expired after the restart")
            rotator = stack.processes["rotator"]
            fired_s = poll(lambda: sum(fired(rotator.url).values()) >= SCHEDULES - 4, 60, interval=0.5)
            wait_idle(nats.url, [("KEYS_SCHEDULES", "rotator-fired"), ("KEYS_EVENTS", "notifier")], 60)
            mail_keys = mail_ids() & set(ids)
            poll(
                lambda: deliveries(stores).get("delivered", 0) >= 4 * (len(mail_keys) - 1) + 1,
                60,
                interval=0.5,
                what="the expiry notices mailed",
            )
            handled = fired(rotator.url)
            events = [m.body for m in read_stream(nats.url) if m.subject != "keys.events.key.used"]
            expiring = Counter(e["key_id"] for e in events if e["type"] == "KeyExpiring")
            expired = Counter(e["key_id"] for e in events if e["type"] == "KeyExpired")
            mails = mail_notices(mailbox)
            victim_mail = mail_subjects(mailbox, victim)
            report(
                f"f. kill -9 nats-server before {SCHEDULES:,} schedules fire",
                keys=KEYS,
                schedules=schedules,
                created_s=round(created_s, 2),
                scheduled_s=round(scheduled_s, 2),
                killed_before_first_due_s=round(killed_before_due_s, 2),
                outage_s=round(restarted - killed, 2),
                restarted_before_expiry_s=round(restarted_before_expiry_s, 2),
                all_expired_after_restart_s=round(expired_s, 2),
                all_fired_after_restart_s=round(fired_s, 2),
                fired_handled=dict(handled),
                fires_handled_again=max(0, sum(handled.values()) - SCHEDULES),
                expiring_events=sum(expiring.values()),
                keys_by_expiring_count=dict(Counter(expiring.values())),
                expired_events=sum(expired.values()),
                keys_by_expired_count=dict(Counter(expired.values())),
                emails=sum(mails.values()),
                duplicate_emails=sum(n - 1 for n in mails.values()),
                revoked_during_outage_mail=victim_mail,
            )
            assert all(n == 1 for n in expired.values()) and set(expired) == set(ids) - {victim}
            # Every schedule handled (the victim's too: it fires before the rotator hears of the revocation).
            by_purpose = Counter[str]()
            for (purpose, _), n in handled.items():
                by_purpose[purpose] += n
            # At least once each (a fire handled twice must change nothing: the effects are counted below).
            assert by_purpose["expire"] >= KEYS - 1 and by_purpose["notice"] >= len(NOTICES_S) * (KEYS - 1)
            others = set(ids) - {victim}
            assert {k: n for k, n in expiring.items() if k in others} == dict.fromkeys(others, len(NOTICES_S))
            assert all(n == 1 for n in mails.values()), "a notice mailed twice"
            assert victim not in expired
            # The key revoked in the outage: its revocation mail only, no expiry notice.
            assert any("revoked" in s for s in victim_mail), victim_mail
            # Past-due notices fire the moment NATS is back, before the revocation (still in the issuer's
            # outbox) reaches the rotator: the rotator asks the issuer (keys.cmd.status) before a notice.
            assert victim not in expiring, f"{expiring[victim]} KeyExpiring events for a revoked key"
            assert all("revoked" in s for s in victim_mail), victim_mail
    finally:
        mailbox.stop()
