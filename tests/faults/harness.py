"""What the fault cases share: the services as processes on one store backend, the stores' own URLs,
and the figures report. The load, the audit, the notice sinks and the stream readers are in load.py,
audit.py, sinks.py and streams.py; `poll` is tests/e2e/stack.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from shared.db import create_engine
from shared.natsserver import free_port
from tests.e2e.stack import ProcessStack, process_stack
from tests.support.databases import DatabaseFactory, run_sync

SERVICE_NAMES = ("issuer", "validator", "rotator", "notifier")


# Figures of every case, printed in the terminal summary (tests/faults/conftest.py) and as they come.
FIGURES: list[tuple[str, dict[str, object]]] = []


def report(case: str, **figures: object) -> None:
    FIGURES.append((case, dict(figures)))
    print(f"\n[faults] {case}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


@dataclass
class Stores:
    """The database URL of each service, so the audit reads the stores themselves."""

    urls: dict[str, str]

    def query(self, service: str, sql: str) -> list[tuple[Any, ...]]:
        url = self.urls[service]

        async def run() -> list[tuple[Any, ...]]:
            engine = create_engine(url, pool_size=1)
            try:
                async with engine.connect() as conn:
                    return [tuple(row) for row in (await conn.execute(text(sql))).all()]
            finally:
                await engine.dispose()

        return run_sync(run)


@contextmanager
def fault_stack(
    nats_url: str,
    data_dir: Path,
    backend: str,
    databases: DatabaseFactory,
    names: tuple[str, ...] = SERVICE_NAMES,
    **extra_env: str,
) -> Iterator[tuple[ProcessStack, Stores]]:
    """tests/e2e/stack.process_stack with every service's store on `backend`, no failed-auth throttle
    (the audit asks about many keys from one address) and an SMTP port nobody listens on unless given."""
    urls = {name: databases(name, backend) for name in SERVICE_NAMES}
    env = {
        **{f"CNX_{name.upper()}_DATABASE_URL": url for name, url in urls.items()},
        "CNX_FAILED_AUTH_PER_MINUTE": "0",
        # The load drives the management API with one admin key far past its own 600/min: what is
        # measured here is that nothing is lost when a service dies, not that key's rate limit.
        "CNX_MANAGEMENT_RATE_LIMIT": "0",
        "CNX_SMTP_HOST": "127.0.0.1",
        "CNX_SMTP_PORT": str(free_port()),
        **extra_env,
    }
    with process_stack(nats_url, data_dir, list(names), **env) as stack:
        yield stack, Stores(urls)
