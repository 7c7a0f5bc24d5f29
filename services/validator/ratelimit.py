"""Token buckets: per key (the plan's rate limit) and per client address (failed-validation throttle).

Pure and clock-free: every call is given `now` (seconds, float). A bucket holds `capacity` tokens and
refills at `rate` tokens per second; one admitted request takes one token. Plans (DESIGN.md):
Starter 60/min with a bucket of 100, Professional 1,000/min with 2,000, Enterprise a custom rate whose
`burst: null` means a bucket as big as one minute of the rate (no cap beyond the rate). So a full
Starter bucket admits 100 requests at once and then one a second: at most 100 + 60 in a minute.

A key's bucket is a slotted object in a plain dict, made on first use: the validator checks one on
every admitted request. An address's failure bucket has a fixed shape, so it is one float (the time it
is full again) in a dict of floats: no object per guessing address for the garbage collector to track.
"""

from __future__ import annotations

from typing import Any

from shared.events import PLAN_LIMITS, RateLimit

# A bucket's shape: (rate in tokens per second, capacity in tokens).
Shape = tuple[float, float]


def shape_of(plan: str, rate_limit: RateLimit | dict[str, Any] | None) -> Shape | None:
    """The bucket for a plan and its (custom) limit; None when the key has no limit at all."""
    if isinstance(rate_limit, dict):
        rate_limit = RateLimit.model_validate(rate_limit)
    limit = rate_limit if rate_limit is not None else PLAN_LIMITS.get(plan)
    if limit is None:
        return None
    rpm = limit.requests_per_minute
    # burst is the bucket's capacity; null (and a meaningless 0) means one minute's worth of the rate.
    capacity = limit.burst if limit.burst else rpm
    return rpm / 60.0, float(capacity)


def round3(x: float) -> float:
    """`round(x, 3)`, the same float, for a fraction of the cost (the builtin goes through decimal
    strings; every admitted request's reply has one). n / 1000 is the float nearest the decimal n/1000,
    as `round` returns, when n is the integer nearest x * 1000; near a tie, where x * 1000's own rounding
    could pick the wrong n, and out of the range where it cannot, ask `round`."""
    if 0.0 < x < 1e6:
        y = x * 1000.0
        n = int(y + 0.5)
        if 1e-6 < y + 0.5 - n < 0.999999:
            return n / 1000.0
    return round(x, 3)


class Bucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, shape: Shape, now: float) -> None:
        self.rate, self.capacity = shape
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.stamp = now

    def reshape(self, shape: Shape, now: float) -> None:
        """A plan change: refill at the old rate up to now, then keep what is left (capped)."""
        self.refill(now)
        self.rate, self.capacity = shape
        if self.tokens > self.capacity:
            self.tokens = self.capacity

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = now - self.stamp
        if elapsed > 0:  # refill(), inlined: every admitted request comes here
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0 if they are now)."""
        missing = cost - self.tokens
        return missing / self.rate if missing > 0 else 0.0

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.tokens) / self.rate

    def state(self) -> dict[str, Any]:
        """The `rate_limit` object of a reply: capacity, whole tokens left, seconds to full."""
        return {
            "limit": int(self.capacity),
            "remaining": int(self.tokens),
            "reset_s": round3((self.capacity - self.tokens) / self.rate),
        }


class KeyLimiter:
    """One bucket per key id, made on first use; replaced in place when the key's limit changes."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}

    def __len__(self) -> int:
        return len(self.buckets)

    def admit(self, key_id: str, shape: Shape, now: float) -> tuple[bool, Bucket]:
        """Try to take a token for one request: (admitted?, the bucket after the attempt)."""
        bucket = self.buckets.get(key_id)
        if bucket is None:
            bucket = self.buckets[key_id] = Bucket(shape, now)
        elif bucket.rate != shape[0] or bucket.capacity != shape[1]:
            bucket.reshape(shape, now)
        # Bucket.take(), inlined: every admitted request comes here.
        tokens = bucket.tokens
        elapsed = now - bucket.stamp
        if elapsed > 0:
            tokens += elapsed * bucket.rate
            if tokens > bucket.capacity:
                tokens = bucket.capacity
            bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return True, bucket
        bucket.tokens = tokens
        return False, bucket

    def forget(self, key_id: str) -> None:
        self.buckets.pop(key_id, None)

    def prune(self, now: float) -> int:
        """Drop buckets that have refilled completely: they would be made again identical."""
        full = [k for k, b in self.buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.capacity]
        for key_id in full:
            del self.buckets[key_id]
        return len(full)


class FailureThrottle:
    """Failed validations (malformed or unknown keys) per client address: a bucket of `per_minute`
    failures refilled at `per_minute` a minute. An address whose bucket is empty is refused (429)
    for every request, valid key or not, so a guesser cannot learn which guess was right; other
    addresses are not touched. `per_minute <= 0` turns the throttle off.

    Every address's bucket has the same shape, so one number says all of it: the time it is full again
    (each failure pushes that 1/rate later, and never further than a whole bucket ahead). Tokens at
    `now` are `capacity - (full_at - now) * rate`; an address is blocked while fewer than one is left."""

    MAX_ADDRESSES = 100_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.enabled = per_minute > 0
        rate, capacity = (per_minute / 60.0, float(per_minute)) if per_minute > 0 else (1.0, 1.0)
        self._step = 1.0 / rate  # the time one failure takes to refill
        self._window = capacity / rate  # an empty bucket's time to full
        self._free = (capacity - 1.0) / rate  # as long ahead as full_at may be with a token left
        # address -> when its bucket is full again (float: the dict holds no object per address).
        self.addresses: dict[str, float] = {}

    def blocked(self, address: str, now: float) -> float:
        """0.0 when the address may try; else the seconds until it may (for Retry-After)."""
        full_at = self.addresses.get(address)
        if full_at is None:
            return 0.0
        wait = full_at - now - self._free
        return wait if wait > 0 else 0.0

    def failed(self, address: str, now: float) -> None:
        full_at = self.addresses.get(address)
        if full_at is None:
            if len(self.addresses) >= self.MAX_ADDRESSES:
                self.prune(now)
            full_at = now
        elif full_at < now:
            full_at = now
        # One token less, but never below empty: at most a whole window ahead.
        self.addresses[address] = min(full_at + self._step, now + self._window)

    def forgive(self, address: str, now: float) -> None:
        """Take one failure back: a NOT_FOUND held for read-your-writes that turned out to be a new key."""
        full_at = self.addresses.get(address)
        if full_at is None:
            return
        full_at -= self._step
        if full_at <= now:
            del self.addresses[address]
        else:
            self.addresses[address] = full_at

    def prune(self, now: float) -> int:
        """Drop the addresses whose bucket is full again: they would start afresh, identical."""
        full = [a for a, full_at in self.addresses.items() if full_at <= now]
        for address in full:
            del self.addresses[address]
        if len(self.addresses) >= self.MAX_ADDRESSES:
            # Under a wide attack keep the most recent half rather than grow without bound (the latest
            # full_at is the address that failed most, most recently).
            recent = sorted(self.addresses.items(), key=lambda item: item[1])[len(self.addresses) // 2 :]
            self.addresses = dict(recent)
        return len(full)
