"""A handle on a test nats-server: its URL, and the EmbeddedNats to kill or restart it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
