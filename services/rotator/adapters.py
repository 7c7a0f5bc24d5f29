"""NATS adapters of the rotator: JetStream message schedules and request-reply commands to the issuer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from shared.events import CMD_PREFIX, STREAM_SCHEDULES

from .domain import FIRED_SUBJECT_PREFIX


class NatsScheduler:
    """One schedule subject per (key, purpose): publishing again replaces it, purging it cancels it.

    Checked on nats-server 2.15.1: a newer message on the subject replaces the pending schedule; a purge
    of the subject cancels it; a past `@at` fires at once (also after a restart); the fired copy goes to
    `Nats-Schedule-Target` inside the same stream (not to core subscribers) with a `Nats-Scheduler`
    header, and the schedule message is removed once it fired.
    """

    def __init__(self, connection: Callable[[], NatsClient]) -> None:
        self._connection = connection

    @property
    def js(self) -> JetStreamContext:
        return self._connection().jetstream()

    async def publish(self, subject: str, at: str, target: str, payload: bytes) -> None:
        await self.js.publish(
            subject,
            payload,
            stream=STREAM_SCHEDULES,
            headers={"Nats-Schedule": at, "Nats-Schedule-Target": target},
        )

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
    """`keys.cmd.<command>` requests to the issuer's queue group."""

    def __init__(self, connection: Callable[[], NatsClient], timeout: float = 5.0) -> None:
        self._connection = connection
        self.timeout = timeout

    async def request(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self._connection().request(
            f"{CMD_PREFIX}.{command}", json.dumps(body).encode(), timeout=self.timeout
        )
        answer: dict[str, Any] = json.loads(reply.data)
        return answer
