"""NATS entrypoint of the notifier: KeyExpiring, KeyExpired, KeyRotated, KeyRevoked in. Thin.

A durable pull consumer (`notifier`), shared by every replica. A delivery still to retry hands the
event back to JetStream with a delay (nak), so retries survive restarts; an exception redelivers.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage

from shared import correlation
from shared.events import STREAM_EVENTS, KeyEvent, parse_event

from .service import NotifierService

# Above the worst case of one event (webhook secret 5 s, SMTP 10 s, webhook 10 s); short enough that a
# message lost client-side (a fetch timing out as it arrives) comes back soon.
ACK_WAIT_S = 30.0

NOTICE_SUBJECTS = [
    "keys.events.key.expiring",
    "keys.events.key.expired",
    "keys.events.key.rotated",
    "keys.events.key.revoked",
]


def register(broker: NatsBroker, service: NotifierService) -> None:
    @broker.subscriber(
        "keys.events.key.*",
        stream=JStream(STREAM_EVENTS, declare=False),
        durable="notifier",
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(filter_subjects=NOTICE_SUBJECTS, ack_wait=ACK_WAIT_S),
        pull_sub=PullSub(batch_size=20, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def notices(body: dict[str, Any], msg: NatsMessage) -> None:
        """Send the email and the signed webhook this event calls for, once per (key, purpose, expiry)."""
        event = parse_event(body)
        # The notice's log lines carry the id of the API call that caused it (shared/correlation.py).
        correlation.bind(event.correlation_id)
        if not isinstance(event, KeyEvent):
            return
        retry_in = await service.on_event(event)
        if retry_in is not None:
            await msg.nack(delay=retry_in)
