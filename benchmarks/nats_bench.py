"""Figure 1: `keys.validate` over NATS against a bare nats-py responder that echoes the payload.

Both run at once on one nats-server (different subjects), each as its own process under uvloop; the
same C load generator (`natsload.c`, built here with gcc) drives one, then the other, in alternating
rounds at each concurrency, so a noisy neighbour hits both alike; the median round of each is kept.
With two or more cores the responder under test is pinned to CPU 1, nats-server and the load
generator to CPU 0, and the CPU share of each is recorded: the load generator is not the bottleneck
when it drives the bare responder well above the validator's rate with CPU to spare.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from shared.natsserver import EmbeddedNats

from . import common, profiling

ECHO_SUBJECT = "bench.echo"
VALIDATE_SUBJECT = "keys.validate"
HERE = Path(__file__).parent


def build_loadgen(workdir: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the NATS figure needs gcc (or cc) to build its load generator")
    binary = workdir / "natsload"
    subprocess.run([gcc, "-O2", "-o", str(binary), str(HERE / "natsload.c")], check=True)
    return binary


def start(args: list[str], cpus: set[int] | None, timeout: float = 300) -> subprocess.Popen[bytes]:
    """A responder process, ready to take requests (it prints `ready`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.responder", *args], stdout=subprocess.PIPE, cwd=HERE.parent
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = process.stdout.readline()
    if line.strip() != b"ready" or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"responder {args[0]} did not start: {line!r}")
    if cpus:
        common.pin(process.pid, cpus)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def drive(
    loadgen: Path,
    port: int,
    subject: str,
    payloads: Path,
    concurrency: int,
    seconds: float,
    meter_pids: dict[str, int],
    cpus: set[int] | None,
) -> dict[str, Any]:
    command = [
        str(loadgen),
        "127.0.0.1",
        str(port),
        subject,
        str(payloads),
        str(concurrency),
        "0.5",
        str(seconds),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    if cpus:
        common.pin(process.pid, cpus)
    time.sleep(0.5)  # the warm-up, not measured
    meter = common.CpuMeter({**meter_pids, "loadgen": process.pid})
    time.sleep(max(0.0, seconds - 0.2))
    shares = meter.shares()
    out, _ = process.communicate(timeout=seconds + 30)
    result: dict[str, Any] = orjson.loads(out)
    result["cpu"] = shares
    return result


def run(
    workdir: Path,
    *,
    keys: int,
    seconds: float,
    rounds: int,
    concurrencies: tuple[int, ...],
    pin: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    two_cores = pin and common.cores() >= 2
    responder_cpus = {1} if two_cores else None
    infra_cpus = {0} if two_cores else None
    loadgen = build_loadgen(workdir)
    known = [(view, token) for view, token in common.key_dicts(common.KNOWN) if token]
    payloads = common.write_requests(workdir / "requests.jsonl", common.requests(known, 200_000))
    server = EmbeddedNats(workdir / "nats").start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if infra_cpus and server.pid:
            common.pin(server.pid, infra_cpus)
        echo = start(["nats-echo", server.url, ECHO_SUBJECT], responder_cpus)
        processes.append(echo)
        validator = start(["nats-validator", server.url, str(keys)], responder_cpus)
        processes.append(validator)
        validator_rss = common.rss_bytes(validator.pid)
        assert server.pid is not None
        results: dict[str, Any] = {
            "keys": keys,
            "pinned": two_cores,
            "validator_rss_mb": round(validator_rss / 1e6),
        }
        for concurrency in concurrencies:
            rows: dict[str, list[dict[str, Any]]] = {"bare": [], "validator": []}
            for _ in range(rounds):
                for name, process, subject in (
                    ("bare", echo, ECHO_SUBJECT),
                    ("validator", validator, VALIDATE_SUBJECT),
                ):
                    pids = {"responder": process.pid, "nats-server": server.pid}
                    rows[name].append(
                        drive(loadgen, server.port, subject, payloads, concurrency, seconds, pids, infra_cpus)
                    )
            results[f"c{concurrency}"] = {name: _median(runs) for name, runs in rows.items()}
        if profile:
            # One more c64 run on the validator, with py-spy sampling it: where its time goes.
            spy_out = workdir / "validator.spy.txt"
            spy = profiling.start(validator.pid, seconds, spy_out)
            pids = {"responder": validator.pid, "nats-server": server.pid}
            drive(loadgen, server.port, VALIDATE_SUBJECT, payloads, 64, seconds + 1, pids, infra_cpus)
            if spy is not None:
                spy.wait(30)
            results["profile_c64"] = profiling.summarize(spy_out)
        return results
    finally:
        for process in processes:
            stop(process)
        server.stop()


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median rate, with every round's rate alongside."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    middle = dict(ordered[len(ordered) // 2])
    middle["rounds_rps"] = [round(r["rps"]) for r in runs]
    middle["rps_median"] = round(statistics.median(r["rps"] for r in runs))
    return middle


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cnx-bench-") as tmp:
        print(
            json.dumps(
                run(
                    Path(tmp),
                    keys=int(os.environ.get("KEYS", "100000")),
                    seconds=3,
                    rounds=1,
                    concurrencies=(1, 16, 64),
                ),
                indent=1,
            )
        )
