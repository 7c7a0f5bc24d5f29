"""A handle on a test nats-server: its URL, and the EmbeddedNats to kill or restart it; and a server with
the stack's NATS identities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.devstack.stack import identity_environment
from shared.natsidentities import PLATFORM, ensure_passwords, password_credentials, write_server_config
from shared.natsserver import EmbeddedNats


@dataclass
class RunningNats:
    server: EmbeddedNats

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def monitor_url(self) -> str | None:
        return self.server.monitor_url

    @property
    def store_dir(self) -> Path:
        return self.server.store_dir

    def kill(self) -> None:
        self.server.kill()

    def restart(self) -> None:
        self.server.restart()

    def start(self) -> None:
        self.server.start()


@dataclass
class SecuredNats(RunningNats):
    """A server run with the permission config `cnx-keys up` writes (shared/natsidentities.py): a user
    per service and one for platform services, anonymous refused."""

    passwords: dict[str, str]

    def url_for(self, identity: str) -> str:
        return f"nats://{identity}:{self.passwords[identity]}@{self.server.host}:{self.server.port}"

    def identity_env(self, process: str) -> dict[str, str]:
        """What a process of the stack gets, as `cnx-keys up` gives it (services.devstack.stack)."""
        return identity_environment(process, self.passwords, self.url_for(PLATFORM))


def start_secured_nats(directory: Path) -> SecuredNats:
    passwords, _ = ensure_passwords(directory / "identities")
    config = write_server_config(
        directory / "identities" / "nats-server.conf", password_credentials(passwords)
    )
    server = EmbeddedNats(
        directory / "store", log_file=directory / "nats-server.log", extra_args=["-c", str(config)]
    )
    server.start()
    return SecuredNats(server, passwords)
