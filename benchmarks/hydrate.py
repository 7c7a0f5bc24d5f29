"""Figure 4: the validator's memory per key and its hydration time, 1,000,000 keys, SQLite and PostgreSQL.

The validator's store (`validator_keys`: key id, revision, the view as JSON) is filled in bulk with
the benchmark's key set, then a fresh process imports the validator, takes its RSS (the interpreter
with the service's modules: the baseline), runs `ValidatorService.hydrate()` against the store,
collects garbage and takes its RSS again: (after - baseline) / keys is the cost of a key. The ceiling
for hydration is reading the same rows from the same store in the same process without decoding
them (`SELECT view`): what the store itself costs.

    python -m benchmarks.hydrate measure URL     (what the figure runs in the fresh process)
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from . import common

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def fill(url: str, keys: int) -> None:
    """Create the validator's tables at `url` and put `keys` views in them, in bulk."""
    from services.validator.store import ValidatorStore
    from shared.db import create_engine

    store = ValidatorStore(create_engine(url))
    await store.prepare_schema()
    await store.close()
    rows = ((view["key_id"], 1, orjson.dumps(view).decode()) for view, _ in common.key_dicts(keys))
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.split(":///", 1)[1])
        db.executemany("INSERT INTO validator_keys (key_id, revision, view) VALUES (?, ?, ?)", rows)
        db.commit()
        db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        batch: list[tuple[str, int, str]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 100_000:
                await conn.copy_records_to_table(
                    "validator_keys", records=batch, columns=["key_id", "revision", "view"]
                )
                batch = []
        if batch:
            await conn.copy_records_to_table(
                "validator_keys", records=batch, columns=["key_id", "revision", "view"]
            )
        await conn.execute("ANALYZE validator_keys")
    finally:
        await conn.close()


async def measure(url: str) -> dict[str, Any]:
    """In a fresh process: RSS before and after hydration, hydration time, and the raw read's time."""
    from services.validator.service import ValidatorService
    from services.validator.store import ValidatorStore
    from shared.db import create_engine

    store = ValidatorStore(create_engine(url))
    service = ValidatorService(store, peppers=[common.PEPPER])
    await store.ping()  # the connection pool and driver are part of the baseline, not of the keys
    gc.collect()
    baseline = common.rss_bytes()
    started = time.perf_counter()
    count = await service.hydrate()
    hydrate_s = time.perf_counter() - started
    gc.collect()
    after = common.rss_bytes()
    started = time.perf_counter()
    raw = 0
    async for batch in store.stream_views():
        raw += len(batch)
    raw_s = time.perf_counter() - started
    await store.close()
    return {
        "keys": count,
        "baseline_rss_mb": round(baseline / 1e6, 1),
        "rss_mb": round(after / 1e6, 1),
        "bytes_per_key": round((after - baseline) / max(count, 1)),
        "hydrate_s": round(hydrate_s, 2),
        "raw_read_s": round(raw_s, 2),
        "raw_rows": raw,
    }


def bare_interpreter_rss() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "from benchmarks.common import rss_bytes; print(rss_bytes())"],
        capture_output=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return int(out.stdout)


def measure_in_fresh_process(url: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.hydrate", "measure", url],
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "measure":
        print(json.dumps(asyncio.run(measure(sys.argv[2]))))
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
            print(
                json.dumps(run(Path(tmp), keys=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=1)
            )
