"""What every benchmark shares: the synthetic key set, the request mix, percentiles, CPU and RSS probes.

The key set is deterministic (a fixed seed), so the benchmark's validator process and the process that
writes the request file agree on it without talking. Only the first `KNOWN` keys have real tokens (the
requests use them); the others have random digests: the projection cannot tell the difference, and a
million real tokens would cost a minute of HMACs to make.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shared import tokens

SEED = 20261130
PEPPER = b"bench-pepper-not-a-secret"
KNOWN = 20_000
# Starter keys every `rate-limited` request goes to: 100 tokens of burst, then one a second.
HOT_KEYS = 5
ACCOUNTS = 20_000
NOW = datetime.now(UTC).replace(microsecond=0)
SCOPE_SETS = (
    ["compute:read"],
    ["compute:read", "storage:write"],
    ["compute:write", "network:read"],
    ["storage:admin"],
    ["compute:admin", "storage:read", "network:read"],
    ["billing:read", "compute:read"],
)
# The share of each kind of request in the mix (DESIGN: valid, wrong scope, unknown, bad checksum,
# rate-limited).
MIX = (
    ("valid", 0.65),
    ("wrong_scope", 0.10),
    ("unknown", 0.10),
    ("bad_checksum", 0.10),
    ("rate_limited", 0.05),
)


def _token(rng: random.Random, environment: str) -> str:
    head = f"cnx_{environment}_" + "".join(rng.choices(tokens.ALPHABET, k=tokens.RANDOM_LEN))
    return head + tokens.checksum(head)


def key_dicts(count: int, *, now: datetime = NOW) -> Iterator[tuple[dict[str, Any], str | None]]:
    """`count` key views as the JSON-shaped dicts the validator's store holds, each with its token when
    it is one of the `KNOWN` first keys (None otherwise)."""
    rng = random.Random(SEED)
    stamp = now.isoformat().replace("+00:00", "Z")
    for i in range(count):
        environment = "prod" if i % 10 < 8 else ("stg" if i % 10 == 8 else "dev")
        token = _token(rng, environment) if i < KNOWN else None
        digest = tokens.digest(PEPPER, token) if token else rng.randbytes(32).hex()
        hot = i < HOT_KEYS
        plan = "starter" if hot or i % 3 == 0 else ("professional" if i % 3 == 1 else "enterprise")
        status = "active"
        grace_until = None
        if not hot and i % 50 == 7:
            status = "revoked"
        elif not hot and i % 50 == 9:
            status = "rotating"
            grace_until = (now + timedelta(hours=20)).isoformat().replace("+00:00", "Z")
        expires = now + timedelta(days=1 + i % 90, seconds=i % 86_400)
        if not hot and i % 100 == 3:
            expires = now - timedelta(days=1)
        view = {
            "key_id": f"key_{i:024d}",
            "account_id": f"acct_{i % ACCOUNTS:06d}",
            "prefix": (token or "cnx_prod_xxxx")[:13],
            "digest": digest,
            "name": f"bench key {i}",
            "environment": environment,
            "scopes": SCOPE_SETS[0 if hot else i % len(SCOPE_SETS)],
            "plan": plan,
            "rate_limit": {"requests_per_minute": 100_000, "burst": None} if plan == "enterprise" else None,
            "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"] if i % 10 == 5 else [],
            "status": status,
            "created_at": stamp,
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
            "grace_until": grace_until,
            "auto_renew": False,
            "lifetime_days": 90,
            "notify_sealed": None,
            "revision": 1,
            "suspended": False,
        }
        yield view, token


def build_projection(count: int) -> tuple[Any, list[tuple[dict[str, Any], str]]]:
    """The validator's projection of `count` keys, built in-process (not through the issuer), and the
    known keys with their tokens."""
    from services.validator.projection import Projection

    projection = Projection()
    known: list[tuple[dict[str, Any], str]] = []
    for view, token in key_dicts(count):
        projection.apply_dict(view)
        if token:
            known.append((view, token))
    return projection, known


def requests(known: list[tuple[dict[str, Any], str]], count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """`count` validation requests in the mix of `MIX`, shuffled."""
    rng = random.Random(seed + 1)
    usable = [
        (view, token)
        for view, token in known[HOT_KEYS:]
        if view["status"] == "active" and view["expires_at"] > NOW.isoformat()
    ]
    hot = known[:HOT_KEYS]
    out: list[dict[str, Any]] = []
    for kind, share in MIX:
        for _ in range(int(count * share)):
            ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            if kind == "valid":
                view, token = rng.choice(usable)
                out.append({"key": token, "scope": view["scopes"][0].split(":")[0] + ":read", "ip": ip})
            elif kind == "wrong_scope":
                view, token = rng.choice(usable)
                out.append({"key": token, "scope": "admin:write", "ip": ip})
            elif kind == "unknown":
                out.append({"key": _token(rng, "prod"), "scope": "compute:read", "ip": ip})
            elif kind == "bad_checksum":
                token = rng.choice(usable)[1]
                last = "A" if token[-1] != "A" else "B"
                out.append({"key": token[:-1] + last, "scope": "compute:read", "ip": ip})
            else:
                out.append({"key": rng.choice(hot)[1], "scope": "compute:read", "ip": ip})
    rng.shuffle(out)
    return out


def write_requests(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(item) for item in items) + b"\n")
    return path


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children not counted), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | None = None) -> int:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cores() -> int:
    return len(os.sched_getaffinity(0))


def pin(pid: int, cpus: set[int]) -> None:
    """Pin a process (all its threads) to `cpus`, when the machine has them."""
    available = os.sched_getaffinity(0)
    if cpus <= available:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


class CpuMeter:
    """CPU seconds used by some processes over a window, as a share of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self._t0 = time.monotonic()

    def shares(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        return {
            name: round((cpu_seconds(pid) - self._start[name]) / elapsed, 2)
            for name, pid in self.pids.items()
        }
