"""On a real 3-node NATS cluster (tests/support/cluster.py): the streams get CNX_STREAM_REPLICAS copies
and a start never takes any away, durable consumers follow their stream, and the validator's lean
connection, given one server, learns the others and moves to a live one when its server is killed or
stops answering. The whole stack under node loss is the fault case tests/faults/test_nats_cluster.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import ConsumerConfig

from services.validator.natswire import WireClient
from shared.events import STREAM_EVENTS
from shared.messaging import connect_raw, prepare_server, stream_configs
from shared.settings import Settings
from tests.support.cluster import NatsCluster, nats_cluster

STREAMS = [config.name for config in stream_configs()]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats") as running:
        yield running


async def prepare(cluster: NatsCluster, replicas: int) -> None:
    settings = Settings(nats_url=cluster.url, stream_replicas=replicas)
    nc = await connect_raw(settings, "prepare")
    try:
        await prepare_server(nc, settings)
    finally:
        await nc.close()


async def test_streams_get_their_replicas_and_a_start_never_lowers_them(cluster: NatsCluster) -> None:
    await prepare(cluster, 1)
    assert {s: cluster.replicas(s) for s in STREAMS} == {s: (1, 1) for s in STREAMS}
    nc = await nats.connect(cluster.url.split(","))
    try:  # a durable consumer made while its stream has one copy
        await nc.jetstream().add_consumer(STREAM_EVENTS, ConsumerConfig(durable_name="follower"))
    finally:
        await nc.close()

    await prepare(cluster, 3)
    assert await asyncio.to_thread(cluster.settled_replicas, STREAMS, 3) == {s: (3, 3) for s in STREAMS}
    # A service started with the default (1) leaves them at 3, as it does streams scaled up by hand.
    await prepare(cluster, 1)
    assert {s: cluster.replicas(s) for s in STREAMS} == {s: (3, 3) for s in STREAMS}

    async def consumer_copies() -> int:
        return await asyncio.to_thread(cluster.consumer_replicas, STREAM_EVENTS, "follower")

    deadline = time.monotonic() + 15
    while await consumer_copies() != 3:  # the consumer follows its stream
        assert time.monotonic() < deadline, "the durable consumer stayed at fewer copies than its stream"
        await asyncio.sleep(0.1)


async def failover_gap(cluster: NatsCluster, fault: str) -> tuple[float, WireClient]:
    """A lean connection given only the first node's URL, answering `echo`; callers on every node
    except the one under fault; returns how long requests went unanswered once its node had `fault`."""
    first = cluster.nodes[0]
    wire = WireClient(first.url, name="lean-failover", ping_interval=0.5, connect_timeout=2)
    wire.subscribe("echo", lambda s, r, data, h: data, queue="q")
    await wire.start()
    assert len(wire.pool) == 3, "the servers the cluster advertises join the pool"
    callers = [await nats.connect([n.url]) for n in cluster.nodes[1:]]
    try:
        assert (await callers[0].request("echo", b"hi", timeout=2)).data == b"hi"
        if fault == "kill":
            cluster.kill(first.name)
        else:
            cluster.pause(first.name)
        at = time.monotonic()
        last_failure = at
        answered_after = 0
        n = 0
        while answered_after < 20:
            n += 1
            try:
                await callers[n % 2].request("echo", b"x", timeout=0.25)
                answered_after += 1
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                answered_after = 0
                last_failure = time.monotonic()
            assert time.monotonic() - at < 15, "the lean connection never answered again"
        return last_failure - at, wire
    finally:
        cluster.resume(first.name)
        for caller in callers:
            await caller.close()
        await wire.close()


async def test_the_lean_connection_moves_off_a_killed_node(cluster: NatsCluster) -> None:
    gap, wire = await failover_gap(cluster, "kill")
    assert wire.reconnects == 1 and wire.endpoint.address != cluster.nodes[0].url.split("//")[1]
    assert gap < 2.0, f"requests unanswered for {gap:.2f} s"


async def test_the_lean_connection_moves_off_a_paused_node(cluster: NatsCluster) -> None:
    gap, wire = await failover_gap(cluster, "pause")
    assert wire.reconnects == 1
    # Its PINGs (every 0.5 s here) go unanswered, and the other nodes drop the paused one's interest.
    assert gap < 5.0, f"requests unanswered for {gap:.2f} s"
