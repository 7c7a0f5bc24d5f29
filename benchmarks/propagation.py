"""Figure 5: how long a key change takes to reach the validators, through the outbox and JetStream.

The issuer and 1 (then 3) validators run as processes. For each sample a key is created through the
API; from the moment the API's answer arrives (the caller holds the key) every replica is asked, on its
own subject (`keys.validate.owner.<replica>`, which reaches that replica alone), until it answers VALID;
then the key is revoked and every replica is asked until it answers REVOKED. The figure is the time
until the last replica answers (all replicas agree), p50 and p99 over the samples (200 by default, after
a few uncounted warm-up rounds: with 40, p99 was the single slowest sample). The ceiling is a
NATS round trip to the same replicas (what one poll costs, the resolution of the measurement).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import orjson

from . import common
from .stack import Stack

WARM_UP = 3


async def _until(nc: Any, subject: str, key: str, code: str, started: float) -> float:
    payload = orjson.dumps({"key": key, "scope": "compute:read"})
    deadline = started + 30
    while time.perf_counter() < deadline:
        answer = orjson.loads((await nc.request(subject, payload, timeout=5)).data)
        if answer["code"] == code:
            return time.perf_counter() - started
    raise RuntimeError(f"{subject} never answered {code}")


async def measure(workdir: Path, replicas: int, samples: int) -> dict[str, Any]:
    async with Stack(workdir, validators=replicas) as stack:
        nc = await nats.connect(stack.nats.url)
        subjects = [f"keys.validate.owner.bench-v{i}" for i in range(replicas)]
        created: list[float] = []
        revoked: list[float] = []
        rtt: list[float] = []
        slowest_create: list[list[float]] = []
        slowest_revoke: list[list[float]] = []
        body = {
            "name": "propagation",
            "environment": "prod",
            "scopes": ["compute:read"],
            "plan": "enterprise",
            "rate_limit": {"requests_per_minute": 1_000_000, "burst": None},
        }
        await stack.change_plan("enterprise", rate_limit=body["rate_limit"])
        async with stack.api() as api:
            for sample in range(-WARM_UP, samples):
                if sample == 0:  # the first rounds pay for connections and first calls: not counted
                    for values in (created, revoked, rtt, slowest_create, slowest_revoke):
                        values.clear()
                response = await api.post("/v2/keys", json=body)
                started = time.perf_counter()
                response.raise_for_status()
                key, key_id = response.json()["key"], response.json()["id"]
                times = await asyncio.gather(*(_until(nc, s, key, "VALID", started) for s in subjects))
                created.append(max(times))
                slowest_create.append([round(t * 1000, 1) for t in times])
                ping = time.perf_counter()
                await nc.request(subjects[0], orjson.dumps({"key": key, "scope": "compute:read"}), timeout=5)
                rtt.append(time.perf_counter() - ping)
                response = await api.post(f"/v2/keys/{key_id}/revoke")
                started = time.perf_counter()
                response.raise_for_status()
                times = await asyncio.gather(*(_until(nc, s, key, "REVOKED", started) for s in subjects))
                revoked.append(max(times))
                slowest_revoke.append([round(t * 1000, 1) for t in times])
        await nc.close()

    def ms(values: list[float], q: float) -> float:
        return round(common.percentile(values, q) * 1000, 1)

    return {
        "replicas": replicas,
        "samples": samples,
        "create_p50_ms": ms(created, 0.5),
        "create_p99_ms": ms(created, 0.99),
        "revoke_p50_ms": ms(revoked, 0.5),
        "revoke_p99_ms": ms(revoked, 0.99),
        "poll_rtt_p50_ms": ms(rtt, 0.5),
        # The slowest samples, per replica (ms): which replica, and how often.
        "slowest_create_ms": sorted(slowest_create, key=max)[-3:],
        "slowest_revoke_ms": sorted(slowest_revoke, key=max)[-3:],
    }


def run(workdir: Path, *, samples: int) -> dict[str, Any]:
    out = {}
    for replicas in (1, 3):
        sub = workdir / f"propagation-{replicas}"
        sub.mkdir()
        out[f"v{replicas}"] = asyncio.run(measure(sub, replicas, samples))
    return out


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
        print(json.dumps(run(Path(tmp), samples=20), indent=1))
