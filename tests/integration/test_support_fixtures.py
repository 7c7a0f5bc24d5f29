"""The shared fixtures and helpers do what the other tests rely on."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.databases import DatabaseFactory
from tests.support.nats import RunningNats
from tests.support.processes import ServiceFailed, ServiceProcess, free_port


async def test_nats_server_has_jetstream(nats_server: RunningNats) -> None:
    client = await nats.connect(nats_server.url)
    try:
        stream = f"FIXTURE_{uuid.uuid4().hex[:8]}"
        await client.jetstream().add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        ack = await client.jetstream().publish(f"{stream.lower()}.x", b"1")
        assert ack.stream == stream
    finally:
        await client.close()
    assert nats_server.server.running


async def test_each_database_url_is_fresh_and_writable(
    backend: str, make_database_url: DatabaseFactory
) -> None:
    first, second = make_database_url("issuer", backend), make_database_url("issuer", backend)
    assert first != second
    expected_scheme = {"sqlite": "sqlite+aiosqlite:///", "postgres": "postgresql+asyncpg://"}[backend]
    assert first.startswith(expected_scheme)

    engine = create_async_engine(first)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO probe (id) VALUES (1)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM probe"))).scalar_one() == 1
    finally:
        await engine.dispose()

    other = create_async_engine(second)
    try:
        async with other.begin() as conn:
            # The same table name again: nothing leaks between databases.
            await conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
    finally:
        await other.dispose()


async def test_pg_admin_url_can_create_databases(pg_admin_url: str) -> None:
    conn = await asyncpg.connect(pg_admin_url)
    try:
        query = "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        assert await conn.fetchval(query)
    finally:
        await conn.close()


def test_unknown_backend_is_refused(make_database_url: DatabaseFactory) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        make_database_url("issuer", "mysql")


def test_service_process_start_kill_restart_stop(tmp_path: Path) -> None:
    port = free_port()
    env = {"STANDIN_NAME": "rotator", "CNX_ROTATOR_PORT": str(port)}
    service = ServiceProcess("tests.support.standin_service", env, port, log_file=tmp_path / "rotator.log")
    service.start(timeout=20)
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    first_pid = service.pid

    service.kill()
    assert not service.running and service.returncode == -9
    service.restart(timeout=20)
    assert service.running and service.pid != first_pid
    assert service.stop() == 0
    assert service.log_text().count("stand-in ready") == 2


def test_service_process_reports_a_crash_with_its_log(tmp_path: Path) -> None:
    port = free_port()
    env = {"STANDIN_NAME": "notifier", "STANDIN_NOTIFIER": "crash", "CNX_NOTIFIER_PORT": str(port)}
    service = ServiceProcess("tests.support.standin_service", env, port)
    with pytest.raises(ServiceFailed, match=r"(?s)exited with code 3.*simulated start-up failure"):
        service.start(timeout=20)


def test_service_process_times_out_when_never_ready() -> None:
    port = free_port()
    env = {"STANDIN_NAME": "demo", "STANDIN_DEMO": "never-ready", "CNX_DEMO_PORT": str(port)}
    service = ServiceProcess("tests.support.standin_service", env, port)
    with pytest.raises(ServiceFailed, match=r"not ready .* \(last: 503"):
        service.start(timeout=2)
    assert not service.running
