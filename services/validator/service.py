"""Validator use cases: answer a validation request from memory, apply key events, batch usage.

No NATS and no HTTP here: the entrypoints hand in decoded requests and events, and take replies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.events import KeyEvent, KeyUsed, KeyView

from .domain import Entry, Projection, decide
from .store import ValidatorStore


class ValidatorService:
    def __init__(
        self,
        store: ValidatorStore,
        *,
        peppers: Sequence[bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.projection = Projection()
        self._peppers = list(peppers)
        self._clock = clock
        self._usage: dict[str, list[Any]] = {}
        self.hydrated = False
        self.last_seq = 0

    async def hydrate(self) -> int:
        for view in await self.store.load_all():
            self.projection.apply(view)
        self.last_seq = await self.store.last_seq()
        self.hydrated = True
        return len(self.projection)

    def validate(
        self, key: str | None, scope: str | None = None, ip: str | None = None, environment: str | None = None
    ) -> dict[str, Any]:
        now = self._clock()
        reply, entry = decide(self.projection, self._peppers, key, scope, ip, environment, now)
        if entry is not None and reply["valid"]:
            self._note_use(entry, now)
        return reply

    def _note_use(self, entry: Entry, now: float) -> None:
        usage = self._usage.get(entry.key_id)
        if usage is None:
            self._usage[entry.key_id] = [entry.account_id, now, 1]
        else:
            usage[1] = now
            usage[2] += 1

    def take_usage(self) -> list[KeyUsed]:
        """The uses since the last call, one KeyUsed per key: never an event per request."""
        usage, self._usage = self._usage, {}
        return [
            KeyUsed(account_id=account, key_id=key_id, last_used_at=datetime.fromtimestamp(ts, UTC), count=count)
            for key_id, (account, ts, count) in usage.items()
        ]

    async def apply_events(self, events: Sequence[tuple[int, object]]) -> int:
        """Persist then apply key events (with their stream sequences); duplicates change nothing."""
        views: list[KeyView] = [e.key for _, e in events if isinstance(e, KeyEvent)]
        last = max((seq for seq, _ in events), default=self.last_seq)
        await self.store.save(views, last)
        applied = sum(1 for view in views if self.projection.apply(view))
        self.last_seq = max(self.last_seq, last)
        return applied
