"""How late do expiries and notices fire when many keys expire at once? (issue 6, figure 6)

Starts a nats-server and the rotator (`python -m services.rotator`, its own SQLite store) as processes,
publishes KeyCreated for N keys whose expiries are spread over WINDOW seconds, starting LEAD seconds
from now, with notices at the given offsets, and then measures, against each schedule's due time:
- `fired`: when NATS delivered the fired schedule (an observer consumer on `keys.fired.>`),
- `expire`: when the rotator's `keys.cmd.expire` request reached the (stand-in) issuer,
  (which also answers the `keys.cmd.status` a notice checks first),
- `notice`: when the rotator's KeyExpiring event reached the events stream.
It also reports the cost to schedule one key: schedules per second from the first KeyCreated until the
rotator has acked them all (it acks once NATS holds the key's schedules), and the rotator's CPU time
(user + system, /proc) per key; and the rotator's CPU per handled schedule. CPU is the figure to
compare across runs on a shared machine; wall-clock lateness depends on what else runs there.

The defaults are the issue's figure literally: 50,000 keys expiring within 30 s, each with one notice
30 s before, so 100,000 expiries and notices fall due within the same 60 s (~1,667 a second).

    python -m benchmarks.lifecycle_lateness                  # the figure: 100,000 due in one minute
    python -m benchmarks.lifecycle_lateness --keys 20000 --window 12 --notices 12s --lead 60   # 2 min

Measured 2026-11-30 on a shared 2-core VM (nats-server 2.15.1, SQLite, everything on one machine, other
benchmarks running beside it), the defaults: 100,000 schedules, every one fired and handled, none
redelivered, pending 0 at the end, the rotator out 0.6 s after SIGTERM.
    scheduling (KeyCreated -> schedules in NATS)   2,501 schedules/s; rotator CPU 385 us per key
    fired  (NATS delivers the fired copy)          p50   133 ms   p99   348 ms   max   382 ms
    expire (rotator's keys.cmd.expire arrives)     p50   331 ms   p99   809 ms   max   849 ms
    notice (rotator's KeyExpiring on the stream)   p50   704 ms   p99  1557 ms   max  1578 ms
    rotator CPU per handled schedule               300 us (one rotator process)
Before the batching (one transaction and one NATS round trip per message), the same run could not
schedule the keys in time (35,057 KeyCreated still pending at the end), handled 22,179 of 100,000
(expire p99 79 s, notice p99 30 s), and the rotator did not exit within 15 s of SIGTERM.
(With FastStream's batch pull loop instead of a nats-py fetch loop, ~0.6% of fired copies were lost
client-side and came back only after the ack wait.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import orjson
import uvloop
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.rotator.domain import notice_purpose
from shared.events import KeyCreated, KeyView, encode_event
from shared.messaging import ensure_streams
from shared.natsserver import EmbeddedNats, free_port
from shared.settings import parse_duration
from shared.timeutil import ceil_second

PUBLISH_WINDOW = 500


# The observers neither ack nor slow anything down: ephemeral consumers with no acks, new messages only.
def no_acks() -> ConsumerConfig:
    return ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.NEW)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, values: list[float], expected: int) -> str:
    if not values:
        return f"{name:7s} 0/{expected}"
    return (
        f"{name:7s} {len(values)}/{expected}  p50 {percentile(values, 0.5) * 1000:7.0f} ms  "
        f"p99 {percentile(values, 0.99) * 1000:7.0f} ms  max {max(values) * 1000:7.0f} ms  "
        f"mean {statistics.fmean(values) * 1000:7.0f} ms"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(processes: list[subprocess.Popen[bytes]]) -> float:
    return sum(cpu_seconds(p.pid) for p in processes)


async def wait_ready(port: int) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("rotator did not become ready")
            await asyncio.sleep(0.1)


def spawn_rotator(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.rotator"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def run(
    keys: int,
    window: float,
    lead: float,
    notices: list[timedelta],
    workdir: Path,
    observe_fired: bool = True,
    replicas: int = 1,
) -> int:
    server = EmbeddedNats(workdir / "nats")
    server.start()
    env = {
        **os.environ,
        "CNX_NATS_URL": server.url,
        "CNX_DATA_DIR": str(workdir),
        "CNX_EXPIRY_NOTICES": ",".join(f"{n.total_seconds():g}s" for n in notices),
        "CNX_LOG_LEVEL": os.environ.get("CNX_LOG_LEVEL", "WARNING"),
    }
    rotators: list[subprocess.Popen[bytes]] = []
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    try:
        # Replicas share the durable consumers and the store; started one after the other, so that one
        # creates the tables.
        for replica in range(replicas):
            port = free_port()
            log = workdir / ("rotator.log" if replica == 0 else f"rotator-{replica}.log")
            rotators.append(spawn_rotator({**env, "CNX_ROTATOR_PORT": str(port)}, log))
            await wait_ready(port)

        start = datetime.now(UTC)
        first = start + timedelta(seconds=lead)
        due: dict[tuple[str, str], float] = {}  # (purpose, key_id) -> due time, epoch seconds
        late: dict[str, list[float]] = {"fired": [], "expire": [], "notice": []}
        handled: set[tuple[str, str]] = set()
        fired_seen: set[tuple[str, str]] = set()

        # The stand-in issuer and the observers share this process with the load: they are kept cheap
        # (orjson, epoch floats, the fired copy's identity read from its subject), so that they are not
        # what sets the pace; their lateness is measured with time.time() against `due`.
        async def on_expire(msg: nats.aio.msg.Msg) -> None:
            now = time.time()
            key_id = orjson.loads(msg.data)["key_id"]
            if ("expire", key_id) not in handled:
                handled.add(("expire", key_id))
                late["expire"].append(now - due[("expire", key_id)])
            await msg.respond(orjson.dumps({"ok": True, "key_id": key_id, "status": "expired"}))

        await nc.subscribe("keys.cmd.expire", cb=on_expire)
        expiry: dict[str, str] = {}

        async def on_status(msg: nats.aio.msg.Msg) -> None:
            key_id = orjson.loads(msg.data)["key_id"]
            answer = {"ok": True, "key_id": key_id, "status": "active", "expires_at": expiry[key_id]}
            await msg.respond(orjson.dumps(answer))

        await nc.subscribe("keys.cmd.status", cb=on_status)

        async def on_fired(msg: nats.aio.msg.Msg) -> None:
            # keys.fired.<purpose>.<key_id>
            now = time.time()
            _, _, purpose, key_id = msg.subject.split(".", 3)
            if (purpose, key_id) not in fired_seen:
                fired_seen.add((purpose, key_id))
                late["fired"].append(now - due[(purpose, key_id)])

        async def on_notice(msg: nats.aio.msg.Msg) -> None:
            now = time.time()
            body = orjson.loads(msg.data)
            if "notice" not in body:
                return
            at = ("notice-" + body["notice"], body["key_id"])
            if at not in handled:
                handled.add(at)
                late["notice"].append(now - due[at])

        if observe_fired:
            await js.subscribe(
                "keys.fired.>",
                stream="KEYS_SCHEDULES",
                cb=on_fired,
                manual_ack=True,
                config=no_acks(),
            )
        await js.subscribe(
            "keys.events.key.expiring",
            stream="KEYS_EVENTS",
            cb=on_notice,
            manual_ack=True,
            config=no_acks(),
        )

        cpu0 = cpu_of(rotators)
        t0 = time.monotonic()
        sending: list[Awaitable[object]] = []
        for i in range(keys):
            expires_at = first + timedelta(seconds=window * i / keys)
            key_id = f"key_bench{i:019d}"
            view = KeyView(
                key_id=key_id,
                account_id="bench",
                prefix="cnx_prod_bnch",
                digest=f"{i:064d}",
                name=f"bench {i}",
                environment="prod",
                scopes=["compute:read"],
                plan="starter",
                status="active",
                created_at=start,
                expires_at=expires_at,
                revision=1,
            )
            due[("expire", key_id)] = ceil_second(expires_at).timestamp()
            expiry[key_id] = expires_at.isoformat()
            for offset in notices:
                due[(notice_purpose(offset), key_id)] = ceil_second(expires_at - offset).timestamp()
            event = KeyCreated(account_id="bench", key_id=key_id, key=view)
            sending.append(
                js.publish(event.subject, encode_event(event), headers={"Nats-Msg-Id": event.event_id})
            )
            if len(sending) >= PUBLISH_WINDOW or i == keys - 1:
                # Acks awaited together: one at a time, the benchmark itself set the scheduling pace.
                await asyncio.gather(*sending)
                sending = []
        published_s = time.monotonic() - t0
        print(f"published {keys} KeyCreated in {published_s:.1f}s")

        schedules = keys * (1 + len(notices))
        # Every KeyCreated handled: the rotator acks an event only once NATS holds its schedules.
        deadline = time.monotonic() + lead
        while time.monotonic() < deadline:
            info = await js.consumer_info("KEYS_EVENTS", "rotator")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.2)
        else:
            print(
                f"WARNING: {info.num_pending + info.num_ack_pending} KeyCreated not handled after {lead:.0f}s"
            )
        scheduled_s = time.monotonic() - t0
        cpu1 = cpu_of(rotators)
        bench_cpu0 = time.process_time()
        print(
            f"all {schedules} schedules in NATS after {scheduled_s:.1f}s "
            f"({schedules / scheduled_s:.0f}/s); "
            f"first due in {(first - datetime.now(UTC)).total_seconds():.0f}s"
        )
        print(
            f"scheduling cost: rotator CPU {cpu1 - cpu0:.1f}s, {(cpu1 - cpu0) * 1e6 / keys:.0f} us per key "
            f"({(cpu1 - cpu0) * 1e6 / schedules:.0f} us per schedule)"
        )
        if datetime.now(UTC) > first - max(notices, default=timedelta()):
            print("WARNING: scheduling took longer than the lead; raise --lead for a fair measurement")

        expected = {"fired": schedules if observe_fired else 0, "expire": keys, "notice": keys * len(notices)}
        end = first + timedelta(seconds=window + 60)
        while datetime.now(UTC) < end:
            if all(len(late[k]) >= v for k, v in expected.items()):
                break
            await asyncio.sleep(0.5)
        cpu2 = cpu_of(rotators)
        bench_cpu = time.process_time() - bench_cpu0
        for name in ("fired", "expire", "notice"):
            print(summary(name, late[name], expected[name]))
        handled = len(late["expire"]) + len(late["notice"])
        print(
            f"handled {handled}/{schedules}; rotator CPU since scheduling {cpu2 - cpu1:.1f}s, "
            f"{(cpu2 - cpu1) * 1e6 / max(handled, 1):.0f} us per handled schedule "
            f"(this process, the stand-in issuer and observers: {bench_cpu:.1f}s CPU)"
        )
        for stream, durable in (("KEYS_EVENTS", "rotator"), ("KEYS_SCHEDULES", "rotator-fired")):
            info = await js.consumer_info(stream, durable)
            print(
                f"consumer {durable}: pending {info.num_pending}, unacked {info.num_ack_pending}, "
                f"redelivered {info.num_redelivered}"
            )
        return 0 if all(len(late[k]) >= v for k, v in expected.items()) else 1
    finally:
        await nc.close()
        stopping = time.monotonic()
        for rotator in rotators:
            rotator.terminate()
        for rotator in rotators:
            try:
                rotator.wait(max(0.1, stopping + 15 - time.monotonic()))
                print(f"rotator exited {time.monotonic() - stopping:.1f}s after SIGTERM")
            except subprocess.TimeoutExpired:
                print("rotator did not exit within 15s of SIGTERM; killed")
                rotator.kill()
                rotator.wait()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--window", type=float, default=30.0, help="seconds over which the expiries spread")
    parser.add_argument(
        "--lead",
        type=float,
        default=150.0,
        help="seconds from now to the first expiry: more than scheduling takes plus the largest notice",
    )
    parser.add_argument("--notices", default="30s", help="notice offsets before expiry, comma-separated")
    parser.add_argument("--no-fired-observer", action="store_true", help="do not time NATS's own firing")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores and logs here")
    parser.add_argument("--replicas", type=int, default=1, help="rotator processes sharing the work")
    args = parser.parse_args()
    notices = [parse_duration(n) for n in args.notices.split(",") if n]

    def go(workdir: Path) -> int:
        return uvloop.run(
            run(
                args.keys,
                args.window,
                args.lead,
                notices,
                workdir,
                not args.no_fired_observer,
                args.replicas,
            )
        )

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        sys.exit(go(args.workdir))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(go(Path(tmp)))


if __name__ == "__main__":
    main()
