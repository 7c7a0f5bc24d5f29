"""Figure 5b: read-your-writes. Is a key refused when it is used the instant its 201 returns, and what
does making sure it is not cost?

The issuer and 1 (then 3) validators run as processes (benchmarks/stack.py), with read-your-writes on
(the defaults) and off (`CNX_READ_YOUR_WRITES_WAIT=0`, `CNX_READ_YOUR_WRITES_PUBLISH_WAIT=0`: the
behaviour before it). For each configuration:
- `creations` create-then-use-at-once: a key is created over HTTP and, the moment the 201 arrives, used
  over NATS (`keys.validate`, whichever replica the queue group picks) and over HTTP forward-auth (each
  replica in turn) at once; every answer that is not VALID is a refusal. Create latency p50/p99 is the
  issuer's answer time of those creations.
- NOT_FOUND latency of unknown well-formed tokens, one at a time, over NATS and over HTTP.
- A flood of forged well-formed tokens over NATS (`flood` requests, 256 in flight): its rate, the
  NOT_FOUND p99 under it, and how many JetStream API requests the server counted meanwhile (`/jsz`).
The failed-auth throttle is off (`CNX_FAILED_AUTH_PER_MINUTE=0`), so a refusal is never a 429 caused by
an earlier one, and forged tokens from one address are not cut short by it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson

from shared import tokens
from shared.events import SUBJECT_VALIDATE

from . import common
from .stack import Stack

OFF = {"CNX_READ_YOUR_WRITES_WAIT": "0", "CNX_READ_YOUR_WRITES_PUBLISH_WAIT": "0"}
COMMON_ENV = {"CNX_FAILED_AUTH_PER_MINUTE": "0", "CNX_ROUTE_SCOPES": "GET /v2/instances=compute:read"}
FORWARD_AUTH = {"X-Original-URL": "http://api.bench/v2/instances", "X-Original-Method": "GET"}
KEY_BODY = {
    "name": "read-your-writes",
    "environment": "prod",
    "scopes": ["compute:read"],
    "plan": "enterprise",
    "rate_limit": {"requests_per_minute": 6_000_000, "burst": None},
}
WARM_UP = 5
IN_FLIGHT = 256


def _ms(values: list[float], q: float) -> float:
    return round(common.percentile(values, q) * 1000, 2)


async def _api_requests(stack: Stack) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{stack.nats.monitor_url}/jsz")).json()["api"]["total"])


async def measure(workdir: Path, replicas: int, on: bool, creations: int, flood: int) -> dict[str, Any]:
    env = COMMON_ENV | ({} if on else OFF)
    async with Stack(workdir, validators=replicas, extra_env=env, monitor=True) as stack:
        nc = await nats.connect(stack.nats.url)
        validators = [
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
            for port in stack.validator_ports
        ]
        create_s: list[float] = []
        refused: dict[str, int] = {}
        try:
            async with stack.api() as api:
                for n in range(-WARM_UP, creations):
                    started = time.perf_counter()
                    response = await api.post("/v2/keys", json=KEY_BODY)
                    took = time.perf_counter() - started
                    response.raise_for_status()
                    secret = response.json()["key"]
                    ask = nc.request(
                        SUBJECT_VALIDATE, orjson.dumps({"key": secret, "scope": "compute:read"}), timeout=5
                    )
                    verify = validators[n % replicas].get(
                        "/v2/auth/verify", headers={"Authorization": f"Bearer {secret}", **FORWARD_AUTH}
                    )
                    answer, http_answer = await asyncio.gather(ask, verify)
                    if n < 0:
                        continue
                    create_s.append(took)
                    for transport, code in (
                        ("nats", orjson.loads(answer.data)["code"]),
                        ("http", http_answer.headers.get("x-cnx-code", str(http_answer.status_code))),
                    ):
                        if code != "VALID":
                            refused[f"{transport} {code}"] = refused.get(f"{transport} {code}", 0) + 1

            # Unknown well-formed tokens, one at a time.
            nats_nf: list[float] = []
            http_nf: list[float] = []
            for n in range(300):
                body = orjson.dumps({"key": tokens.generate("prod")})
                started = time.perf_counter()
                await nc.request(SUBJECT_VALIDATE, body, timeout=5)
                nats_nf.append(time.perf_counter() - started)
                headers = {"Authorization": f"Bearer {tokens.generate('prod')}", **FORWARD_AUTH}
                started = time.perf_counter()
                await validators[n % replicas].get("/v2/auth/verify", headers=headers)
                http_nf.append(time.perf_counter() - started)

            # A flood of forged tokens over NATS.
            forged = [orjson.dumps({"key": tokens.generate("prod")}) for _ in range(flood)]
            flood_s: list[float] = []
            codes: dict[str, int] = {}
            window = asyncio.Semaphore(IN_FLIGHT)

            async def one(body: bytes) -> None:
                async with window:
                    started = time.perf_counter()
                    answer = await nc.request(SUBJECT_VALIDATE, body, timeout=10)
                    flood_s.append(time.perf_counter() - started)
                    code = orjson.loads(answer.data)["code"]
                    codes[code] = codes.get(code, 0) + 1

            api_before = await _api_requests(stack)
            started = time.perf_counter()
            await asyncio.gather(*(one(body) for body in forged))
            flood_took = time.perf_counter() - started
            api_during = await _api_requests(stack) - api_before
        finally:
            await nc.close()
            for client in validators:
                await client.aclose()
    return {
        "replicas": replicas,
        "read_your_writes": on,
        "creations": creations,
        "refused": sum(refused.values()),
        "refused_by_code": refused,
        "create_p50_ms": _ms(create_s, 0.5),
        "create_p99_ms": _ms(create_s, 0.99),
        "not_found_nats_p50_ms": _ms(nats_nf, 0.5),
        "not_found_nats_p99_ms": _ms(nats_nf, 0.99),
        "not_found_http_p50_ms": _ms(http_nf, 0.5),
        "not_found_http_p99_ms": _ms(http_nf, 0.99),
        "flood_requests": flood,
        "flood_per_s": round(flood / flood_took),
        "flood_p50_ms": _ms(flood_s, 0.5),
        "flood_p99_ms": _ms(flood_s, 0.99),
        "flood_codes": codes,
        "flood_jetstream_api_requests": api_during,
    }


def run(workdir: Path, *, creations: int = 1000, flood: int = 20_000) -> dict[str, Any]:
    out = {}
    for replicas in (1, 3):
        for on in (False, True):
            name = f"v{replicas}_{'on' if on else 'off'}"
            sub = workdir / f"ryw-{name}"
            sub.mkdir()
            out[name] = asyncio.run(measure(sub, replicas, on, creations, flood))
    return out


if __name__ == "__main__":
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--creations", type=int, default=1000)
    parser.add_argument("--flood", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
        print(json.dumps(run(Path(tmp), creations=args.creations, flood=args.flood), indent=1))
