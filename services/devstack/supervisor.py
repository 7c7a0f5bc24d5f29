"""Child processes of the dev stack: start them, wait until each answers `/readyz`, notice when one dies,
and stop them in reverse order.

Children run in sessions of their own, so a Ctrl-C in the terminal reaches only the supervisor, which
then stops them one by one: the demo API before the validator it calls, every service before the NATS
server it drains into. On Linux they also get SIGTERM if the supervisor itself is killed (no orphans
left holding the ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from shared.natsserver import parent_death_signal

POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    port: int
    host: str = "127.0.0.1"
    ready_path: str = "/readyz"
    description: str = ""
    # Laid over the stack's environment for this child alone (its NATS identity, say).
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ChildFailed(RuntimeError):
    """A child died or never became ready. `tail` holds the last lines of its log."""

    def __init__(self, child: Child, reason: str) -> None:
        self.child = child
        self.reason = reason
        self.tail = child.log_tail()
        super().__init__(f"{child.name}: {reason}")


class Child:
    def __init__(self, spec: ChildSpec, env: Mapping[str, str], log_dir: Path) -> None:
        self.spec = spec
        self.env = {**env, **spec.env}
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        with _fresh_log(self.log_path) as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )

    async def wait_ready(self, deadline: float, client: httpx.AsyncClient) -> None:
        """Poll readyz until 200, the child exits, or the loop clock passes the deadline."""
        loop = asyncio.get_running_loop()
        url = self.spec.url + self.spec.ready_path
        last = "no answer yet"
        while True:
            if self.returncode is not None:
                raise ChildFailed(self, f"exited with code {self.returncode} before it was ready")
            if loop.time() >= deadline:
                raise ChildFailed(self, f"not ready at {url} in time (last answer: {last})")
            try:
                response = await client.get(url)
            except httpx.TransportError as exc:
                last = type(exc).__name__
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            await asyncio.sleep(POLL_INTERVAL)  # poll interval, bounded by the deadline

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        # The whole process group: a service that forks workers must not leave them behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, grace: float, force: asyncio.Event | None = None) -> int | None:
        """SIGTERM, then SIGKILL once `grace` seconds pass or `force` is set (a second Ctrl-C)."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self._signal(signal.SIGTERM)
            waiter = asyncio.ensure_future(self.process.wait())
            forced = asyncio.ensure_future(force.wait()) if force else None
            pending = {waiter} | ({forced} if forced else set())
            await asyncio.wait(pending, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            if forced:
                forced.cancel()
            if not waiter.done():
                self._signal(signal.SIGKILL)
            await waiter
        return self.process.returncode

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _fresh_log(path: Path) -> BinaryIO:
    # One run per file keeps a crash's tail readable; the run before stays as .log.1 for comparison.
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.replace(path, path.with_suffix(".log.1"))
    return open(path, "wb")


class Supervisor:
    """The children of one stack, in start order."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        say: Callable[[str], None] = print,
    ) -> None:
        self.children = [Child(spec, env, log_dir) for spec in specs]
        self.say = say

    async def start_all(self) -> None:
        for child in self.children:
            await child.start()

    async def wait_all_ready(self, within: float, abort: asyncio.Event) -> bool:
        """True when every child is ready; False if `abort` was set first. Raises ChildFailed."""
        deadline = asyncio.get_running_loop().time() + within
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            waits = [asyncio.ensure_future(child.wait_ready(deadline, client)) for child in self.children]
            aborted = asyncio.ensure_future(abort.wait())
            try:
                pending: set[asyncio.Future[object]] = {*waits, aborted}
                while True:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for future in done:
                        if future is aborted:
                            return False
                        future.result()  # raises the first ChildFailed
                    if all(wait.done() for wait in waits):
                        return True
            finally:
                for future in [*waits, aborted]:
                    future.cancel()
                await asyncio.gather(*waits, aborted, return_exceptions=True)

    async def watch(
        self, stop: asyncio.Event, extra_check: Callable[[], str | None] | None = None
    ) -> str | None:
        """Wait for `stop`, or return why the stack can no longer work: a child exited, or extra_check
        (the NATS server's health) returned a reason."""
        waits = {
            asyncio.ensure_future(child.process.wait()): child for child in self.children if child.process
        }
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while True:
                # The timeout only paces extra_check, which polls something that is no asyncio child.
                done, _ = await asyncio.wait(
                    {*waits, stopped}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    return None
                for future in done:
                    child = waits[future]
                    return f"{child.name} exited with code {child.returncode}"
                if extra_check is not None:
                    reason = extra_check()
                    if reason:
                        return reason
        finally:
            for future in [*waits, stopped]:
                future.cancel()
            await asyncio.gather(*waits, stopped, return_exceptions=True)

    def failed_child(self) -> Child | None:
        return next((child for child in self.children if child.returncode is not None), None)

    async def stop_all(self, grace: float, force: asyncio.Event | None = None) -> None:
        for child in reversed(self.children):
            if not child.running:
                continue
            self.say(f"  stopping {child.name}")
            code = await child.stop(grace, force)
            if code not in (0, None, -signal.SIGTERM):
                self.say(f"  {child.name} exited with code {code} (log: {child.log_path})")
