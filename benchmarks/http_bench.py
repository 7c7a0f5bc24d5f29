"""Figure 2: HTTP forward-auth `GET /v2/auth/verify` against a bare ASGI app that answers 200.

Both under uvicorn with uvloop and httptools (the validator in its own bounded server, shared/httpserver.py;
the bare app in stock uvicorn, so the ratio includes what the bounds cost), driven by the same wrk (Debian's
package) with the same Lua script and request mix (Bearer, `?scope=` on the auth URL, X-Forwarded-For from a
trusted proxy), in alternating rounds; the median round of each is kept. With two cores the server is
pinned to CPU 1 and wrk (one thread) to CPU 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from shared.natsserver import free_port

from . import common, profiling
from .nats_bench import _median, start, stop

HERE = Path(__file__).parent


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("the HTTP figure needs wrk (apt-get install wrk)")
    return binary


def drive(
    port: int, requests: Path, connections: int, seconds: float, server_pid: int, cpus: set[int] | None
) -> dict[str, Any]:
    command = [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "-s",
        str(HERE / "wrk_verify.lua"),
        f"http://127.0.0.1:{port}/v2/auth/verify",
    ]
    env = {**os.environ, "CNX_BENCH_REQUESTS": str(requests)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    if cpus:
        common.pin(process.pid, cpus)
    time.sleep(0.3)
    meter = common.CpuMeter({"server": server_pid, "wrk": process.pid})
    time.sleep(max(0.0, seconds - 0.6))
    shares = meter.shares()
    out, _ = process.communicate(timeout=seconds + 30)
    line = [item for item in out.decode().splitlines() if item.startswith("{")][-1]
    result: dict[str, Any] = orjson.loads(line)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu"] = shares
    return result


def run(
    workdir: Path,
    *,
    keys: int,
    seconds: float,
    rounds: int,
    connections: int = 16,
    pin: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    two_cores = pin and common.cores() >= 2
    server_cpus = {1} if two_cores else None
    client_cpus = {0} if two_cores else None
    wrk_binary()
    known = [(view, token) for view, token in common.key_dicts(common.KNOWN) if token]
    items = common.requests(known, 50_000)
    requests = workdir / "requests.tsv"
    requests.write_text("".join(f"{r['key']}\t{r['scope']}\t{r['ip']}\n" for r in items))
    bare_port, validator_port = free_port(), free_port()
    processes = []
    try:
        bare = start(["http-bare", str(bare_port)], server_cpus)
        processes.append(bare)
        validator = start(["http-validator", str(validator_port), str(keys)], server_cpus)
        processes.append(validator)
        rows: dict[str, list[dict[str, Any]]] = {"bare": [], "validator": []}
        for _ in range(rounds):
            for name, process, port in (("bare", bare, bare_port), ("validator", validator, validator_port)):
                rows[name].append(drive(port, requests, connections, seconds, process.pid, client_cpus))
        results = {"keys": keys, "connections": connections, "pinned": two_cores} | {
            name: _median(runs) for name, runs in rows.items()
        }
        if profile:
            spy_out = workdir / "validator.spy.txt"
            spy = profiling.start(validator.pid, seconds, spy_out)
            drive(validator_port, requests, connections, seconds + 1, validator.pid, client_cpus)
            if spy is not None:
                spy.wait(30)
            results["profile"] = profiling.summarize(spy_out)
        return results
    finally:
        for process in processes:
            stop(process)


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
        print(
            json.dumps(
                run(Path(tmp), keys=int(os.environ.get("KEYS", "100000")), seconds=4, rounds=1), indent=1
            )
        )
