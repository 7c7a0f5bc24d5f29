"""Services as real processes, for the e2e and fault tiers: start, wait until ready, stop, kill, restart."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from shared.childprocess import ChildProcess
from shared.natsserver import free_port

__all__ = ["ServiceFailed", "ServiceProcess", "free_port"]


class ServiceFailed(AssertionError):
    """The service died or never became ready; the message carries the tail of its log."""


class ServiceProcess(ChildProcess):
    """`python -m <module>` with an env dict, logging to a file, ready when `GET /readyz` answers 200.

    The env is laid over the test process's own environment (so PATH and the venv carry over) unless
    inherit_env is False. Restarts append to the same log, so a fault test can read the whole story.
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        port: int,
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        ready_path: str = "/readyz",
        log_file: Path | None = None,
        inherit_env: bool = True,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        name = name or module.rsplit(".", 1)[-1]
        merged = {**(os.environ if inherit_env else {}), **env}
        # Logs reach the file line by line, so a failure message shows the latest lines.
        merged.setdefault("PYTHONUNBUFFERED", "1")
        if log_file is None:
            log_file = Path(tempfile.mkdtemp(prefix=f"cnx-{name}-")) / f"{name}.log"
        super().__init__(name, log_file, argv=[python, "-m", module], env=merged, cwd=cwd)
        self.module = module
        self.port = port
        self.host = host
        self.ready_path = ready_path
        self.python = python

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> ServiceProcess:
        self.spawn()
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll readyz until 200; returns the seconds it took. Fails early if the process exits."""
        started = time.monotonic()
        deadline = started + timeout
        last = "no answer yet"
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                code = self.returncode
                if code is not None:
                    raise ServiceFailed(f"{self.name} exited with code {code} before ready\n{self._tail()}")
                try:
                    response = client.get(self.ready_path)
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return time.monotonic() - started
                    last = f"{response.status_code} {response.text[:200]}"
                time.sleep(0.05)  # poll interval, bounded by the deadline
        raise ServiceFailed(
            f"{self.name} not ready at {self.url}{self.ready_path} after {timeout:.0f}s (last: {last})\n"
            + self._tail()
        )

    def restart(self, timeout: float = 30.0) -> ServiceProcess:
        self.stop()
        return self.start(timeout)

    def _tail(self, lines: int = 40) -> str:
        return f"--- last lines of {self.log_file} ---\n{self.log_tail(lines)}"

    def __enter__(self) -> ServiceProcess:
        return self.start() if not self.running else self
