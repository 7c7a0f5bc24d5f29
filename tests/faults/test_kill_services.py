"""(a) kill -9 each service in turn while creates, rotations and revocations run through the issuer API;
restart it; afterwards the validator's view equals the issuer's catalog exactly, every 2xx is reflected,
and nothing is lost, phantom or doubled. On SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.faults.audit import audit
from tests.faults.harness import SERVICE_NAMES, fault_stack, report
from tests.faults.load import MixedLoad, load_figures
from tests.faults.streams import consumer_states
from tests.support.databases import DatabaseFactory

CONSUMERS = [
    ("KEYS_EVENTS", "validator-e2e"),
    ("KEYS_EVENTS", "rotator"),
    ("KEYS_EVENTS", "notifier"),
    ("KEYS_EVENTS", "issuer-usage"),
]


def test_kill_9_each_service_under_load(
    make_nats_server: Any, make_database_url: DatabaseFactory, backend: str, tmp_path: Path
) -> None:
    nats = make_nats_server()
    with fault_stack(nats.url, tmp_path / "data", backend, make_database_url) as (stack, stores):
        load = MixedLoad(stack.url("issuer"), stack.admin_key).start()
        down: dict[str, float] = {}
        try:
            for name in SERVICE_NAMES:
                load.wait_attempts(25)
                process = stack.processes[name]
                killed = time.monotonic()
                process.kill()
                load.wait_attempts(10)
                process.start()
                down[name] = round(time.monotonic() - killed, 2)
            load.wait_attempts(25)
        finally:
            record = load.stop()
        result = audit(stack, stores, nats.url, record)
        # The validator's consumer is part of the audit; the rotator's and notifier's in-flight batch at
        # the kill comes back only after their ack_wait, so their backlog is reported, not waited for.
        consumers = consumer_states(nats.url, CONSUMERS)
        report(
            f"a. kill -9 each service under load [{backend}]",
            **load_figures(record),
            **result.figures(),
            down_s=down,
            consumers_pending_unacked=consumers,
        )
        assert not record.unexpected, record.unexpected
        assert result.problems == [], result.problems[:20]
        assert result.lost == result.phantom == result.duplicated == 0
        assert sum(record.committed.values()) > 50
