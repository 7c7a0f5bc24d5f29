"""Read-your-writes at one validator replica: a NOT_FOUND is held until the replica has caught up.

The issuer answers a create's 201 once the key's KeyCreated is in the events stream; this replica may
not have applied it yet (its consumer is a few milliseconds behind). So a NOT_FOUND for a well-formed
token is not answered at once: the request is held until this replica has applied every key event the
stream held when the request arrived, then decided again (and answered as soon as an applied batch makes
it known, without waiting for the rest).

"Applied up to when the request arrived" is asked of JetStream once per round, by the durable consumer's
state rather than the stream's last sequence (the stream may carry subjects a consumer does not
deliver): with nothing left to deliver, the round is complete once the replica has applied up to the
last sequence delivered. A request is settled by the first complete round whose question was sent after
it arrived; one arriving while a round's question is out waits for the next round, since the answer in
flight may predate its key.

Bounds, against a flood of forged (well-formed, checksum-correct) tokens: one round at a time per
replica, so at most one JetStream API request in flight however many requests are held; at most
`max_held` requests held (beyond: NOT_FOUND at once); each held at most `wait` seconds (then NOT_FOUND).
Under a flood, rounds follow one another, each settling everything held before it began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("validator.freshness")

# What a round asks JetStream: (last stream sequence delivered to this replica's consumer, whether
# nothing is left to deliver).
Probe = Callable[[], Awaitable[tuple[int, bool]]]
# Decide a held request again and answer it: `final` says it must be answered now (the round is complete
# or its wait is over); otherwise it answers only if the key is known now. True once answered.
Settle = Callable[[bool], bool]


@dataclass(slots=True)
class _Held:
    after: int  # rounds begun before it arrived: the first round that may settle it is `after + 1`
    deadline: float
    settle: Settle


class NotFoundHold:
    def __init__(
        self,
        probe: Probe,
        applied: Callable[[], int],
        *,
        wait: float,
        max_held: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._applied = applied
        self.wait = wait
        self.max_held = max_held
        self._clock = clock
        self._held: list[_Held] = []
        self._begun = 0  # rounds begun
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # For metrics and tests.
        self.rounds = 0
        self.probe_failures = 0
        self.held_total = 0
        self.found_total = 0
        self.refused_full = 0
        self.timed_out = 0

    @property
    def enabled(self) -> bool:
        return self.wait > 0 and self.max_held > 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, settle: Settle) -> bool:
        """Hold a NOT_FOUND request; False (answer it now) when holding is off or `max_held` are held."""
        if len(self._held) >= self.max_held or self.wait <= 0:
            self.refused_full += 1
            return False
        self._held.append(_Held(self._begun, self._clock() + self.wait, settle))
        self.held_total += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds(), name="validator-read-your-writes")
        return True

    async def held(self, settle: Settle) -> bool:
        """`hold`, for an async caller: returns once `settle` has answered (True), or at once (False)
        when the request cannot be held."""
        done = asyncio.get_running_loop().create_future()

        def settle_and_tell(final: bool) -> bool:
            if settle(final):
                if not done.done():
                    done.set_result(None)
                return True
            return False

        if not self.hold(settle_and_tell):
            return False
        await done
        return True

    def advanced(self, keys_changed: bool) -> None:
        """The replica applied a batch of events (the service calls this): a round waiting for it may be
        complete, and a held key may be known now (answered at once, not at the round's end)."""
        if not self._held:
            return
        self._advanced.set()
        if keys_changed:
            still = []
            for held in self._held:
                if self._settle(held, final=False):
                    self.found_total += 1
                else:
                    still.append(held)
            self._held = still

    async def stop(self) -> None:
        """Answer everything held (as it stands now) and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._finish(lambda held: True)

    # -- rounds ------------------------------------------------------------------------------------
    async def _rounds(self) -> None:
        while self._held:
            self._begun += 1
            this_round = self._begun
            self.rounds += 1
            probe = asyncio.ensure_future(self._probe())
            while not probe.done():
                await asyncio.wait({probe}, timeout=self._until_next_deadline())
                self._expire()
            try:
                target, complete = probe.result()
            except Exception as exc:
                # NATS away or slow: nothing tells how far behind we are; answer what this round was for.
                self.probe_failures += 1
                log.debug("read-your-writes: consumer position unavailable (%s)", type(exc).__name__)
                self._finish_older_than(this_round)
                continue
            while self._held and self._applied() < target:
                self._advanced.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._advanced.wait(), self._until_next_deadline())
                self._expire()
            if complete:
                self._finish_older_than(this_round)

    def _until_next_deadline(self) -> float:
        if not self._held:
            return 0.0
        return max(0.0, min(held.deadline for held in self._held) - self._clock())

    def _expire(self) -> None:
        now = self._clock()
        before = len(self._held)
        self._finish(lambda held: held.deadline <= now)
        self.timed_out += before - len(self._held)

    def _finish_older_than(self, round_: int) -> None:
        """Answer the requests held before round `round_` began (those it was for)."""
        self._finish(lambda held: held.after < round_)

    def _finish(self, due: Callable[[_Held], bool]) -> None:
        still = []
        for held in self._held:
            if due(held):
                self._settle(held, final=True)
            else:
                still.append(held)
        self._held = still

    @staticmethod
    def _settle(held: _Held, *, final: bool) -> bool:
        try:
            return held.settle(final)
        except Exception:
            log.exception("read-your-writes: answering a held request failed")
            return True  # never held again
