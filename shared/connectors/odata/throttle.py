"""How hard an OData connector pushes: batch size, parallelism and the pause after a 429.

Written for Dataverse, whose documentation is the most explicit; the rules hold for any OData service that
answers 429 with Retry-After (F&O and Business Central share Dataverse's limits). Dataverse's *Service
protection API limits* and *Execute batch operations using the Web API* advise: start with small batches (about 10 operations) and tune; keep each request well inside the execution time limit; follow the
``x-ms-dop-hint`` header for the degree of parallelism; when throttled, wait for ``Retry-After`` before
sending anything more (every further request while throttled lengthens the wait); and turn off the
``ARRAffinity`` cookie so parallel requests spread over the web servers.

- `AdaptiveBatchSize`: operations per ``$batch``; doubles after a batch that answered fast (quadruples when
  very fast), halves after a slow one, a timeout or an execution-time throttle, and stays below a size the
  service refused as too large.
- `Pacer`: one pause for the whole connector; every request waits for it, so a 429 slows everything at once
  instead of each record finding the limit on its own.
- `ConcurrencyLimit`: a semaphore whose limit follows ``x-ms-dop-hint`` (never above the configured maximum),
  halves on a 429 and grows back one step at a time.
- `cookieless_jar`: a cookie jar that keeps nothing, so the affinity cookie is never sent back.
"""

from __future__ import annotations

import threading
import time
from http.cookiejar import CookieJar, CookiePolicy
from typing import Any, Self

INITIAL_BATCH = 10


class AdaptiveBatchSize:
    """Operations per ``$batch`` for one table (plug-ins make tables differ in cost)."""

    def __init__(self, ceiling: int, start: int = INITIAL_BATCH, target_seconds: float = 10.0) -> None:
        self.ceiling = max(1, ceiling)
        self.target_seconds = target_seconds
        self._size = max(1, min(start, self.ceiling))
        self._refused_at = self.ceiling + 1  # the smallest batch answered 413
        self._answers = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def measured(self) -> bool:
        """Whether a batch has answered yet: until then one goes at a time (more would all be the first size)."""
        return self._answers > 0

    def answered(self, ops: int, seconds: float) -> None:
        """A batch of ``ops`` operations answered in ``seconds``: far below the target, the size quadruples;
        below half of it, it doubles; above it, it halves."""
        with self._lock:
            self._answers += 1
            if seconds > self.target_seconds:
                self._size = max(1, min(self._size, ops) // 2)
            elif seconds < self.target_seconds / 2 and ops >= self._size:
                factor = 4 if seconds < self.target_seconds / 16 else 2
                self._size = min(self.ceiling, self._refused_at - 1, self._size * factor)

    def slow_down(self, ops: int) -> None:
        """A timeout or an execution-time throttle: halve."""
        with self._lock:
            self._size = max(1, min(self._size, ops) // 2)

    def too_large(self, ops: int) -> None:
        """A batch of ``ops`` operations was refused as too large (413): halve, and never grow back to it."""
        with self._lock:
            self._refused_at = min(self._refused_at, ops)
            self._size = max(1, min(self._size, ops // 2))


class Pacer:
    """A pause shared by every request of one connector.

    When a pause ends, one request goes first; the others wait until it is answered. Had they all gone at
    once, most would meet the limit again and each would lengthen the wait (Dataverse extends Retry-After
    for a caller that keeps sending)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._until = 0.0
        self._testing = False  # after a pause, until the first request through is answered
        self._probe_out = False

    def pause(self, seconds: float) -> None:
        with self._cond:
            self._until = max(self._until, time.monotonic() + max(0.0, seconds))
            self._testing = True
            self._cond.notify_all()

    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def wait(self) -> tuple[float, bool]:
        """Wait until this request may go: (seconds waited, whether it goes first after a pause)."""
        started = time.monotonic()
        with self._cond:
            while True:
                left = self._until - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                elif self._testing and self._probe_out:
                    self._cond.wait(1.0)
                else:
                    probe = self._testing
                    self._probe_out = probe
                    return time.monotonic() - started, probe

    def answered(self, probe: bool, throttled: bool) -> None:
        """A request is done; the first one after a pause ends the test unless it was throttled again."""
        if not probe:
            return
        with self._cond:
            self._probe_out = False
            if not throttled:
                self._testing = False
            self._cond.notify_all()


class ConcurrencyLimit:
    """A semaphore whose limit changes while requests hold it: it follows ``x-ms-dop-hint`` (never above the
    configured maximum), shrinks to the requests left in the window (``x-ms-ratelimit-burst-remaining-
    xrm-requests``), halves on a 429 and grows back by one after a limit's worth of answered requests, so
    few requests meet a limit that one of them has already found."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self._target = self.ceiling  # min(ceiling, the hint)
        self._limit = self.ceiling
        self._active = 0
        self._answered = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    def follow_hint(self, hint: str | None) -> None:
        """Adopt ``x-ms-dop-hint``; ignore anything that is not a positive whole number."""
        if not hint or not hint.strip().isdigit() or int(hint) < 1:
            return
        with self._cond:
            target = min(self.ceiling, int(hint))
            if target != self._target:
                self._target = target
                self._limit = min(self._limit, target)  # a higher hint is grown into, one step at a time
                self._cond.notify_all()

    def follow_budget(self, remaining: str | None) -> None:
        """``x-ms-ratelimit-burst-remaining-xrm-requests``: with only so many requests left in the window,
        no more than that many (at least one) go at once, so at most one meets the limit."""
        if not remaining or not remaining.strip().isdigit():
            return
        with self._cond:
            self._limit = max(1, min(self._limit, int(remaining)))

    def throttled(self) -> None:
        with self._cond:
            self._limit = max(1, self._limit // 2)
            self._answered = 0

    def answered(self) -> None:
        with self._cond:
            self._answered += 1
            if self._limit < self._target and self._answered >= self._limit:
                self._limit += 1
                self._answered = 0
                self._cond.notify()

    def __enter__(self) -> Self:
        with self._cond:
            while self._active >= self._limit:
                self._cond.wait()
            self._active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify()


class _KeepNothing(CookiePolicy):
    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def cookieless_jar() -> CookieJar:
    """The Web API needs no cookie; the one it sets (``ARRAffinity``) pins a client to one server."""
    return CookieJar(policy=_KeepNothing())
