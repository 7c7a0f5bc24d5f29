"""Fixtures every tier shares: a real nats-server, throwaway databases on SQLite and PostgreSQL.

PostgreSQL is looked for at 127.0.0.1:5432 (users postgres, then root; database `test`). Without it the
postgres half of the suite is skipped locally, with the reason printed at the end; under CI=true a
missing server fails those tests instead, so CI can never go green on SQLite alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.natsserver import EmbeddedNats, free_port
from tests.support.databases import DatabaseFactory, PostgresProbe, in_ci, probe_postgres
from tests.support.nats import RunningNats, SecuredNats, start_secured_nats

# The store contracts' asserts sit outside test modules: rewritten, a failure shows what differed.
pytest.register_assert_rewrite("tests.support.store_contracts")

_pg_unavailable: list[str] = []


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNats]:
    """One JetStream server for the session; share it with unique stream and subject names.

    Tests that kill or restart a server should take their own from `make_nats_server`.
    """
    root = tmp_path_factory.mktemp("nats")
    server = EmbeddedNats(root / "store", monitor_port=free_port(), log_file=root / "nats-server.log")
    server.start()
    yield RunningNats(server)
    server.stop()


@pytest.fixture
def make_nats_server(tmp_path: Path) -> Iterator[Callable[[], RunningNats]]:
    """A server of the test's own, stopped at teardown: for kill, restart and outage tests."""
    started: list[EmbeddedNats] = []

    def make() -> RunningNats:
        index = len(started)
        server = EmbeddedNats(tmp_path / f"nats-{index}", log_file=tmp_path / f"nats-{index}.log")
        started.append(server)
        server.start()
        return RunningNats(server)

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_secured_nats_server(tmp_path: Path) -> Iterator[Callable[[], SecuredNats]]:
    """A server of the test's own with the permissions `cnx-keys up` runs (a user per service, one for
    platform services, anonymous refused); stopped at teardown."""
    started: list[SecuredNats] = []

    def make() -> SecuredNats:
        running = start_secured_nats(tmp_path / f"secured-nats-{len(started)}")
        started.append(running)
        return running

    yield make
    for running in started:
        running.server.stop()


def _require_postgres() -> str:
    probe = _postgres_probe()
    if probe.admin_url:
        return probe.admin_url
    if in_ci():
        pytest.fail(f"CI=true and {probe.reason}", pytrace=False)
    if not _pg_unavailable:
        _pg_unavailable.append(probe.reason)
    pytest.skip(probe.reason)


@functools.cache
def _postgres_probe() -> PostgresProbe:
    # Probed once per session: every postgres test would otherwise wait out the same refusal.
    return probe_postgres()


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """`postgresql://<user>@127.0.0.1:5432/test`, a role allowed to create databases."""
    return _require_postgres()


@pytest.fixture(scope="session")
def make_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    """make_database_url(service, backend) -> a URL to a database no other test has touched.

    sqlite: `sqlite+aiosqlite:////tmp/.../<service>-<hex>.db`; postgres:
    `postgresql+asyncpg://<user>@127.0.0.1:5432/cnx_t_<hex>`, dropped at the end of the session.
    """
    factory = DatabaseFactory(tmp_path_factory.mktemp("databases"), _require_postgres)
    yield factory
    factory.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs the test once per store backend; the postgres run skips (or fails in CI) without a server."""
    if request.param == "postgres":
        _require_postgres()
    return str(request.param)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _pg_unavailable:
        terminalreporter.write_line(f"PostgreSQL tests skipped: {_pg_unavailable[0]}", yellow=True)
