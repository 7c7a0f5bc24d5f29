"""`cnx-keys up`: the whole system on one machine, state kept under `.data/` between runs.

Owns `.data/` (CNX_DATA_DIR): `secrets.env` (pepper and encryption key made on the first run),
`nats/` (JetStream store), `nats-identities/` (a password per NATS identity, made on the first run, and
the server's configuration with every identity's permissions: shared/natsidentities.py),
`platform-nats-url` (what a platform service such as the demo API connects with), `mail/` (the SMTP
sink's .eml files), `logs/`, the services' SQLite files and `bootstrap-admin-key` (written by the
issuer). CNX_NATS_URL and CNX_SMTP_HOST point the stack at real servers instead of the embedded ones
(identities are then that server's business).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from shared.natsidentities import (
    IDENTITY_DIR,
    PLATFORM,
    ensure_passwords,
    password_credentials,
    platform_url,
    write_platform_url,
    write_server_config,
)
from shared.natsidentities import (
    SERVICES as IDENTITY_SERVICES,
)
from shared.natsserver import (
    EmbeddedNats,
    NatsServerError,
    NatsServerTooOld,
    NatsServerUnreachable,
    check_server_version,
    port_in_use,
)
from shared.settings import Settings

from .smtp_sink import SmtpSink
from .supervisor import ChildFailed, ChildSpec, Supervisor

SECRETS_FILE = "secrets.env"
# SIGHUP too: a closed terminal should get the same orderly stop as Ctrl-C.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SECRET_VARS = ("CNX_PEPPERS", "CNX_ENCRYPTION_KEYS")

# name, module, what a developer opens it for; started in this order, stopped in the reverse one.
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("issuer", "services.issuer", "management API, OpenAPI at /openapi.json"),
    ("validator", "services.validator", "forward-auth at /v2/auth/verify"),
    ("rotator", "services.rotator", "rotation grace, expiry and notice schedules"),
    ("notifier", "services.notifier", "expiry and rotation emails and webhooks"),
    ("demo", "examples.demo_api", "demo API: GET /v2/instances needs compute:read"),
)


@dataclass
class UpOptions:
    data_dir: Path = Path(".data")
    nats_port: int = 4333
    nats_monitor_port: int = 8222  # 0: none
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    # None: the five processes of SERVICES. Tests pass stand-ins.
    children: Sequence[ChildSpec] | None = None
    out: TextIO = sys.stdout


def default_children(settings: Settings, python: str = sys.executable) -> list[ChildSpec]:
    # uvicorn may bind every address; the supervisor still reaches it on loopback.
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return [
        ChildSpec(name, [python, "-m", module], settings.port(name), host=host, description=description)
        for name, module, description in SERVICES
    ]


def _generate_secrets() -> dict[str, str]:
    return {
        # Neither alphabet holds a comma, the separator of the settings' secret lists.
        "CNX_PEPPERS": secrets.token_urlsafe(32),
        "CNX_ENCRYPTION_KEYS": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def ensure_dev_secrets(data_dir: Path) -> tuple[dict[str, str], bool]:
    """The stack's pepper and AES key from data_dir/secrets.env, made (mode 0600) if missing.

    Returns (values, created). Kept across runs: a new pepper would orphan every stored key digest.
    """
    path = data_dir / SECRETS_FILE
    existing = _read_env_file(path) if path.exists() else {}
    if all(existing.get(name) for name in SECRET_VARS):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
        return {name: existing[name] for name in SECRET_VARS}, False
    values = {**_generate_secrets(), **{k: v for k, v in existing.items() if k in SECRET_VARS and v}}
    body = "# Made by `cnx-keys up` for the local dev stack only; never reuse these elsewhere.\n"
    body += "".join(f"{name}={values[name]}\n" for name in SECRET_VARS)
    partial = path.with_suffix(".env.part")
    # Created 0600 from the first byte, then renamed into place: never readable by others, never half
    # written.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.replace(partial, path)
    return values, True


def child_environment(
    environ: Mapping[str, str],
    dev_secrets: Mapping[str, str],
    *,
    nats_url: str,
    data_dir: Path,
    bootstrap_key_file: Path,
    smtp_host: str,
    smtp_port: int,
) -> dict[str, str]:
    """What every child gets: our environment, the dev secrets unless set there, and the stack's wiring."""
    env = dict(environ)
    for name in SECRET_VARS:
        if not env.get(name):
            env[name] = dev_secrets[name]
    env.update(
        {
            "CNX_NATS_URL": nats_url,
            "CNX_DATA_DIR": str(data_dir),
            "CNX_BOOTSTRAP_ADMIN_KEY_FILE": str(bootstrap_key_file),
            "CNX_SMTP_HOST": smtp_host,
            "CNX_SMTP_PORT": str(smtp_port),
            # Lines reach the log files as they are written, so a crash's tail is complete.
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The local stack's logs are read by people (.data/logs): text unless the caller asked for JSON.
    env.setdefault("CNX_LOG_FORMAT", "text")
    return env


def identity_environment(name: str, passwords: Mapping[str, str], platform: str) -> dict[str, str]:
    """A child's NATS identity: a service logs in as itself; anything else (the demo API) is a platform
    service and connects with the platform URL."""
    if name in IDENTITY_SERVICES:
        return {"CNX_NATS_USER": name, "CNX_NATS_PASSWORD": passwords[name]}
    return {"CNX_NATS_URL": platform}


class _Console:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    def error(self, line: str) -> None:
        print(f"cnx-keys up: {line}", file=sys.stderr, flush=True)


def _display(path: Path) -> str:
    """Relative to the working directory when inside it: shorter, and what the user typed."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def run_up(options: UpOptions) -> int:
    say = _Console(options.out)
    environ = dict(os.environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        say.error(f"invalid CNX_ settings:\n{exc}")
        return 2

    data_dir = options.data_dir.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    dev_secrets, secrets_created = ensure_dev_secrets(data_dir)

    external_nats = environ.get("CNX_NATS_URL", "").strip()
    external_smtp = environ.get("CNX_SMTP_HOST", "").strip()
    specs = list(options.children) if options.children is not None else default_children(settings)

    busy = _busy_ports(options, specs, settings, nats=not external_nats, smtp=not external_smtp)
    if busy:
        for line in busy:
            say.error(line)
        say.error("is another `cnx-keys up` running? Stop it, or move ports: CNX_<SERVICE>_PORT, --nats-port")
        return 1

    nats: EmbeddedNats | None = None
    sink: SmtpSink | None = None
    supervisor: Supervisor | None = None
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            say("Stopping now (second interrupt): killing what is left.")
            force.set()
        else:
            say("\nStopping (interrupt again to kill at once)...")
            stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        if external_nats:
            try:
                version = await check_server_version(external_nats)
            except (NatsServerTooOld, NatsServerUnreachable) as exc:
                say.error(str(exc))
                return 1
            nats_url = external_nats
            nats_line = f"{external_nats} (external, nats-server {version})"
        else:
            # Identities on by default: a user per service and one for platform services, each held to
            # the subjects it needs; anonymous connections are refused.
            identity_dir = data_dir / IDENTITY_DIR
            passwords, _ = ensure_passwords(identity_dir)
            server_config = write_server_config(
                identity_dir / "nats-server.conf", password_credentials(passwords)
            )
            nats = EmbeddedNats(
                data_dir / "nats",
                port=options.nats_port,
                monitor_port=options.nats_monitor_port or None,
                log_file=log_dir / "nats.log",
                extra_args=["-c", str(server_config)],
                new_session=True,
                die_with_parent=True,
            )
            try:
                # Blocking, and briefly: nothing else runs yet, and a pool thread would be the wrong
                # parent for the die-with-parent signal.
                nats.start()
            except NatsServerError as exc:
                say.error(str(exc))
                return 1
            nats_url = nats.url
            nats_line = f"{nats.url} (embedded nats-server {nats.version}, a user per service)"
            if nats.monitor_url:
                nats_line += f", monitoring {nats.monitor_url}"
            platform_file = write_platform_url(
                data_dir, platform_url(nats.host, nats.port, passwords[PLATFORM])
            )
            nats_line += f"; platform services connect with the URL in {_display(platform_file)}"
            specs = [
                replace(
                    spec,
                    env={
                        **spec.env,
                        **identity_environment(spec.name, passwords, platform_file.read_text().strip()),
                    },
                )
                for spec in specs
            ]

        if external_smtp:
            smtp_host, smtp_port = external_smtp, settings.smtp_port
            smtp_line = f"{smtp_host}:{smtp_port} (external)"
        else:
            sink = await SmtpSink(data_dir / "mail", "127.0.0.1", settings.smtp_port).start()
            smtp_host, smtp_port = sink.host, sink.port
            smtp_line = f"{smtp_host}:{smtp_port} (sink: each mail saved in {_display(sink.mail_dir)}/)"

        bootstrap_file, bootstrap_existed = _bootstrap_key_file(environ, data_dir)
        env = child_environment(
            environ,
            dev_secrets,
            nats_url=nats_url,
            data_dir=data_dir,
            bootstrap_key_file=bootstrap_file,
            smtp_host=smtp_host,
            smtp_port=smtp_port,
        )

        supervisor = Supervisor(specs, env, log_dir, say=say)
        say(f"Starting {', '.join(spec.name for spec in specs)} (logs in {_display(log_dir)}/)...")
        await supervisor.start_all()
        try:
            ready = await supervisor.wait_all_ready(options.ready_timeout, abort=stop)
        except ChildFailed as failed:
            _report_failure(say, failed.child.name, failed.reason, failed.tail, failed.child.log_file)
            return 1
        if not ready:
            return 0

        say()
        say(f"CloudNexus Keys is up; data in {_display(data_dir)}/")
        width = max(len(spec.name) for spec in specs)
        for spec in specs:
            say(f"  {spec.name:<{width}}  {spec.url}  {spec.description}".rstrip())
        console = next((spec for spec in specs if spec.name == "issuer"), None)
        if console is not None:
            say(f"  Developer Console: {console.url}/console (sign in with the admin key)")
        say(f"  {'nats':<{width}}  {nats_line}")
        say(f"  {'smtp':<{width}}  {smtp_line}")
        if secrets_created:
            say(f"  Made a new pepper and encryption key in {_display(data_dir / SECRETS_FILE)} (mode 0600).")
        _announce_bootstrap_key(say, bootstrap_file, bootstrap_existed)
        say(f"Follow the logs with: tail -f {_display(log_dir)}/*.log    Stop with Ctrl-C.")

        def nats_health() -> str | None:
            if nats is not None and not nats.running:
                return f"the embedded nats-server exited with code {nats.returncode}"
            return None

        problem = await supervisor.watch(stop, nats_health)
        if problem is None:
            return 0
        child = supervisor.failed_child()
        if child is not None:
            _report_failure(say, child.name, problem, child.log_tail(), child.log_file)
        else:
            _report_failure(say, "nats", problem, nats.log_tail() if nats else "", log_dir / "nats.log")
        return 1
    finally:
        if supervisor is not None:
            await supervisor.stop_all(0.5 if force.is_set() else options.stop_timeout, force)
        if sink is not None:
            await sink.stop()
        if nats is not None and nats.running:
            say("  stopping nats-server")
            await asyncio.to_thread(nats.stop, 1.0 if force.is_set() else options.stop_timeout)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if stop.is_set():
            say("Stopped.")


def _busy_ports(
    options: UpOptions,
    specs: Sequence[ChildSpec],
    settings: Settings,
    *,
    nats: bool,
    smtp: bool,
) -> list[str]:
    """Checked before anything starts: a clash found later would look like a child crash instead."""
    wanted: list[tuple[int, str]] = [(spec.port, spec.name) for spec in specs]
    if nats:
        wanted.append((options.nats_port, "nats"))
        if options.nats_monitor_port:
            wanted.append((options.nats_monitor_port, "nats monitoring"))
    if smtp:
        wanted.append((settings.smtp_port, "smtp sink"))
    return [
        f"port {port} ({what}) is already in use on 127.0.0.1" for port, what in wanted if port_in_use(port)
    ]


def _bootstrap_key_file(environ: Mapping[str, str], data_dir: Path) -> tuple[Path, bool]:
    """Where the issuer writes the first admin key, and whether it was there before this run."""
    path = Path(environ.get("CNX_BOOTSTRAP_ADMIN_KEY_FILE") or data_dir / "bootstrap-admin-key").resolve()
    return path, path.exists()


def _report_failure(say: _Console, name: str, reason: str, tail: str, log_path: Path) -> None:
    say.error(f"{name} {reason}" if not reason.startswith(name) else reason)
    if tail:
        say.error(f"last lines of {_display(log_path)}:")
        for line in tail.splitlines():
            print(f"  | {line}", file=sys.stderr, flush=True)


def _announce_bootstrap_key(say: _Console, path: Path, existed: bool) -> None:
    shown = _display(path)
    if existed:
        say(f"  Bootstrap admin key: in {shown} (made on an earlier run).")
        return
    if not path.exists():
        say("  No bootstrap admin key was written: the default account already has keys.")
        return
    key = path.read_text().strip()
    say()
    say("  Bootstrap admin key (all scopes, account 'default'). It is shown this once; store it now:")
    say()
    say(f"      {key}")
    say()
    say(f"  It is also in {shown} (mode 0600); delete that file once the key is stored elsewhere.")


def up(options: UpOptions) -> int:
    return asyncio.run(run_up(options))
