"""Figure 4: the validator's memory per key and its hydration time, 1,000,000 keys, SQLite and PostgreSQL.

The validator's store (`validator_keys`: key id, revision, the view as JSON) is filled in bulk with
the benchmark's key set, then a fresh process imports the validator, takes its RSS (the interpreter
with the service's modules: the baseline), runs `ValidatorService.hydrate()` against the store,
collects garbage and takes its RSS again: (after - baseline) / keys is the cost of a key. The ceiling
for hydration is reading the same rows from the same store in the same process without decoding
them (`SELECT view`): what the store itself costs.

Retention (issue 16, "memory bounded by live keys"): `retention LIVE DEAD` fills one SQLite store
with LIVE keys (the benchmark's set) and another with the same plus DEAD keys revoked or expired
longer ago than CNX_PROJECTION_RETENTION, and measures both the same way, plus the start's prune
(which deletes the dead rows from the store, batch by batch, while the replica already answers).
The dead keys must cost nothing: the same RSS per live key, the same hydration time. Then, in the
same process, the in-memory prune: DEAD keys that die while the replica runs (hydrated within their
retention, then the clock moves past it), so its RSS and the time the prune took.

    python -m benchmarks.hydrate measure URL     (what the figure runs in the fresh process)
    python -m benchmarks.hydrate retention 1000000 4000000
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from . import common

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


DAY = 86400.0


def _end(view: dict[str, Any], at: float) -> float | None:
    """The `ends_at` the validator's store keeps beside a view (None: never)."""
    from services.validator.projection import INF, ends_at

    def stamp(value: str | None) -> float:
        return INF if value is None else datetime.fromisoformat(value).timestamp()

    grace = view.get("grace_until")
    end = ends_at(view["status"], stamp(view.get("expires_at")), None if grace is None else stamp(grace), at)
    return None if end == INF else end


def dead_key_dicts(count: int, *, ended_days_ago: float) -> Iterator[tuple[dict[str, Any], float]]:
    """`count` keys that ended `ended_days_ago` days ago: half revoked then (with the revocation time),
    half expired then with no KeyExpired ever seen (status still active). Same shape as the live set."""
    ended = common.NOW - timedelta(days=ended_days_ago)
    created = (ended - timedelta(days=30)).isoformat().replace("+00:00", "Z")
    rng = random.Random(common.SEED + 1)
    for i in range(count):
        revoked = i % 2 == 0
        view = {
            "key_id": f"key_d{i:023d}",
            "account_id": f"acct_{i % common.ACCOUNTS:06d}",
            "prefix": "cnx_prod_xxxx",
            "digest": rng.randbytes(32).hex(),
            "name": f"dead key {i}",
            "environment": "prod",
            "scopes": common.SCOPE_SETS[i % len(common.SCOPE_SETS)],
            "plan": "professional",
            "rate_limit": None,
            "ip_allowlist": [],
            "status": "revoked" if revoked else "active",
            "created_at": created,
            "expires_at": (ended + timedelta(days=60) if revoked else ended)
            .isoformat()
            .replace("+00:00", "Z"),
            "grace_until": None,
            "auto_renew": False,
            "lifetime_days": 90,
            "notify_sealed": None,
            "revision": 2 if revoked else 1,
            "suspended": False,
        }
        yield view, ended.timestamp()


def _rows(keys: int, dead: int, ended_days_ago: float) -> Iterator[tuple[str, int, str, float | None]]:
    now = common.NOW.timestamp()
    for view, _ in common.key_dicts(keys):
        # The set's revoked keys count as revoked now (within the retention).
        yield view["key_id"], view["revision"], orjson.dumps(view).decode(), _end(view, now)
    for view, at in dead_key_dicts(dead, ended_days_ago=ended_days_ago):
        yield view["key_id"], view["revision"], orjson.dumps(view).decode(), _end(view, at)


