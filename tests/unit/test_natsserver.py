"""The embedded nats-server helper and the server version guard, against real servers."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from shared.natsserver import (
    MINIMUM_SERVER_VERSION,
    EmbeddedNats,
    NatsServerError,
    NatsServerTooOld,
    NatsServerUnreachable,
    _read_info,
    check_server_version,
    free_port,
    nats_server_binary,
    parse_version,
    port_in_use,
    version_at_least,
)

# The machine's own server, if any: a distribution release far older than the minimum.
SYSTEM_NATS_URL = "nats://127.0.0.1:4222"


def _system_nats_version() -> str | None:
    try:
        info = _read_info("127.0.0.1", 4222, timeout=1.0)
    except (OSError, ValueError):
        return None
    return str(info.get("version", "")) or None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.12.15", True),
        ("2.15.1", True),
        ("3.0.0", True),
        ("2.12.14", False),
        ("2.9.10", False),
        ("2.12.15-RC.1", False),
        ("v2.12.16-beta", True),
        ("2.12.15+build.7", True),
    ],
)
def test_version_at_least_orders_releases(text: str, expected: bool) -> None:
    assert version_at_least(text, MINIMUM_SERVER_VERSION) is expected


def test_parse_version_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a nats-server version"):
        parse_version("latest")


def test_binary_is_the_wheels_new_enough_one() -> None:
    binary = nats_server_binary()
    assert binary.name == "nats-server"
    import subprocess

    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert version_at_least(out.split("v")[-1].strip(), MINIMUM_SERVER_VERSION), out


async def test_server_starts_with_jetstream_and_passes_the_version_check(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "store", monitor_port=free_port()) as server:
        assert server.running
        assert server.info.get("jetstream") is True
        version = await check_server_version(server.url)
        assert version == server.version
        assert version_at_least(version, MINIMUM_SERVER_VERSION)
    assert not server.running
    assert not port_in_use(server.port)
    assert "Server is ready" in server.log_text()


async def test_stream_data_survives_kill_and_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "store").start()
    try:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await js.add_stream(name="SURVIVE", subjects=["survive.>"])
        await js.publish("survive.one", b"kept")
        await client.close()

        server.kill()
        assert not server.running
        server.start()

        client = await nats.connect(server.url)
        info = await client.jetstream().stream_info("SURVIVE")
        await client.close()
        assert info.state.messages == 1

        old_pid = server.pid
        server.restart()
        assert server.pid != old_pid
        assert server.running
    finally:
        server.stop()


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        server = EmbeddedNats(tmp_path / "store", port=taken)
        with pytest.raises(NatsServerError, match=r"exited with code .* log"):
            server.start(timeout=10)
    assert not server.running


async def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(NatsServerUnreachable, match=r"cannot reach a NATS server at nats://127\.0\.0\.1:"):
        await check_server_version(f"nats://127.0.0.1:{free_port()}", connect_timeout=1)


async def test_credentials_stay_out_of_the_message() -> None:
    with pytest.raises(NatsServerUnreachable) as caught:
        await check_server_version(f"nats://alice:s3cret@127.0.0.1:{free_port()}", connect_timeout=1)
    assert "s3cret" not in str(caught.value)


async def test_a_newer_minimum_refuses_the_embedded_server(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "store") as server:
        with pytest.raises(NatsServerTooOld) as caught:
            await check_server_version(server.url, minimum=(99, 0, 0))
    assert str(caught.value).startswith(f"nats-server {server.version} at {server.url} is older than 99.0.0")


async def test_the_machines_old_server_is_refused() -> None:
    version = _system_nats_version()
    if version is None or version_at_least(version, MINIMUM_SERVER_VERSION):
        pytest.skip(f"no nats-server older than the minimum at {SYSTEM_NATS_URL} (found: {version})")
    with pytest.raises(NatsServerTooOld) as caught:
        await check_server_version(SYSTEM_NATS_URL)
    assert str(caught.value).startswith(
        f"nats-server {version} at {SYSTEM_NATS_URL} is older than 2.12.15, which message schedules need"
    )
