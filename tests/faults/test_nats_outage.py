"""(b) nats-server stopped during the mixed load: API calls commit (the outbox holds their events) or fail
with a clear 503, none hangs or answers 500; the validator keeps answering from memory; after NATS
returns every committed change reaches it. On SQLite and on PostgreSQL.

The outage lasts NATS_OUTAGE_S: the issue's 20 s by default (CNX_FAULT_NATS_OUTAGE_S=8 for a quicker
local run).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.stack import poll
from tests.faults.audit import audit, issuer_rows, validator_code, validator_rows
from tests.faults.harness import fault_stack, report
from tests.faults.load import MixedLoad, load_figures
from tests.support.databases import DatabaseFactory

NATS_OUTAGE_S = float(os.environ.get("CNX_FAULT_NATS_OUTAGE_S", "20"))


def test_nats_down_during_load(
    make_nats_server: Any, make_database_url: DatabaseFactory, backend: str, tmp_path: Path
) -> None:
    nats = make_nats_server()
    with fault_stack(nats.url, tmp_path / "data", backend, make_database_url) as (stack, stores):
        issuer = httpx.Client(base_url=stack.url("issuer"), timeout=5)
        validator = httpx.Client(base_url=stack.url("validator"), timeout=5)
        load = MixedLoad(stack.url("issuer"), stack.admin_key, verify_share=0.2).start()
        try:
            load.wait_attempts(40)
            before = sum(load.record.committed.values())
            nats.server.stop()
            down_at = time.monotonic()
            # A known-good key, to see the validator answer from memory while NATS is gone.
            known = next(k for k, s in load.record.expected.items() if s == "active")
            issuer_ready = issuer.get("/readyz").status_code
            answers_from_memory = validator_code(validator, load.record.secrets[known])
            # The outage itself: at least NATS_OUTAGE_S, and the load keeps calling all along.
            poll(
                lambda: time.monotonic() - down_at >= NATS_OUTAGE_S,
                NATS_OUTAGE_S + 30,
                interval=0.1,
                what="the outage",
            )
            during = sum(load.record.committed.values()) - before
            nats.server.start()
            back_at = time.monotonic()
            # Everything committed so far must reach the validator now: the outbox backlog drains.
            backlog = issuer_rows(stores)

            def backlog_applied() -> bool:
                held = validator_rows(stores)  # once per check: a query per key took seconds on its own
                return all(held.get(k, ("", 0))[1] >= rev for k, (_, rev) in backlog.items())

            caught_up_s = poll(
                backlog_applied,
                60,
                interval=0.1,
                what="the outbox backlog reaching the validator",
            )
            poll(lambda: issuer.get("/readyz").status_code == 200, 30, what="issuer ready again")
            issuer_ready_s = time.monotonic() - back_at
            load.wait_attempts(30)
        finally:
            record = load.stop()
            issuer.close()
            validator.close()
        result = audit(stack, stores, nats.url, record)
        report(
            f"b. nats-server down {NATS_OUTAGE_S:g} s under load [{backend}]",
            **load_figures(record),
            committed_while_nats_down=during,
            issuer_readyz_while_down=issuer_ready,
            validator_answer_while_down=answers_from_memory,
            issuer_ready_again_s=round(issuer_ready_s, 2),
            backlog_at_validator_s=round(caught_up_s, 2),
            **result.figures(),
        )
        assert not record.unexpected, record.unexpected[:10]
        assert record.slowest_s < 5, "a call hung"
        assert answers_from_memory == "VALID"
        assert during > 0, "creates, rotations and revocations commit while NATS is down"
        assert result.problems == [], result.problems[:20]
        assert result.lost == result.phantom == result.duplicated == 0
