"""When to try a transient failure again: exponential backoff with full jitter, never before Retry-After.

A throttled change (the target asked us to slow down) waits what the target asked, and only backs off
exponentially when it did not say (a 429 without Retry-After): see `throttle_delay`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

BASE_SECONDS = 2.0
CAP_SECONDS = 15 * 60.0


def retry_delay(
    attempt: int, retry_after: float | None = None, base: float = BASE_SECONDS, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt `attempt + 1`."""
    ceiling = min(CAP_SECONDS, base * 2 ** (attempt - 1))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


def retry_at(now: datetime, attempt: int, retry_after: float | None = None, base: float = BASE_SECONDS) -> datetime:
    return now + timedelta(seconds=retry_delay(attempt, retry_after, base))


def throttle_delay(
    throttles: int, retry_after: float | None, base: float = BASE_SECONDS, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the `throttles`-th throttle: what the target asked (changes throttled together come
    back together, in one batch, as they left), or backoff when it gave no Retry-After."""
    if retry_after is None:
        return retry_delay(max(throttles, 1), None, base, rng)
    return retry_after
