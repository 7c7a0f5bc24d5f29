"""Validator use cases: answer a validation request from memory, apply key events, batch usage,
enforce rate limits (a token bucket per key) and throttle addresses that keep guessing keys.

No NATS and no HTTP here: the entrypoints hand in decoded requests and events, and take replies.
A request is `check`ed (throttle + decision) wherever it arrives and `admit`ted (the key's bucket)
on the replica that owns the key; `validate` does both, for a replica answering alone.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.events import KeyEvent, KeyUsed, KeyView
from shared.validation import Code, PlansChanged

from .domain import decide
from .keyring import Keyring
from .projection import P_SHAPE, Entry, Projection, view_ends_at
from .ratelimit import FailureThrottle, KeyLimiter, Shape, round3, shape_of
from .store import ValidatorStore

# Failures that look like guessing: a key that is not one, or is nobody's.
_GUESSES = frozenset({Code.MALFORMED, Code.NOT_FOUND})
_RATE_LIMITED = Code.RATE_LIMITED
# Rows the prune walks between two yields to the event loop (a few milliseconds of work).
PRUNE_SLICE = 50_000
DEFAULT_RETENTION_S = 7 * 86400.0


class ValidatorService:
    def __init__(
        self,
        store: ValidatorStore,
        *,
        peppers: Sequence[bytes],
        clock: Callable[[], float] = time.time,
        failed_auth_per_minute: int = 30,
        required_environment: str | None = None,
        freeze_heap: bool = False,
        retention: float = DEFAULT_RETENTION_S,
    ) -> None:
        """`retention`: seconds a revoked or expired key still answers REVOKED/EXPIRED after its end,
        before `prune` takes it out of memory and store (NOT_FOUND from then)."""
        self.store = store
        self.retention = retention
        self.freeze_heap = freeze_heap
        self.limiter = KeyLimiter()
        self.throttle = FailureThrottle(failed_auth_per_minute)
        self.required_environment = required_environment or None
        # account id -> bucket shape from `platform.plans.changed` (None: no limit), over the keys' own.
        self.account_shapes: dict[str, Shape | None] = {}
        self._account_stamp: dict[str, float] = {}
        self.projection = Projection()
        self._peppers = Keyring(peppers)
        self._clock = clock
        # Uses since the last flush, by projection row: counts and the time of the last one. Two dicts of
        # numbers, not a list per key: nothing per request that the garbage collector must track.
        self._uses: dict[int, int] = {}
        self._used_at: dict[int, float] = {}
        # Refusals of keys that were found (scope, address, environment, rate limit, expired, revoked),
        # counted the same way; only the refusal path touches them.
        self._refused: dict[int, int] = {}
        self._refused_at: dict[int, float] = {}
        self.hydrated = False
        self.last_seq = 0
        # Events are applied one batch at a time: the store's upsert reads then writes.
        self._apply_lock = asyncio.Lock()
        # Told after each applied batch (whether it changed keys): read-your-writes waits for it
        # (freshness.NotFoundHold.advanced).
        self.on_applied: Callable[[bool], None] = lambda keys_changed: None
        self._pruning = asyncio.Lock()
        self.pruned_total = 0
        self.prunes = 0  # passes completed (metrics, tests)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    async def hydrate(self) -> int:
        """Load every stored view and plan change. With `freeze_heap` (a validator process's own
        service, not one of many in a test process), then move everything alive to the collector's
        permanent generation: the projection and the loaded code live as long as the process, and a
        full collection would otherwise walk them all again (60-70 ms with a million keys)."""
        load = self.projection.load_json
        # Keys past their end by the retention stay in the store (`prune` deletes them), unread.
        cutoff = self._clock() - self.retention
        # The store reads the next batch (in its driver's thread or socket) while this one is decoded.
        batches = aiter(self.store.stream_views(cutoff=cutoff))
        pending = asyncio.ensure_future(anext(batches, None))
        while (batch := await pending) is not None:
            pending = asyncio.ensure_future(anext(batches, None))
            await asyncio.sleep(0)
            load(batch, cutoff)
        for change in await self.store.load_plans():
            self._apply_plan(change)
        self.last_seq = await self.store.last_seq()
        if self.freeze_heap:
            gc.collect()
            gc.freeze()
        self.hydrated = True
        return len(self.projection)

    def validate(
        self,
        key: str | None,
        scope: str | None = None,
        ip: str | None = None,
        environment: str | None = None,
        *,
        throttle: bool = True,
    ) -> dict[str, Any]:
        """The whole answer on this replica: check, then take a token from the key's bucket."""
        now = self._clock()
        reply, entry = self.check(key, scope, ip, environment, now, throttle=throttle)
        if entry is not None and reply["valid"]:
            return self.admit(reply, entry, now)
        return reply

    def check(
        self,
        key: str | None,
        scope: str | None,
        ip: str | None,
        environment: str | None,
        now: float,
        *,
        throttle: bool = True,
    ) -> tuple[dict[str, Any], Entry | None]:
        """Everything but the rate limit: the address throttle, then the pure decision, recorded."""
        reply, entry = self.peek(key, scope, ip, environment, now, throttle=throttle)
        if not reply["valid"]:
            self.record_refusal(reply, entry, ip, now, throttle=throttle)
        return reply, entry

    def peek(
        self,
        key: str | None,
        scope: str | None,
        ip: str | None,
        environment: str | None,
        now: float,
        *,
        throttle: bool = True,
    ) -> tuple[dict[str, Any], Entry | None]:
        """`check` without its record: nothing changes (a caller may still decide to answer later)."""
        # Most addresses have no failures on record: one dict probe, no call.
        if throttle and ip and ip in self.throttle.addresses:
            wait = self.throttle.blocked(ip, now)
            if wait > 0:
                return {"valid": False, "code": Code.RATE_LIMITED, "retry_after_s": round(wait, 3)}, None
        return decide(
            self.projection, self._peppers, key, scope, ip, environment or self.required_environment, now
        )

    def record_refusal(
        self, reply: dict[str, Any], entry: Entry | None, ip: str | None, now: float, *, throttle: bool = True
    ) -> None:
        """What a refusal `peek` gave leaves behind: the key's refusal count, or a failure of the address
        (a guessed key) for the throttle."""
        if entry is not None:
            self._count_refusal(entry[0], now)
        elif throttle and ip and reply["code"] in _GUESSES and self.throttle.enabled:
            self.throttle.failed(ip, now)

    def _count_refusal(self, row: int, now: float) -> None:
        refused = self._refused
        refused[row] = refused.get(row, 0) + 1
        self._refused_at[row] = now

    def shape_for(self, entry: Entry) -> Shape | None:
        shapes = self.account_shapes
        if shapes and entry.account_id in shapes:
            return shapes[entry.account_id]
        return entry.shape

    def admit(self, reply: dict[str, Any], entry: Entry, now: float) -> dict[str, Any]:
        """Take one token for a valid request: the reply gains `rate_limit`, or becomes RATE_LIMITED."""
        row, key_id, account_id, profile, _ = entry
        shapes = self.account_shapes
        shape = shapes[account_id] if shapes and account_id in shapes else profile[P_SHAPE]
        if shape is not None:
            admitted, bucket = self.limiter.admit(key_id, shape, now)
            # Bucket.state(), inlined.
            tokens, capacity = bucket.tokens, bucket.capacity
            state = {
                "limit": int(capacity),
                "remaining": int(tokens),
                "reset_s": round3((capacity - tokens) / bucket.rate),
            }
            if not admitted:
                self._count_refusal(row, now)
                return {
                    "valid": False,
                    "code": _RATE_LIMITED,
                    "key_id": key_id,
                    "account_id": account_id,
                    "rate_limit": state,
                    "retry_after_s": round3(bucket.retry_after()),
                }
            reply["rate_limit"] = state
        uses = self._uses
        uses[row] = uses.get(row, 0) + 1
        self._used_at[row] = now
        return reply

    def _apply_plan(self, change: PlansChanged) -> bool:
        stamp = change.occurred_at.timestamp() if change.occurred_at else 0.0
        if stamp and stamp < self._account_stamp.get(change.account_id, 0.0):
            return False
        if change.plan == "enterprise" and change.rate_limit is None:
            # No new custom rate given: each key keeps the custom limit it was created with.
            self.account_shapes.pop(change.account_id, None)
        else:
            self.account_shapes[change.account_id] = shape_of(change.plan, change.rate_limit)
        if stamp:
            self._account_stamp[change.account_id] = stamp
        return True

    async def change_plan(self, change: PlansChanged) -> bool:
        """`platform.plans.changed`: new limits for every key of the account, kept across restarts."""
        if not self._apply_plan(change):
            return False
        await self.store.save_plan(change)
        return True

    def take_usage(self) -> list[KeyUsed]:
        """The uses since the last call, one KeyUsed per key (allowed and refused apart): never an event
        per request."""
        uses, self._uses = self._uses, {}
        used_at, self._used_at = self._used_at, {}
        refusals, self._refused = self._refused, {}
        refused_at, self._refused_at = self._refused_at, {}
        projection = self.projection
        events = []
        for row in uses.keys() | refusals.keys():
            allowed, refused = uses.get(row, 0), refusals.get(row, 0)
            events.append(
                KeyUsed(
                    account_id=projection.account_at(row),
                    key_id=projection.key_id_at(row),
                    last_used_at=datetime.fromtimestamp(used_at[row] if allowed else refused_at[row], UTC),
                    count=allowed + refused,
                    allowed=allowed,
                    refused=refused,
                )
            )
        return events

    async def prune(self, now: float | None = None) -> int:
        """Take out of memory, then out of the store, every key that ended `retention` or more ago;
        how many left memory. Memory in slices of `PRUNE_SLICE` rows with the event loop free in
        between (requests and events go on; a slice is a few milliseconds), then the store in batches.
        Rows with usage not yet reported stay until the next prune (the report names a row's key).
        Pruning changes no stream position: a held NOT_FOUND (freshness.py) waits for nothing more."""
        if self._pruning.locked():
            return 0  # one prune at a time (the one at start may still run when the periodic one comes)
        async with self._pruning:
            now = self._clock() if now is None else now
            projection = self.projection
            removed = 0
            start = 0
            while start < projection.slots:
                keep = self._uses.keys() | self._refused.keys()
                removed += projection.prune(now, self.retention, start, start + PRUNE_SLICE, keep)
                start += PRUNE_SLICE
                await asyncio.sleep(0)
            projection.compact_index()
            self.pruned_total += removed
            await self.store.prune(now - self.retention)
            self.prunes += 1
            return removed

    async def apply_events(self, events: Sequence[tuple[int, object]]) -> int:
        """Apply then persist key events (with their stream sequences); duplicates change nothing.

        Memory first: a revocation is refused from the moment it arrives, not after a store write (the
        slowest step of propagation). Safe, because the event is acked only once the store has it and
        the stream resumes after the store's own position: a crash in between replays the event."""
        keyed = [e for _, e in events if isinstance(e, KeyEvent)]
        views: list[KeyView] = [e.key for e in keyed]
        last = max((seq for seq, _ in events), default=self.last_seq)
        if not views:
            # KeyUsed and the like change nothing here: no store write (one per event per replica would
            # queue revocations behind usage). After a restart they are replayed, as no-ops.
            self.last_seq = max(self.last_seq, last)
            self.on_applied(False)
            return 0
        async with self._apply_lock:
            # A key whose end (a revocation: its event's time) is past by the retention is not taken in,
            # nor written: a replay from the stream's start brings back no pruned key.
            cutoff = self._clock() - self.retention
            times = [e.occurred_at.timestamp() for e in keyed]
            apply = self.projection.apply
            applied = sum(1 for view, at in zip(views, times, strict=True) if apply(view, at, cutoff))
            ends = [view_ends_at(view, at) for view, at in zip(views, times, strict=True)]
            self.on_applied(applied > 0)  # a held request for a key just applied is answered now
            await self.store.save(views, last, ends=ends, cutoff=cutoff)
            self.last_seq = max(self.last_seq, last)
        self.on_applied(False)
        return applied
