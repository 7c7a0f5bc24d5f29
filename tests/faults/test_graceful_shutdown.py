"""Graceful shutdown on SIGTERM (issue 5, part 4): readiness turns false while requests are still served
(CNX_SHUTDOWN_DELAY), in-flight requests finish, consumers drain, the process exits 0, nothing is lost.

The issuer is stopped in the middle of a burst of creates from several clients: every 201 it gave is in
the catalog and reaches the validator (its outbox is flushed on the way out), and no answer is a 5xx
other than 503."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.stack import poll
from tests.faults.audit import issuer_rows, outbox_pending, validator_rows
from tests.faults.harness import fault_stack, report
from tests.support.databases import DatabaseFactory
from tests.support.processes import ServiceProcess

CLIENTS = 4
DRAIN_S = 2.0


def sigterm(process: ServiceProcess) -> None:
    assert process.pid is not None
    os.kill(process.pid, signal.SIGTERM)


def watch_readiness(process: ServiceProcess) -> tuple[bool, int | None]:
    """After SIGTERM: did /readyz answer 503 (so the server still answered) before the exit? The exit code."""
    saw_not_ready = False
    with httpx.Client(base_url=process.url, timeout=1.5) as client:

        def exited() -> bool:
            nonlocal saw_not_ready
            if process.returncode is not None:
                return True
            try:
                if client.get("/readyz").status_code == 503:
                    saw_not_ready = True
            except httpx.TransportError:
                pass
            return False

        poll(exited, 20, interval=0.05, what=f"{process.name} exiting")
    return saw_not_ready, process.returncode


def test_sigterm_issuer_during_a_burst_of_creates(
    make_nats_server: Any, make_database_url: DatabaseFactory, backend: str, tmp_path: Path
) -> None:
    nats = make_nats_server()
    env = {"CNX_SHUTDOWN_DELAY": f"{DRAIN_S:g}s"}
    with fault_stack(nats.url, tmp_path / "data", backend, make_database_url, **env) as (stack, stores):
        issuer = stack.processes["issuer"]
        created: list[str] = []
        statuses: Counter[str] = Counter()
        lock = threading.Lock()
        stop = threading.Event()

        def burst(n: int) -> None:
            with httpx.Client(base_url=issuer.url, headers=stack.admin(), timeout=15) as client:
                i = 0
                while not stop.is_set():
                    i += 1
                    body = {"name": f"burst {n}-{i}", "environment": "prod", "scopes": ["compute:read"]}
                    try:
                        response = client.post("/v2/keys", json=body)
                    except httpx.TransportError as exc:
                        with lock:
                            statuses[type(exc).__name__] += 1
                        if issuer.returncode is not None:
                            return
                        stop.wait(0.02)  # the listener is closed: pace the retries, do not spin
                        continue
                    with lock:
                        statuses[str(response.status_code)] += 1
                        if response.status_code == 201:
                            created.append(response.json()["id"])

        threads = [threading.Thread(target=burst, args=(n,), daemon=True) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        poll(lambda: len(created) >= 40, 30, what="the burst under way")
        signalled = time.monotonic()
        sigterm(issuer)
        saw_not_ready, code = watch_readiness(issuer)
        exit_s = time.monotonic() - signalled
        stop.set()
        for thread in threads:
            thread.join(10)
        pending_after_exit = outbox_pending(stores)
        catalog = issuer_rows(stores)
        reached_s = poll(
            lambda: all(k in validator_rows(stores) for k in created), 30, what="every 201 at the validator"
        )
        # The other services stop the same way: readiness false first, exit 0.
        others = {}
        for name in ("validator", "rotator", "notifier"):
            process = stack.processes[name]
            sigterm(process)
            others[name] = watch_readiness(process)
        report(
            f"shutdown. SIGTERM the issuer during {CLIENTS} clients' creates [{backend}]",
            answers=dict(statuses),
            created_201=len(created),
            in_catalog=sum(1 for k in created if k in catalog),
            outbox_left_at_exit=pending_after_exit,
            at_validator_s=round(reached_s, 2),
            readyz_503_while_serving=saw_not_ready,
            exit_code=code,
            exit_s=round(exit_s, 2),
            others_not_ready_then_exit=others,
        )
        assert code == 0
        assert saw_not_ready, "readiness never turned false while the issuer still served"
        assert all(k in catalog for k in created)
        assert pending_after_exit == 0, "the outbox is flushed on the way out"
        bad = {s: n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503"}
        assert bad == {}, statuses
        assert all(ready and rc == 0 for ready, rc in others.values()), others
