"""The rotator's NATS adapters against a real nats-server: issuer commands sent as a batch (answers,
no responder, no answer in time) and schedules published as a batch."""

from __future__ import annotations

from typing import Any

import nats
import orjson
import pytest
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from services.rotator.adapters import NatsCommands, NatsScheduler
from shared.commands import ExpireKey, KeyAnswer, KeyStatusQuery, RenewKey
from shared.events import STREAM_SCHEDULES
from shared.messaging import ensure_streams


async def test_commands_in_a_batch_each_get_their_own_answer(nats_server: Any) -> None:
    nc = await nats.connect(nats_server.url)
    try:

        async def status(msg: Msg) -> None:
            body = orjson.loads(msg.data)
            if body["key_id"] == "key_garbled":
                await msg.respond(b'{"ok": true, "status": "sideways"}')
                return
            answer = KeyAnswer(key_id=body["key_id"], status="active", revision=1)
            await msg.respond(orjson.dumps(answer.wire()))

        await nc.subscribe("keys.cmd.status", cb=status)
        await nc.subscribe("keys.cmd.expire", cb=_ignore)
        commands = NatsCommands(lambda: nc, timeout=0.5)
        calls = [KeyStatusQuery(key_id=f"key_{i}") for i in range(300)]
        answers = await commands.request_many(
            [
                *calls,
                ExpireKey(key_id="key_x"),
                RenewKey(key_id="key_y"),
                KeyStatusQuery(key_id="key_garbled"),
            ]
        )
        assert answers[:300] == [
            KeyAnswer(key_id=f"key_{i}", status="active", revision=1) for i in range(300)
        ]
        assert isinstance(answers[300], TimeoutError)  # a responder that never answers
        assert isinstance(answers[301], NoRespondersError)  # nobody listens on keys.cmd.renew
        assert isinstance(answers[302], ValueError)  # an answer that is no reply to a key command
        answer = await commands.request(KeyStatusQuery(key_id="key_1"))
        assert answer == KeyAnswer(key_id="key_1", status="active", revision=1)
        with pytest.raises(NoRespondersError):
            await commands.request(RenewKey(key_id="key_1"))
    finally:
        await nc.close()


async def _ignore(msg: Msg) -> None:
    return None


async def test_schedules_in_a_batch_are_all_stored(nats_server: Any) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        scheduler = NatsScheduler(lambda: nc)
        batch = [
            (
                f"keys.schedule.adaptertest.key_{i}",
                "@at 2099-01-01T00:00:00Z",
                f"keys.fired.adaptertest.key_{i}",
                b"{}",
            )
            for i in range(300)
        ]
        assert await scheduler.publish_many(batch) == [None] * 300
        info = await js.stream_info(STREAM_SCHEDULES, subjects_filter="keys.schedule.adaptertest.*")
        assert info.state.subjects is not None and len(info.state.subjects) == 300
        for subject, *_ in batch:
            await scheduler.cancel(subject)
    finally:
        await nc.close()
