"""The validator's key events: a durable JetStream pull consumer of this replica's own.

It resumes right after the last sequence the replica's store applied and takes a batch at a time
(shared/consumer.py: one store write per batch, so a new replica replays the whole stream in seconds,
not one write per event). The validator's request entrypoints (`keys.validate`, membership, requests
passed on by peers, plan changes) are in cluster.py.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.consumer import Consumer
from shared.events import EVENTS_SUBJECTS, STREAM_EVENTS, parse_event

from .service import ValidatorService

log = logging.getLogger("validator")


# A message lost on the client side (a pull that timed out with it in flight) comes back only after the
# ack wait; for a revocation that is how long a replica could stay wrong. Redelivery is harmless (the
# revision check makes it a no-op), so keep the wait short.
EVENTS_ACK_WAIT_S = 2
EVENTS_RETRY_DELAY_S = 1.0


def consumer_config(durable: str, last_seq: int) -> ConsumerConfig:
    if last_seq <= 0:
        return ConsumerConfig(
            durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_wait=EVENTS_ACK_WAIT_S
        )
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=last_seq + 1,
        ack_wait=EVENTS_ACK_WAIT_S,
    )


async def reset_consumer(nc: NatsClient, durable: str) -> None:
    """Drop the server-side durable, so the consumer is re-created at the store's own position."""
    try:
        await nc.jetstream().delete_consumer(STREAM_EVENTS, durable)
    except NotFoundError:
        pass


def events_consumer(
    service: ValidatorService, durable: str, observe_lag: Callable[[float], None] = lambda seconds: None
) -> Consumer:
    """This replica's key events: a batch is applied to memory, written to the store in one transaction,
    then acked. One batch at a time: the store's position is the last sequence of the last batch written,
    so a later batch must never be written before an earlier one."""

    async def key_events(msgs: list[Msg]) -> None:
        events: list[tuple[int, object]] = []
        readable: list[Msg] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                body = orjson.loads(msg.data)
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                events.append((seq, parse_event(body)))
                readable.append(msg)
            except (ValueError, TypeError):
                # Never redelivered (it would never parse); its sequence still counts as applied.
                log.error("unreadable event on %s (sequence %d): dropped", msg.subject, seq)
                events.append((seq, None))
                await msg.term()
        try:
            await service.apply_events(events)
        except Exception:
            log.warning("a batch of %d key events failed; redelivered shortly", len(msgs), exc_info=True)
            for msg in readable:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=EVENTS_RETRY_DELAY_S)
            return
        applied = time.time()
        for msg in readable:
            # From the event's arrival in the stream to its use here: what an SRE alerts on.
            observe_lag(applied - msg.metadata.timestamp.timestamp())
            await msg.ack()

    return Consumer(
        STREAM_EVENTS, durable, EVENTS_SUBJECTS, consumer_config(durable, service.last_seq), key_events
    )
