"""`cnx-keys up` as a user runs it: a real nats-server and SMTP sink, stand-in children, real signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import aiosmtplib
import pytest

from services.devstack.smtp_sink import SmtpSink
from services.devstack.stack import ensure_dev_secrets
from shared.natsidentities import IDENTITY_DIR, PLATFORM_URL_FILE, ensure_passwords
from shared.natsserver import (
    MINIMUM_SERVER_VERSION,
    _read_info,
    free_ports,
    port_in_use,
    version_at_least,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("issuer", "validator", "rotator", "notifier", "demo")
UP_BANNER = "Stop with Ctrl-C."


class StackRun:
    """One `up` process, its output in files, waited on with deadlines."""

    def __init__(self, argv: list[str], env: dict[str, str], out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = out_dir / "stdout"
        self.stderr_path = out_dir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)  # poll interval, bounded by the deadline
        raise AssertionError(f"no {text!r} in stdout\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNX_", "STANDIN_"))}
    # Distinct ports, the NATS one included (separate free_port() calls once gave the rotator and the
    # SMTP sink the same port).
    *service_ports, smtp_port, nats = free_ports(len(NAMES) + 2)
    for name, port in zip(NAMES, service_ports, strict=True):
        env[f"CNX_{name.upper()}_PORT"] = str(port)
    env["CNX_SMTP_PORT"] = str(smtp_port)
    env["STANDIN_NATS_PORT"] = str(nats)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    env["STANDIN_REPORT_DIR"] = str(report_dir)
    return env


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[StackRun]]:
    started: list[StackRun] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.stop(signal.SIGKILL)


def start_standin_stack(
    runs: list[StackRun], env: dict[str, str], data_dir: Path, nats_port: int, stop_timeout: float = 10.0
) -> StackRun:
    argv = [sys.executable, "-m", "tests.support.standin_stack", str(data_dir), str(nats_port)]
    argv.append(str(stop_timeout))
    run = StackRun(argv, env, data_dir.parent / f"run-{len(runs)}")
    runs.append(run)
    return run


def nats_port(env: dict[str, str]) -> int:
    return int(env["STANDIN_NATS_PORT"])


def reports(env: dict[str, str]) -> dict[str, dict[str, object]]:
    report_dir = Path(env["STANDIN_REPORT_DIR"])
    return {name: json.loads((report_dir / f"{name}.json").read_text()) for name in NAMES}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_wires_children_and_stops_them_in_reverse_order(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    data_dir, port = tmp_path / "data", nats_port(stack_env)
    run = start_standin_stack(runs, stack_env, data_dir, port)
    run.wait_for_output(UP_BANNER)

    key_file = data_dir / "bootstrap-admin-key"
    key = key_file.read_text().strip()
    assert key in run.stdout and "shown this once" in run.stdout
    assert mode(key_file) == 0o600 and mode(data_dir / "secrets.env") == 0o600
    dev_secrets, created = ensure_dev_secrets(data_dir)
    assert not created
    for secret in dev_secrets.values():
        assert secret not in run.stdout and secret not in run.stderr
    for name in NAMES:
        assert f"http://127.0.0.1:{stack_env[f'CNX_{name.upper()}_PORT']}" in run.stdout

    # NATS identities: a password per identity (0600), the demo API as a platform service with the URL
    # written to .data/platform-nats-url (0600), every service as its own user.
    identity_dir = data_dir / IDENTITY_DIR
    passwords, created = ensure_passwords(identity_dir)
    assert not created
    assert all(mode(identity_dir / f"{name}.password") == 0o600 for name in passwords)
    assert mode(identity_dir / "nats-server.conf") == 0o600
    platform_file = data_dir / PLATFORM_URL_FILE
    platform = f"nats://platform:{passwords['platform']}@127.0.0.1:{port}"
    assert platform_file.read_text().strip() == platform and mode(platform_file) == 0o600
    for secret in passwords.values():
        assert secret not in run.stdout and secret not in run.stderr
    for name, report in reports(stack_env).items():
        env = report["env"]
        assert isinstance(env, dict), name
        if name == "demo":
            assert env["CNX_NATS_URL"] == platform
            assert "CNX_NATS_USER" not in env
        else:
            assert env["CNX_NATS_URL"] == f"nats://127.0.0.1:{port}"
            assert env["CNX_NATS_USER"] == name and env["CNX_NATS_PASSWORD"] == passwords[name]
        assert env["CNX_DATA_DIR"] == str(data_dir.resolve())
        assert env["CNX_BOOTSTRAP_ADMIN_KEY_FILE"] == str(key_file.resolve())
        assert env["CNX_SMTP_HOST"] == "127.0.0.1" and env["CNX_SMTP_PORT"] == stack_env["CNX_SMTP_PORT"]
        assert env["CNX_PEPPERS"] == dev_secrets["CNX_PEPPERS"]
        assert env["CNX_ENCRYPTION_KEYS"] == dev_secrets["CNX_ENCRYPTION_KEYS"]
    info = _read_info("127.0.0.1", port, timeout=2)
    assert info["jetstream"] and version_at_least(str(info["version"]), MINIMUM_SERVER_VERSION)

    assert run.stop() == 0
    stop_order = (Path(stack_env["STANDIN_REPORT_DIR"]) / "stop-order").read_text().split()
    assert stop_order == list(reversed(NAMES))
    assert run.stdout.rstrip().endswith("Stopped.")
    assert not port_in_use(port)
    assert not any(port_in_use(int(stack_env[f"CNX_{name.upper()}_PORT"])) for name in NAMES)

    # A second run keeps the data: same secrets, no new bootstrap key, the JetStream store reused.
    again = start_standin_stack(runs, stack_env, data_dir, port)
    again.wait_for_output(UP_BANNER)
    assert key not in again.stdout and "made on an earlier run" in again.stdout
    assert ensure_dev_secrets(data_dir) == (dev_secrets, False)
    assert reports(stack_env)["validator"]["env"]["CNX_PEPPERS"] == dev_secrets["CNX_PEPPERS"]  # type: ignore[index]
    assert again.stop(signal.SIGINT) == 0


def test_secrets_from_the_environment_win(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    stack_env["CNX_PEPPERS"] = "pepper-from-env"
    run = start_standin_stack(runs, stack_env, tmp_path / "data", nats_port(stack_env))
    run.wait_for_output(UP_BANNER)
    issuer_env = reports(stack_env)["issuer"]["env"]
    assert issuer_env["CNX_PEPPERS"] == "pepper-from-env"  # type: ignore[index]
    file_key = ensure_dev_secrets(tmp_path / "data")[0]["CNX_ENCRYPTION_KEYS"]
    assert issuer_env["CNX_ENCRYPTION_KEYS"] == file_key  # type: ignore[index]
    assert run.stop() == 0


def test_a_child_that_crashes_at_start_fails_up_with_its_log(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    stack_env["STANDIN_ROTATOR"] = "crash"
    port = nats_port(stack_env)
    run = start_standin_stack(runs, stack_env, tmp_path / "data", port)
    assert run.wait() == 1
    assert "rotator exited with code 3 before it was ready" in run.stderr
    assert "simulated start-up failure" in run.stderr  # the tail of its log
    assert not port_in_use(port)
    assert not any(port_in_use(int(stack_env[f"CNX_{name.upper()}_PORT"])) for name in NAMES)


def test_a_child_dying_later_brings_the_stack_down(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    stack_env["STANDIN_NOTIFIER"] = "die-later"
    stack_env["STANDIN_DIE_FILE"] = str(tmp_path / "die-now")
    run = start_standin_stack(runs, stack_env, tmp_path / "data", nats_port(stack_env))
    run.wait_for_output(UP_BANNER)
    (tmp_path / "die-now").touch()
    assert run.wait() == 1
    assert "notifier exited with code 4" in run.stderr and "dying as told" in run.stderr


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    stack_env["STANDIN_VALIDATOR"] = "ignore-term"
    run = start_standin_stack(runs, stack_env, tmp_path / "data", nats_port(stack_env), stop_timeout=1.0)
    run.wait_for_output(UP_BANNER)
    validator_pid = int(reports(stack_env)["validator"]["pid"])  # type: ignore[call-overload]
    started = time.monotonic()
    assert run.stop() == 0
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(validator_pid, 0)


def test_busy_ports_are_named_before_anything_starts(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(stack_env["CNX_ISSUER_PORT"])))
        blocker.listen()
        run = start_standin_stack(runs, stack_env, tmp_path / "data", nats_port(stack_env))
        assert run.wait() == 1
    assert f"port {stack_env['CNX_ISSUER_PORT']} (issuer) is already in use" in run.stderr
    assert not (Path(stack_env["STANDIN_REPORT_DIR"]) / "demo.json").exists()


def test_an_old_external_nats_is_refused_by_the_cli(
    tmp_path: Path, stack_env: dict[str, str], runs: list[StackRun]
) -> None:
    try:
        version = str(_read_info("127.0.0.1", 4222, timeout=1.0)["version"])
    except OSError:
        pytest.skip("no nats-server at 127.0.0.1:4222")
    if version_at_least(version, MINIMUM_SERVER_VERSION):
        pytest.skip(f"the server at 4222 is {version}, new enough")
    stack_env["CNX_NATS_URL"] = "nats://127.0.0.1:4222"
    argv = [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "data")]
    run = StackRun(argv, stack_env, tmp_path / "out")
    runs.append(run)
    assert run.wait() == 1
    assert f"nats-server {version} at nats://127.0.0.1:4222 is older than 2.12.15" in run.stderr
    assert not (Path(stack_env["STANDIN_REPORT_DIR"]) / "issuer.json").exists()


def test_migrate_brings_every_store_to_head(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "services.cli", "migrate"]
    env = {**os.environ, "CNX_DATA_DIR": str(tmp_path)}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    assert "issuer: empty -> " in result.stdout
    assert (tmp_path / "issuer.db").exists()
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    assert "issuer: empty" not in again.stdout


def test_dev_secrets_are_made_once_private_and_completed(tmp_path: Path) -> None:
    values, created = ensure_dev_secrets(tmp_path)
    assert created and mode(tmp_path / "secrets.env") == 0o600
    assert len(values["CNX_ENCRYPTION_KEYS"]) == 44  # base64 of 32 bytes
    assert ensure_dev_secrets(tmp_path) == (values, False)

    (tmp_path / "secrets.env").write_text(f"CNX_PEPPERS={values['CNX_PEPPERS']}\n")
    completed, created = ensure_dev_secrets(tmp_path)
    assert created and completed["CNX_PEPPERS"] == values["CNX_PEPPERS"]
    assert completed["CNX_ENCRYPTION_KEYS"] != values["CNX_ENCRYPTION_KEYS"]


async def test_smtp_sink_saves_each_message_as_an_eml_file(tmp_path: Path) -> None:
    sink = await SmtpSink(tmp_path / "mail", port=0).start()
    try:
        headers = "From: keys@cloudnexus.local\r\nTo: owner@example.com\r\nSubject: Key expires in 7 days"
        message = f"{headers}\r\n\r\nRenew it."
        await aiosmtplib.send(
            message,
            sender="keys@cloudnexus.local",
            recipients=["owner@example.com", "team@example.com"],
            hostname=sink.host,
            port=sink.port,
        )
    finally:
        await sink.stop()
    [saved] = sink.messages()
    parsed = message_from_bytes(saved.read_bytes())
    assert parsed["Subject"] == "Key expires in 7 days"
    assert parsed["X-Envelope-To"] == "owner@example.com, team@example.com"
    assert parsed.get_payload().strip() == "Renew it."
    assert not list((tmp_path / "mail").glob("*.part"))
