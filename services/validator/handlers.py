"""NATS entrypoints of the validator.

`keys.validate` is answered on a raw nats-py subscription in the `validators` queue group: it is the
hot path, and FastStream's per-message machinery (decoding, middlewares, pydantic) costs several times
the validation itself. Key events come through FastStream as a durable JetStream consumer of this
replica's own, resumed right after the last sequence its store applied.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.events import EVENTS_SUBJECTS, STREAM_EVENTS, SUBJECT_VALIDATE, parse_event
from shared.validation import Code

from .service import ValidatorService

log = logging.getLogger("validator")
QUEUE_GROUP = "validators"
_BAD_REQUEST = orjson.dumps({"valid": False, "code": Code.MALFORMED, "error": "request is not a JSON object"})


async def serve_validate(nc: NatsClient, service: ValidatorService) -> Subscription:
    validate = service.validate
    dumps = orjson.dumps
    loads = orjson.loads

    async def on_request(msg: Msg) -> None:
        try:
            body = loads(msg.data)
            if not isinstance(body, dict):
                raise TypeError
            reply = dumps(validate(body.get("key"), body.get("scope"), body.get("ip"), body.get("environment")))
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            reply = _BAD_REQUEST
        await nc.publish(msg.reply, reply)

    return await nc.subscribe(SUBJECT_VALIDATE, queue=QUEUE_GROUP, cb=on_request)


def consumer_config(durable: str, last_seq: int) -> ConsumerConfig:
    if last_seq <= 0:
        return ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_wait=30)
    return ConsumerConfig(
        durable_name=durable, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last_seq + 1, ack_wait=30
    )


async def reset_consumer(broker: NatsBroker, durable: str) -> None:
    """Drop the server-side durable, so the consumer is re-created at the store's own position."""
    try:
        await broker.connection.jetstream().delete_consumer(STREAM_EVENTS, durable)
    except NotFoundError:
        pass


def register_events(broker: NatsBroker, service: ValidatorService, durable: str) -> Any:
    @broker.subscriber(
        EVENTS_SUBJECTS,
        stream=JStream(STREAM_EVENTS, declare=False),
        durable=durable,
        config=consumer_config(durable, service.last_seq),
        pull_sub=PullSub(batch_size=256, timeout=0.5),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_key_event(body: dict[str, Any], msg: NatsMessage) -> None:
        """Keep this replica's projection current: a newer revision replaces, anything else is a no-op."""
        seq = msg.raw_message.metadata.sequence.stream
        await service.apply_events([(seq, parse_event(body))])

    return on_key_event
