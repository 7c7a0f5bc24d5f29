"""NATS adapters of the rotator: JetStream message schedules and request-reply commands to the issuer.

Both work in batches, because 100,000 schedules may fall due in the same minute: messages are written
one after another and their answers awaited together, with one timeout per batch, rather than a round
trip (and a timer and a task in nats-py) per message.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext

from shared.commands import CommandError, KeyAnswer, KeyCommand, parse_key_reply
from shared.events import STREAM_SCHEDULES
from shared.jetstream_publish import publish_together

from .domain import FIRED_SUBJECT_PREFIX

NO_RESPONDERS_STATUS = "503"


class NatsScheduler:
    """One schedule subject per (key, purpose): publishing again replaces it, purging it cancels it.

    Checked on nats-server 2.15.1: a newer message on the subject replaces the pending schedule; a purge
    of the subject cancels it; a past `@at` fires at once (also after a restart); the fired copy goes to
    `Nats-Schedule-Target` inside the same stream (not to core subscribers) with a `Nats-Scheduler`
    header, and the schedule message is removed once it fired.
    """

    def __init__(self, connection: Callable[[], NatsClient], timeout: float = 5.0) -> None:
        self._connection = connection
        self._js: tuple[NatsClient, JetStreamContext] | None = None
        self.timeout = timeout

    @property
    def js(self) -> JetStreamContext:
        # One context per connection: its async-publish inbox is one subscription, and building a
        # context per publish was 5% of the CPU spent scheduling.
        nc = self._connection()
        if self._js is None or self._js[0] is not nc:
            self._js = (nc, nc.jetstream())
        return self._js[1]

    async def publish(self, subject: str, at: str, target: str, payload: bytes) -> None:
        (outcome,) = await self.publish_many([(subject, at, target, payload)])
        if outcome is not None:
            raise outcome

    async def publish_many(
        self, schedules: Sequence[tuple[str, str, str, bytes]]
    ) -> list[BaseException | None]:
        """Publish (subject, `@at ...`, target, payload) schedules together; for each, None once the
        stream has it, or the error it met."""
        messages = [
            (subject, payload, {"Nats-Schedule": at, "Nats-Schedule-Target": target})
            for subject, at, target, payload in schedules
        ]
        return await publish_together(self.js, STREAM_SCHEDULES, messages, timeout=self.timeout)

    async def cancel(self, subject: str) -> None:
        await self.js.purge_stream(STREAM_SCHEDULES, subject=subject)

    async def trim_fired(self, durable: str) -> int:
        """Purge the fired copies the rotator has handled (below its consumer's ack floor), so the
        Limits-retention stream does not grow forever; one API call instead of a delete per message.
        Returns the sequence purged up to (0: nothing yet)."""
        info = await self.js.consumer_info(STREAM_SCHEDULES, durable)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if floor:
            await self.js.purge_stream(STREAM_SCHEDULES, seq=floor + 1, subject=f"{FIRED_SUBJECT_PREFIX}.>")
        return floor or 0


class NatsCommands:
    """`keys.cmd.*` requests (shared/commands.py) to the issuer's queue group, answered on one inbox
    subscription. Every answer is validated as a reply to a key command; one that is not is that
    command's error."""

    def __init__(self, connection: Callable[[], NatsClient], timeout: float = 5.0) -> None:
        self._connection = connection
        self.timeout = timeout
        self._inbox: tuple[NatsClient, str] | None = None
        self._waiting: dict[str, asyncio.Future[KeyAnswer | CommandError]] = {}
        self._tokens = itertools.count()

    async def request(self, command: KeyCommand) -> KeyAnswer | CommandError:
        (answer,) = await self.request_many([command])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def request_many(
        self, calls: Sequence[KeyCommand]
    ) -> list[KeyAnswer | CommandError | BaseException]:
        """Send every command and await the answers together; for each, the answer, or the error
        it met (TimeoutError when none came within the timeout)."""
        nc = self._connection()
        prefix = await self._reply_prefix(nc)
        loop = asyncio.get_running_loop()
        sent: list[tuple[str, asyncio.Future[KeyAnswer | CommandError]]] = []
        for command in calls:
            token = str(next(self._tokens))
            future: asyncio.Future[KeyAnswer | CommandError] = loop.create_future()
            self._waiting[token] = future
            sent.append((token, future))
            try:
                await nc.publish(command.subject, command.encode(), reply=prefix + token)
            except Exception as exc:  # disconnected: this one fails, and so will the rest
                future.set_exception(exc)
        try:
            await asyncio.wait([f for _, f in sent], timeout=self.timeout)
        finally:
            for token, _ in sent:
                self._waiting.pop(token, None)
        answers: list[KeyAnswer | CommandError | BaseException] = []
        for command, (_, future) in zip(calls, sent, strict=True):
            if not future.done():
                future.cancel()
                answers.append(TimeoutError(f"no answer to {command.subject} within {self.timeout}s"))
            elif (error := future.exception()) is not None:
                answers.append(error)
            else:
                answers.append(future.result())
        return answers

    async def _reply_prefix(self, nc: NatsClient) -> str:
        if self._inbox is None or self._inbox[0] is not nc:
            prefix = nc.new_inbox() + "."
            await nc.subscribe(prefix + "*", cb=self._answer)
            self._inbox = (nc, prefix)
        return self._inbox[1]

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
            future.set_exception(NoRespondersError())
            return
        try:
            future.set_result(parse_key_reply(msg.data))
        except ValueError as exc:  # not JSON, or not a reply to a key command (pydantic's is a ValueError)
            future.set_exception(exc)
