"""When the management client tries a call again: 429 and 503 answers, after Retry-After and with
exponential backoff, as the product page advises. Pure: no clock, no sleeping, randomness injectable.

Both statuses mean the call did not happen (the API takes its rate-limit token and reaches its store
before changing anything), so retrying a POST is as safe as retrying a GET.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries` more tries after the first; the n-th waits at least the answer's Retry-After and at
    least `backoff * 2**n` (less up to half of it, as jitter, so clients refused together do not all
    come back at the same instant), never more than `max_delay`. A Retry-After longer than `max_delay`
    is not waited for: the error is raised at once with its `retry_after`, for the caller to decide."""

    max_retries: int = 3
    backoff: float = 0.5
    max_delay: float = 30.0
    statuses: frozenset[int] = frozenset({429, 503})
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, attempt: int, status: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `attempt` (0 for the first), or None: do not retry."""
        if status not in self.statuses or attempt >= self.max_retries:
            return None
        if retry_after is not None and retry_after > self.max_delay:
            return None
        exponential = self.backoff * 2**attempt
        jittered = exponential * (1 - self.random() / 2)
        return min(self.max_delay, max(retry_after or 0.0, jittered))


NO_RETRY = RetryPolicy(max_retries=0)
