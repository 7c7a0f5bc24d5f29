"""Reading the event stream and the consumers' state for the fault cases (nats-py, in a loop of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nats
import orjson
from nats.js.api import DeliverPolicy

from shared.events import STREAM_EVENTS
from tests.e2e.stack import poll
from tests.support.databases import run_sync


@dataclass
class StreamMessage:
    seq: int
    subject: str
    msg_id: str
    data: bytes

    @property
    def body(self) -> dict[str, Any]:
        return orjson.loads(self.data)  # type: ignore[no-any-return]


def read_stream(
    nats_url: str, stream: str = STREAM_EVENTS, subject: str = "keys.events.>"
) -> list[StreamMessage]:
    """Every message of the stream, through an ordered consumer of our own (no durable touched)."""

    async def run() -> list[StreamMessage]:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            last = (await js.stream_info(stream)).state.last_seq
            out: list[StreamMessage] = []
            if last == 0:
                return out
            sub = await js.subscribe(
                subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            while True:
                msg = await sub.next_msg(timeout=10)
                seq = msg.metadata.sequence.stream
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                out.append(StreamMessage(seq, msg.subject, msg_id, msg.data))
                if seq >= last:
                    break
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return run_sync(run)


def consumer_states(nats_url: str, consumers: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """(stream, durable) -> (pending, unacknowledged)."""

    async def run() -> dict[str, tuple[int, int]]:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            out: dict[str, tuple[int, int]] = {}
            for stream, durable in consumers:
                info = await js.consumer_info(stream, durable)
                out[durable] = (info.num_pending, info.num_ack_pending)
            return out
        finally:
            await nc.close()

    return run_sync(run)


def consumers_idle(
    nats_url: str, consumers: list[tuple[str, str]], delivered_only: frozenset[str] = frozenset()
) -> bool:
    """Each (stream, durable) has nothing pending and nothing unacknowledged; for `delivered_only`
    durables, nothing pending (their unacknowledged messages are reported, not waited for)."""
    states = consumer_states(nats_url, consumers)
    return all(
        pending == 0 and (unacked == 0 or durable in delivered_only)
        for durable, (pending, unacked) in states.items()
    )


def wait_idle(
    nats_url: str,
    consumers: list[tuple[str, str]],
    timeout: float,
    delivered_only: frozenset[str] = frozenset(),
) -> float:
    """Poll until every consumer is idle; on the deadline, fail naming what each still holds."""
    try:
        return poll(
            lambda: consumers_idle(nats_url, consumers, delivered_only),
            timeout,
            interval=0.2,
            what="consumers idle",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {consumer_detail(nats_url, consumers)}") from None


def consumer_detail(nats_url: str, consumers: list[tuple[str, str]]) -> str:
    """For a failure message: each consumer's counters and the subjects of its unacknowledged messages."""

    async def run() -> str:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            js = nc.jetstream()
            lines = []
            for stream, durable in consumers:
                info = await js.consumer_info(stream, durable)
                line = (
                    f"{durable}: pending={info.num_pending} unacked={info.num_ack_pending} "
                    f"redelivered={info.num_redelivered} delivered={info.delivered} "
                    f"ack_floor={info.ack_floor}"
                )
                if info.num_ack_pending and info.ack_floor and info.ack_floor.stream_seq is not None:
                    try:
                        first = await js.get_msg(stream, info.ack_floor.stream_seq + 1)
                        line += f" first unacked: {first.subject} {first.data[:300]!r}"
                    except Exception as exc:  # diagnostics only
                        line += f" ({exc!r})"
                lines.append(line)
            return "\n".join(lines)
        finally:
            await nc.close()

    return run_sync(run)


def stream_subjects(nats_url: str, stream: str, subjects: str) -> dict[str, int]:
    async def run() -> dict[str, int]:
        nc = await nats.connect(nats_url.split(","), connect_timeout=5)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subjects)
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return run_sync(run)
