"""Publishing many JetStream messages at once: written one after another, their acks awaited together.

JetStream's async publish costs no round trip, timer or task per message, which is what lets a busy
validator flush thousands of keys' usage, or the rotator write 100,000 schedules due the same minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from nats.js import JetStreamContext
from nats.js.api import PubAck


async def publish_together(
    js: JetStreamContext,
    stream: str,
    messages: Sequence[tuple[str, bytes, Mapping[str, str]]],
    *,
    timeout: float = 5.0,
) -> list[BaseException | None]:
    """Publish (subject, payload, headers) messages to `stream` in order and await their acks together.
    Returns, for each, None once the stream has it, or the error it met (TimeoutError when no ack came
    within `timeout`; after a failed send the rest are not sent and carry that error)."""
    futures: list[asyncio.Future[PubAck]] = []
    failed: BaseException | None = None
    for subject, payload, headers in messages:
        try:
            futures.append(await js.publish_async(subject, payload, stream=stream, headers=dict(headers)))
        except Exception as exc:  # disconnected, too many pending: the rest is not sent
            failed = exc
            break
    if futures:
        _, late = await asyncio.wait(futures, timeout=timeout)
        for future in late:
            future.cancel()  # frees its slot in the client's pending async publishes
    outcomes: list[BaseException | None] = [
        TimeoutError("no ack from JetStream") if f.cancelled() else f.exception() for f in futures
    ]
    return outcomes + [failed or RuntimeError("not sent")] * (len(messages) - len(futures))
