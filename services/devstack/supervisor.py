"""Child processes of the dev stack: start them, wait until each answers `/readyz`, notice when one dies,
and stop them in reverse order.

Children run in sessions of their own, so a Ctrl-C in the terminal reaches only the supervisor, which
then stops them one by one: the demo API before the validator it calls, every service before the NATS
server it drains into. On Linux they also get SIGTERM if the supervisor itself is killed (no orphans
left holding the ports).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.childprocess import ChildProcess

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


class Child(ChildProcess):
    """One service of the stack, in a session of its own, its log started afresh each run (the run
    before stays as .log.1 for comparison, and one run per file keeps a crash's tail readable)."""

    def __init__(self, spec: ChildSpec, env: Mapping[str, str], log_dir: Path) -> None:
        super().__init__(
            spec.name,
            log_dir / f"{spec.name}.log",
            argv=spec.argv,
            env={**env, **spec.env},
            new_session=True,
            die_with_parent=True,
        )
        self.spec = spec

    async def start(self) -> None:
        self.spawn(fresh_log=True)

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

    def log_tail(self, lines: int = 25) -> str:
        return super().log_tail(lines)


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
                pending: set[asyncio.Future[Any]] = {*waits, aborted}
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
            asyncio.ensure_future(child.exited()): child for child in self.children if child.pid is not None
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
            code = await child.stop_async(grace, force)
            if code not in (0, None, -signal.SIGTERM):
                self.say(f"  {child.name} exited with code {code} (log: {child.log_file})")
