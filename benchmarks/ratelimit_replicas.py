"""How well one key's rate limit holds across validator replicas: N validators (separate processes, one
`validators` queue group), M client processes hammering one key over NATS for a while, then the count
of admitted requests against what the bucket allows (burst + rate x elapsed).

    python -m benchmarks.ratelimit_replicas                       # 3 replicas, 3 clients, 60 s, professional
    python -m benchmarks.ratelimit_replicas --seconds 10 --plan starter --replicas 2

Starts its own nats-server (the wheel's) and issuer in a temporary directory; nothing fixed-port.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats

from services.issuer.app import create_app as create_issuer
from shared.client import ValidationClient
from shared.events import PLAN_LIMITS
from shared.natsserver import EmbeddedNats, free_port
from shared.settings import Settings


async def _hammer(url: str, key: str, seconds: float, concurrency: int) -> dict[str, int]:
    codes: Counter[str] = Counter()
    conn = await nats.connect(url)
    client = ValidationClient(conn, timeout=5.0)
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                codes[str((await client.validate(key, scope="compute:read")).code)] += 1
            except Exception as exc:  # a timeout is a result too
                codes[type(exc).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await conn.drain()
    return dict(codes)


def client_process(args: tuple[str, str, float, int]) -> dict[str, int]:
    return asyncio.run(_hammer(*args))


async def wait_known(url: str, key: str, replicas: int) -> None:
    """Until every replica answers for the key (SCOPE_DENIED takes no token; NOT_FOUND means not yet)."""
    conn = await nats.connect(url)
    client = ValidationClient(conn)
    deadline = time.monotonic() + 30
    streak = 0
    try:
        while streak < 30 * replicas:
            assert time.monotonic() < deadline, "the validators did not learn the key in time"
            code = (await client.validate(key, scope="admin:admin")).code
            streak = streak + 1 if code == "SCOPE_DENIED" else 0
            if not streak:
                await asyncio.sleep(0.05)
    finally:
        await conn.drain()


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cnx-rl-") as tmp_dir:
        tmp = Path(tmp_dir)
        server = EmbeddedNats(tmp / "nats").start()
        validators: list[subprocess.Popen[bytes]] = []
        try:
            settings = Settings(nats_url=server.url, data_dir=tmp, bootstrap_admin_key_file=tmp / "admin-key")
            issuer = create_issuer(settings)
            async with (
                issuer.router.lifespan_context(issuer),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=issuer), base_url="http://issuer"
                ) as http,
            ):
                admin = (tmp / "admin-key").read_text().strip()
                ports = []
                for i in range(opts.replicas):
                    port = free_port()
                    ports.append(port)
                    env = {
                        **os.environ,
                        "CNX_NATS_URL": server.url,
                        "CNX_INSTANCE_ID": f"bench-v{i}",
                        "CNX_DATA_DIR": str(tmp),
                        "CNX_VALIDATOR_PORT": str(port),
                        "CNX_LOG_LEVEL": "WARNING",
                    }
                    command = [sys.executable, "-m", "services.validator"]
                    validators.append(subprocess.Popen(command, env=env))  # noqa: ASYNC220 (start-up only)
                async with httpx.AsyncClient() as probe:
                    deadline = time.monotonic() + 60
                    for port in ports:
                        while True:
                            assert time.monotonic() < deadline, "validators did not get ready"
                            try:
                                metrics = (await probe.get(f"http://127.0.0.1:{port}/metrics")).text
                                if f"cnx_validator_replicas {float(opts.replicas)}" in metrics:
                                    break
                            except httpx.HTTPError:
                                pass
                            await asyncio.sleep(0.1)
                response = await http.post(
                    "/v2/keys",
                    headers={"Authorization": f"Bearer {admin}"},
                    json={
                        "name": "bench",
                        "environment": "prod",
                        "scopes": ["compute:read"],
                        "plan": opts.plan,
                    },
                )
                response.raise_for_status()
                key = response.json()["key"]
                await wait_known(server.url, key, opts.replicas)
                started = time.monotonic()
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(opts.clients) as pool:
                    results = pool.map(
                        client_process, [(server.url, key, opts.seconds, opts.concurrency)] * opts.clients
                    )
                elapsed = time.monotonic() - started
        finally:
            for process in validators:
                process.terminate()
            for process in validators:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
            server.stop()
    total: Counter[str] = Counter()
    for result in results:
        total.update(result)
    limit = PLAN_LIMITS[opts.plan]
    # Clients start a little apart; the hammering lasts `seconds` for each, elapsed bounds it from above.
    expected = (limit.burst or limit.requests_per_minute) + limit.requests_per_minute * opts.seconds / 60
    admitted = total.get("VALID", 0)
    return {
        "replicas": opts.replicas,
        "clients": opts.clients,
        "plan": opts.plan,
        "seconds": opts.seconds,
        "elapsed_s": round(elapsed, 2),
        "answers": sum(total.values()),
        "by_code": dict(total),
        "admitted": admitted,
        "expected": round(expected),
        "error_pct": round(100 * (admitted - expected) / expected, 2),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight per client")
    parser.add_argument("--plan", choices=sorted(PLAN_LIMITS), default="professional")
    result = asyncio.run(run(parser.parse_args()))
    for name, value in result.items():
        print(f"{name:>10}: {value}")


if __name__ == "__main__":
    main()
