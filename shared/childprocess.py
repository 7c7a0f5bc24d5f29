"""A child process that logs to a file: start it, stop it (SIGTERM, then SIGKILL), kill it, read its log.

One class for the three kinds of children the project runs: the dev stack's services
(services/devstack/supervisor.py), the embedded nats-server (shared/natsserver.py) and the services the
e2e and fault tests start (tests/support/processes.py). What "ready" means differs (an HTTP `/readyz`,
the NATS INFO line), so each of them waits for that on top of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

# How often an async wait looks whether the child has exited, where the OS has no pidfd.
EXIT_POLL_S = 0.05


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that has Linux signal the child when the thread that started it dies, so a
    supervisor killed with SIGKILL leaves no orphans holding ports. None elsewhere.

    Only for processes started from a long-lived thread (the main one): the signal follows the thread,
    not the process, so a child started from a pool thread would die with that thread."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def _preexec() -> None:
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)

    return _preexec


class ChildProcess:
    """`argv` (or what `command()` returns) run with stdout and stderr in `log_file`.

    `env`: the child's whole environment (None: this process's). `new_session`: a session (and process
    group) of its own, so a terminal's Ctrl-C reaches only the parent, which stops its children in its
    own order; signals then go to the whole group, so a child that forks workers leaves none behind.
    `die_with_parent`: Linux sends the child SIGTERM if the parent dies (see parent_death_signal).
    """

    def __init__(
        self,
        name: str,
        log_file: Path,
        *,
        argv: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.log_file = log_file
        self.argv = list(argv)
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.new_session = new_session
        self.die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return self.argv

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def spawn(self, *, fresh_log: bool = False) -> None:
        """Start the process. The log is appended to, after a `=== starting` line, so restarts tell the
        whole story; `fresh_log` starts a new one instead and keeps the previous run's as `.log.1`."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        argv = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if fresh_log and self.log_file.exists():
            os.replace(self.log_file, self.log_file.with_suffix(".log.1"))
        with open(self.log_file, "wb" if fresh_log else "ab") as log:
            if not fresh_log:
                log.write(f"=== starting: {' '.join(argv)}\n".encode())
                log.flush()
            self._process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
                preexec_fn=parent_death_signal() if self.die_with_parent else None,
            )

    def send(self, sig: int) -> None:
        """Signal the child (its whole process group when it has a session of its own)."""
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.new_session:
                os.killpg(self._process.pid, sig)
            else:
                self._process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (a graceful shutdown: services drain NATS, the server flushes JetStream);
        SIGKILL if it overstays the timeout. Returns the exit code (None: never started)."""
        if self._process is None:
            return None
        self.send(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self._process.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no drain, no flush: what a crash or an OOM kill looks like."""
        if self._process is not None:
            self.send(signal.SIGKILL)
            self._process.wait()

    async def exited(self) -> int | None:
        """Wait, without blocking the loop, until the child has exited; its exit code. Linux tells the
        loop through a pidfd (readable once the child exits); elsewhere the child is polled."""
        process = self._process
        if process is None or process.poll() is not None:
            return self.returncode
        if not hasattr(os, "pidfd_open"):
            while process.poll() is None:  # noqa: ASYNC110 (no pidfd: nothing to wait on but a poll)
                await asyncio.sleep(EXIT_POLL_S)
            return process.returncode
        try:
            fd = os.pidfd_open(process.pid)
        except ProcessLookupError:  # reaped in between
            return process.poll()
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, exited)
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return process.wait()

    async def stop_async(self, grace: float, force: asyncio.Event | None = None) -> int | None:
        """`stop` for an event loop: SIGKILL once `grace` seconds pass or `force` is set."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self.send(signal.SIGTERM)
            waiter = asyncio.ensure_future(self.exited())
            forced = asyncio.ensure_future(force.wait()) if force else None
            pending = {waiter} | ({forced} if forced else set())
            await asyncio.wait(pending, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            if forced:
                forced.cancel()
            if not waiter.done():
                self.send(signal.SIGKILL)
            await waiter
        return self.returncode

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
