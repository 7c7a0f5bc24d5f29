"""Figure 7: the issuer through its API, on SQLite and on PostgreSQL.

- key creations per second: wrk POSTs `/v2/keys` (4 connections) at the issuer process, which commits
  the key and its outbox row and relays the event to JetStream as it goes. The ceiling is the same
  server answering `/healthz` (the framework and server alone) under the same wrk.
- list latency with 100,000 keys in the account: the catalog is filled in bulk with copies of a real
  key (SQL, not the API: 100,000 creations would take minutes), then `GET /v2/keys` (first page of 20,
  and `?status=active&environment=prod&limit=100`) is timed sequentially, p50 and p99.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from . import common
from .http_bench import wrk_binary
from .hydrate import _pg_database
from .stack import Stack

HERE = Path(__file__).parent
LIST_KEYS = 100_000


def _wrk(url: str, script: str | None, seconds: float, connections: int, admin_key: str) -> dict[str, Any]:
    command = [wrk_binary(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    command += ["-s", str(HERE / (script or "wrk_create.lua"))]
    env = {**os.environ, "CNX_BENCH_ADMIN_KEY": admin_key}
    if script is None:  # healthz: the create script's reporting, a GET
        command[-1] = str(HERE / "wrk_get.lua")
    out = subprocess.run([*command, url], capture_output=True, env=env, check=True, timeout=seconds + 60)
    line = [item for item in out.stdout.decode().splitlines() if item.startswith("{")][-1]
    result: dict[str, Any] = orjson.loads(line)
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    return result


def _fill_sql(columns: list[str], dialect: str) -> str:
    """INSERT ... SELECT: LIST_KEYS copies of one key, with their own id and digest."""
    if dialect == "sqlite":
        number, series = (
            "printf('%024d', g.x)",
            "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c ",
        )
        series += f"WHERE x < {LIST_KEYS}) SELECT x FROM c) AS g"
    else:
        number, series = "lpad(g.x::text, 24, '0')", f"generate_series(1, {LIST_KEYS}) AS g(x)"
    values = []
    for column in columns:
        if column == "id":
            values.append(f"'key_' || {number}")
        elif column == "digest":
            values.append(f"'bench' || {number}")
        else:
            values.append(f"k.{column}" if dialect == "sqlite" else f'k."{column}"')
    quoted = ", ".join(columns if dialect == "sqlite" else [f'"{c}"' for c in columns])
    return (
        f"INSERT INTO issuer_keys ({quoted}) SELECT {', '.join(values)} FROM issuer_keys AS k, {series} "
        "WHERE k.id = :template"
    )


async def _fill(stack: Stack, template_id: str) -> None:
    url = stack.issuer_database_url
    if url is None:
        db = sqlite3.connect(stack.workdir / "issuer.db")
        columns = [row[1] for row in db.execute("PRAGMA table_info(issuer_keys)") if row[1] != "seq"]
        db.execute(_fill_sql(columns, "sqlite"), {"template": template_id})
        db.commit()
        db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'issuer_keys'"
        )
        columns = [r[0] for r in rows if r[0] != "seq"]
        await conn.execute(_fill_sql(columns, "postgresql").replace(":template", "$1"), template_id)
        await conn.execute("ANALYZE issuer_keys")
    finally:
        await conn.close()


async def measure(workdir: Path, *, database_url: str | None, seconds: float) -> dict[str, Any]:
    async with Stack(workdir, validators=0, issuer_database_url=database_url) as stack:
        base = f"http://127.0.0.1:{stack.issuer_port}"
        health = await asyncio.to_thread(_wrk, f"{base}/healthz", None, seconds, 4, stack.admin_key)
        create = await asyncio.to_thread(
            _wrk, f"{base}/v2/keys", "wrk_create.lua", seconds, 4, stack.admin_key
        )
        async with stack.api() as api:
            response = await api.post(
                "/v2/keys", json={"name": "template", "environment": "prod", "scopes": ["compute:read"]}
            )
            response.raise_for_status()
            await _fill(stack, response.json()["id"])
            latency: dict[str, float] = {}
            for name, path in (
                ("list_first_page", "/v2/keys"),
                ("list_filtered_100", "/v2/keys?status=active&environment=prod&limit=100"),
                ("healthz", "/healthz"),
            ):
                times = []
                for _ in range(60):
                    started = time.perf_counter()
                    (await api.get(path)).raise_for_status()
                    times.append(time.perf_counter() - started)
                latency[f"{name}_p50_ms"] = round(common.percentile(times, 0.5) * 1000, 1)
                latency[f"{name}_p99_ms"] = round(common.percentile(times, 0.99) * 1000, 1)
            count = (await api.get("/v2/keys?limit=1")).json()
    return {
        "create_per_s": create["rps"],
        "create_p99_ms": round(create["p99_us"] / 1000, 1),
        "create_errors": create["non2xx"] + create["socket_errors"],
        "healthz_per_s": health["rps"],
        "keys_in_account": LIST_KEYS + create["requests"] + 1,
        "listed": bool(count["data"]),
    } | latency


def run(workdir: Path, *, seconds: float, postgres: bool = True) -> dict[str, Any]:
    sqlite_dir = workdir / "issuer-sqlite"
    sqlite_dir.mkdir()
    results: dict[str, Any] = {"sqlite": asyncio.run(measure(sqlite_dir, database_url=None, seconds=seconds))}
    if postgres:
        name = f"cnx_bench_{uuid.uuid4().hex[:8]}"
        try:
            asyncio.run(_pg_database("create", name))
        except Exception as exc:
            results["postgresql"] = {"error": f"{type(exc).__name__}: {exc}"}
            return results
        try:
            pg_dir = workdir / "issuer-pg"
            pg_dir.mkdir()
            url = f"postgresql://postgres@127.0.0.1:5432/{name}"
            results["postgresql"] = asyncio.run(measure(pg_dir, database_url=url, seconds=seconds))
        finally:
            asyncio.run(_pg_database("drop", name))
    return results


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
        print(json.dumps(run(Path(tmp), seconds=5), indent=1))