async def fill(url: str, keys: int, dead: int = 0, ended_days_ago: float = 30.0) -> None:
    """Create the validator's tables at `url` and put `keys` views in them, in bulk, then `dead` keys
    that ended `ended_days_ago` days ago."""
    from services.validator.store import ValidatorStore
    from shared.db import create_engine

    store = ValidatorStore(create_engine(url))
    await store.prepare_schema()
    await store.close()
    rows = _rows(keys, dead, ended_days_ago)
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.split(":///", 1)[1])
        db.executemany(
            "INSERT INTO validator_keys (key_id, revision, view, ends_at) VALUES (?, ?, ?, ?)", rows
        )
        db.commit()
        db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        columns = ["key_id", "revision", "view", "ends_at"]
        batch: list[tuple[str, int, str, float | None]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 100_000:
                await conn.copy_records_to_table("validator_keys", records=batch, columns=columns)
                batch = []
        if batch:
            await conn.copy_records_to_table("validator_keys", records=batch, columns=columns)
        await conn.execute("ANALYZE validator_keys")
    finally:
        await conn.close()


async def measure(url: str, prune_after_days: float = 0.0) -> dict[str, Any]:
    """In a fresh process: RSS before and after hydration, hydration time, and the raw read's time;
    then the prune a replica runs at start (memory, then the store's rows past the retention) and the
    RSS after it. The service's clock is the key set's NOW at hydration, `prune_after_days` later at
    the prune (keys that die while the replica runs)."""
    from services.validator.service import ValidatorService
    from services.validator.store import ValidatorStore
    from shared.db import create_engine

    clock = [common.NOW.timestamp()]
    store = ValidatorStore(create_engine(url))
    service = ValidatorService(store, peppers=[common.PEPPER], clock=lambda: clock[0])
    await store.ping()  # the connection pool and driver are part of the baseline, not of the keys
    gc.collect()
    baseline = common.rss_bytes()
    started = time.perf_counter()
    count = await service.hydrate()
    hydrate_s = time.perf_counter() - started
    gc.collect()
    after = common.rss_bytes()
    slots = service.projection.slots
    clock[0] += prune_after_days * DAY
    started = time.perf_counter()
    pruned = await service.prune()
    prune_s = time.perf_counter() - started
    gc.collect()
    after_prune = common.rss_bytes()
    # The store's own cost: the rows hydration read (those within the retention), not decoded.
    started = time.perf_counter()
    raw = 0
    async for batch in store.stream_views(cutoff=common.NOW.timestamp() - service.retention):
        raw += len(batch)
    raw_s = time.perf_counter() - started
    await store.close()
    return {
        "keys": count,
        "slots": slots,
        "baseline_rss_mb": round(baseline / 1e6, 1),
        "rss_mb": round(after / 1e6, 1),
        "bytes_per_key": round((after - baseline) / max(count, 1)),
        "hydrate_s": round(hydrate_s, 2),
        "raw_read_s": round(raw_s, 2),
        "raw_rows": raw,
        "pruned_in_memory": pruned,
        "prune_s": round(prune_s, 2),
        "keys_after_prune": len(service.projection),
        "rss_after_prune_mb": round(after_prune / 1e6, 1),
        "bytes_per_live_key_after_prune": round((after_prune - baseline) / max(len(service.projection), 1)),
    }


def bare_interpreter_rss() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "from benchmarks.common import rss_bytes; print(rss_bytes())"],
        capture_output=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return int(out.stdout)


def measure_in_fresh_process(url: str, prune_after_days: float = 0.0) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.hydrate", "measure", url, str(prune_after_days)],
        capture_output=True,
        check=True,
        cwd=Path(__file__).parent.parent,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


async def _pg_database(action: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        if action == "create":
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run(workdir: Path, *, keys: int, postgres: bool = True) -> dict[str, Any]:
    results: dict[str, Any] = {"bare_interpreter_rss_mb": round(bare_interpreter_rss() / 1e6, 1)}
    sqlite_url = f"sqlite+aiosqlite:///{workdir / 'validator-bench.db'}"
    started = time.perf_counter()
    asyncio.run(fill(sqlite_url, keys))
    results["sqlite"] = measure_in_fresh_process(sqlite_url) | {
        "fill_s": round(time.perf_counter() - started, 1)
    }
    if postgres:
        name = f"cnx_bench_{uuid.uuid4().hex[:8]}"
        try:
            asyncio.run(_pg_database("create", name))
        except Exception as exc:  # no server here: say so in the table rather than fail the suite
            results["postgresql"] = {"error": f"{type(exc).__name__}: {exc}"}
            return results
        try:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
            started = time.perf_counter()
            asyncio.run(fill(url, keys))
            results["postgresql"] = measure_in_fresh_process(url) | {
                "fill_s": round(time.perf_counter() - started, 1)
            }
        finally:
            asyncio.run(_pg_database("drop", name))
    return results


def retention(workdir: Path, *, live: int, dead: int) -> dict[str, Any]:
    """`live` keys alone; the same plus `dead` keys past the retention (ended 30 days ago); the same
    plus `dead` keys that die while the replica runs (ended 1 day before NOW, so hydrated, then the
    clock moved 7 days on and pruned; the live set's own revoked and expired keys go too). SQLite,
    each in a fresh process."""
    results: dict[str, Any] = {}
    for name, dead_keys, ended_days_ago, prune_after_days in (
        ("live_only", 0, 30.0, 0.0),
        ("plus_dead_past_retention", dead, 30.0, 0.0),
        ("plus_dead_pruned_while_running", dead, 1.0, 7.0),
    ):
        url = f"sqlite+aiosqlite:///{workdir / f'{name}.db'}"
        started = time.perf_counter()
        asyncio.run(fill(url, live, dead_keys, ended_days_ago))
        fill_s = round(time.perf_counter() - started, 1)
        figures = measure_in_fresh_process(url, prune_after_days)
        results[name] = figures | {"fill_s": fill_s, "dead_keys": dead_keys}
        (workdir / f"{name}.db").unlink()
    return results


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "measure":
        prune_after_days = float(sys.argv[3]) if len(sys.argv) == 4 else 0.0
        print(json.dumps(asyncio.run(measure(sys.argv[2], prune_after_days))))
    elif len(sys.argv) == 4 and sys.argv[1] == "retention":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
            figures = retention(Path(tmp), live=int(sys.argv[2]), dead=int(sys.argv[3]))
            print(json.dumps(figures, indent=1))
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
            print(
                json.dumps(run(Path(tmp), keys=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=1)
            )
