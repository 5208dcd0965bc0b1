"""Fault injection: throttling (429 + Retry-After), transient 5xx, latency, and delta-token expiry settings.

Random faults come from a seeded generator, so a sequential client sees the same faults on every run.
Tests that need an exact fault on an exact request use ``inject()`` instead of a rate.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from . import errors
from .errors import ODataError


@dataclass
class FaultSettings:
    rate_429: float = 0.0  # fraction of API requests answered 429 Too Many Requests
    rate_5xx: float = 0.0  # fraction answered 503 Service Unavailable
    latency_ms: float = 0.0  # added to every API request
    retry_after_s: int = 1  # the Retry-After value sent with a 429
    expire_tokens_after_s: float | None = None  # delta tokens older than this are expired (None: never)
    seed: int | None = 0

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_5xx"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.rate_429 + self.rate_5xx > 1.0:
            raise ValueError("rate_429 + rate_5xx must not exceed 1")


class FaultInjector:
    def __init__(self, settings: FaultSettings):
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._lock = threading.Lock()
        self._scripted: deque[ODataError] = deque()

    def inject(self, status: int, count: int = 1, retry_after_s: int | None = None) -> None:
        """Answer the next ``count`` API requests with this status (429, or a 5xx)."""
        with self._lock:
            for _ in range(count):
                self._scripted.append(self._error(status, retry_after_s))

    def _error(self, status: int, retry_after_s: int | None) -> ODataError:
        if status == 429:
            return errors.too_many_requests(self.settings.retry_after_s if retry_after_s is None else retry_after_s)
        err = errors.service_unavailable()
        err.status = status
        return err

    def next_fault(self) -> ODataError | None:
        """The fault to answer this request with, if any. Called once per HTTP request."""
        with self._lock:
            if self._scripted:
                return self._scripted.popleft()
            s = self.settings
            if s.rate_429 <= 0 and s.rate_5xx <= 0:
                return None
            r = self._rng.random()
        if r < s.rate_429:
            return self._error(429, None)
        if r < s.rate_429 + s.rate_5xx:
            return self._error(503, None)
        return None

    def delay(self) -> None:
        if self.settings.latency_ms > 0:
            time.sleep(self.settings.latency_ms / 1000.0)
