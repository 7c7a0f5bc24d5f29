"""The management API's own rate limit: a token bucket per caller key (CNX_MANAGEMENT_RATE_LIMIT).

Per issuer process: with N replicas behind a load balancer a key gets up to N times the limit. It is a
guard against one key hammering the catalog (a runaway script, a stolen admin key listing or minting
in a loop), not billing; the product rate limits of keys are the validator's.
Pure: the clock is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class ManagementLimiter:
    """`per_minute` tokens a minute into a bucket of `burst`; 0 per minute turns it off."""

    MAX_KEYS = 100_000

    def __init__(self, per_minute: int, burst: int) -> None:
        self.enabled = per_minute > 0
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str, now: float) -> float:
        """Take a token for this key: 0.0 when admitted, else the seconds until a token is there."""
        if not self.enabled:
            return 0.0
        bucket = self.buckets.get(key_id)
        if bucket is None:
            if len(self.buckets) >= self.MAX_KEYS:
                self.prune(now)
            bucket = self.buckets[key_id] = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def prune(self, now: float) -> None:
        """Forget the buckets that are full again: they would be made again identical."""
        full = [
            key
            for key, bucket in self.buckets.items()
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.capacity
        ]
        for key in full:
            del self.buckets[key]
        if len(self.buckets) >= self.MAX_KEYS:
            # Still full of keys busy right now: start them afresh rather than grow without bound.
            self.buckets.clear()
