"""NotFoundHold (read-your-writes) with a scripted consumer position: which round settles a request,
one question at a time, the bound on held requests, and answers as soon as a batch makes a key known."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.validator.freshness import NotFoundHold
from tests.integration.stack import eventually


class Position:
    """A consumer position answered when the test says so, counting the questions in flight."""

    def __init__(self) -> None:
        self.asked = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.answers: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()
        self.applied = 0

    async def __call__(self) -> tuple[int, bool]:
        self.asked += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.answers.get()
        finally:
            self.in_flight -= 1


def recorder(answers: list[str], name: str, known: set[str]) -> object:
    def settle(final: bool) -> bool:
        if name in known or final:
            answers.append(f"{name} {'VALID' if name in known else 'NOT_FOUND'}")
            return True
        return False

    return settle


async def until(condition: Callable[[], object]) -> None:
    async def check() -> bool:
        return bool(condition())

    await eventually(check, timeout=2, interval=0.001)


async def test_a_request_arriving_while_a_question_is_out_waits_for_the_next_round() -> None:
    position = Position()
    hold = NotFoundHold(position, lambda: position.applied, wait=5, max_held=10)
    answers: list[str] = []
    known: set[str] = set()
    assert hold.hold(recorder(answers, "early", known))  # type: ignore[arg-type]
    await until(lambda: position.asked == 1)
    assert hold.hold(recorder(answers, "late", known))  # type: ignore[arg-type]
    position.answers.put_nowait((0, True))  # the first round: nothing newer, and applied already
    await until(lambda: answers)
    assert answers == ["early NOT_FOUND"]  # "late" may be younger than what the first answer saw
    await until(lambda: position.asked == 2)
    position.answers.put_nowait((0, True))
    await until(lambda: len(answers) == 2)
    assert answers == ["early NOT_FOUND", "late NOT_FOUND"]
    assert position.most_in_flight == 1


async def test_a_round_is_complete_once_the_replica_has_applied_what_was_delivered() -> None:
    position = Position()
    hold = NotFoundHold(position, lambda: position.applied, wait=5, max_held=10)
    answers: list[str] = []
    known: set[str] = set()
    hold.hold(recorder(answers, "new", known))  # type: ignore[arg-type]
    hold.hold(recorder(answers, "forged", known))  # type: ignore[arg-type]
    position.answers.put_nowait((7, True))
    await until(lambda: position.in_flight == 0 and position.asked == 1)
    await asyncio.sleep(0.01)
    assert answers == []  # delivered up to 7, applied 0: not yet
    known.add("new")
    position.applied = 7
    hold.advanced(True)  # the batch with "new" is applied: answered at once
    assert answers == ["new VALID"]
    await until(lambda: len(answers) == 2)
    assert answers == ["new VALID", "forged NOT_FOUND"]
    assert hold.rounds == 1 and hold.found_total == 1


async def test_pending_deliveries_mean_another_round() -> None:
    position = Position()
    hold = NotFoundHold(position, lambda: position.applied, wait=5, max_held=10)
    answers: list[str] = []
    hold.hold(recorder(answers, "forged", set()))  # type: ignore[arg-type]
    position.answers.put_nowait((3, False))  # more is waiting to be delivered: not complete
    await until(lambda: position.asked == 1 and position.in_flight == 0)
    position.applied = 3
    hold.advanced(False)
    await until(lambda: position.asked == 2)
    assert answers == []
    position.answers.put_nowait((5, True))
    position.applied = 5
    await until(lambda: answers)
    assert answers == ["forged NOT_FOUND"]


async def test_bounded_held_count_and_wait() -> None:
    position = Position()
    hold = NotFoundHold(position, lambda: position.applied, wait=0.05, max_held=2)
    answers: list[str] = []
    assert hold.hold(recorder(answers, "a", set()))  # type: ignore[arg-type]
    assert hold.hold(recorder(answers, "b", set()))  # type: ignore[arg-type]
    assert not hold.hold(recorder(answers, "c", set()))  # type: ignore[arg-type]
    assert hold.refused_full == 1
    # JetStream never answers: both are answered when their wait is over, with one question asked.
    await until(lambda: len(answers) == 2)
    assert sorted(answers) == ["a NOT_FOUND", "b NOT_FOUND"]
    assert hold.timed_out == 2 and position.asked == 1
    await hold.stop()


async def test_async_callers_and_a_failing_question() -> None:
    async def unavailable() -> tuple[int, bool]:
        raise ConnectionError("NATS is not connected")

    hold = NotFoundHold(unavailable, lambda: 0, wait=5, max_held=10)
    seen: list[bool] = []

    def settle(final: bool) -> bool:
        seen.append(final)
        return final

    assert await hold.held(settle) is True
    assert seen == [True] and hold.probe_failures == 1
    off = NotFoundHold(unavailable, lambda: 0, wait=0, max_held=10)
    assert not off.enabled
    assert await off.held(settle) is False
