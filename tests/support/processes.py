"""Services as real processes, for the e2e and fault tiers: start, wait until ready, stop, kill, restart."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from shared.natsserver import free_port, kill_now, terminate

__all__ = ["ServiceFailed", "ServiceProcess", "free_port"]


class ServiceFailed(AssertionError):
    """The service died or never became ready; the message carries the tail of its log."""


class ServiceProcess:
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
        self.module = module
        self.name = name or module.rsplit(".", 1)[-1]
        self.port = port
        self.host = host
        self.ready_path = ready_path
        self.env = {**(os.environ if inherit_env else {}), **env}
        # Logs reach the file line by line, so a failure message shows the latest lines.
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        if log_file is None:
            log_dir = Path(tempfile.mkdtemp(prefix=f"cnx-{self.name}-"))
            log_file = log_dir / f"{self.name}.log"
        self.log_file = log_file
        self.python = python
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> ServiceProcess:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"=== starting {self.python} -m {self.module}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [self.python, "-m", self.module],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
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

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (a graceful shutdown drains NATS); SIGKILL if it overstays the timeout."""
        return terminate(self._process, timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no drain, what a node failure looks like."""
        kill_now(self._process)

    def restart(self, timeout: float = 30.0) -> ServiceProcess:
        self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 40) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last lines of {self.log_file} ---\n{tail}"

    def __enter__(self) -> ServiceProcess:
        return self.start() if not self.running else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
