"""Where a benchmarked process spends its time: py-spy samples (`--profile`), summed by who runs them.

Each sample's innermost frame is put in one bucket: the validator's lean NATS connection (frame
parsing and reply writing, services/validator/natswire.py), the validator's own code (services/validator,
shared), nats-py (parsing, Msg objects, its subscription queue, publish), the event loop (asyncio,
uvloop: waiting or dispatching), the HTTP server (uvicorn, httptools), or other (orjson, hashlib and
the interpreter's own frames). py-spy comes from PyPI (`pip install py-spy`); without it the profile
is skipped with a note.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BUCKETS = (
    ("lean NATS connection", ("services/validator/natswire",)),
    ("validator", ("services/validator", "shared/")),
    ("nats-py", ("nats/",)),
    ("http server", ("uvicorn/", "httptools", "h11")),
    ("event loop", ("asyncio/", "uvloop")),
)


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    binary = py_spy()
    if binary is None:
        return None
    command = [binary, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "250"]
    return subprocess.Popen(
        [*command, "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Self time by bucket, and the heaviest frames (self and inclusive), in % of samples."""
    if not raw.exists():
        return {"error": "no samples (py-spy missing or not permitted here)"}
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        for bucket, needles in BUCKETS:
            if any(needle in frames[-1] for needle in needles):
                buckets[bucket] += n
                break
        else:
            buckets["other (orjson, hashlib, interpreter)"] += n

    def pct(counter: collections.Counter[str]) -> dict[str, float]:
        return {name: round(100 * n / total, 1) for name, n in counter.most_common(top)}

    return {
        "samples": total,
        "self_by_bucket_pct": pct(buckets),
        "self_pct": pct(own),
        "inclusive_pct": pct(inclusive),
    }
