"""How hard the Dataverse connector pushes: batch size, parallelism and the pause after a 429.

*Service protection API limits* and *Execute batch operations using the Web API* advise: start with small
batches (about 10 operations) and tune; keep each request well inside the execution time limit; follow the
``x-ms-dop-hint`` header for the degree of parallelism; when throttled, wait for ``Retry-After`` before
sending anything more (every further request while throttled lengthens the wait); and turn off the
``ARRAffinity`` cookie so parallel requests spread over the web servers.

- `AdaptiveBatchSize`: operations per ``$batch``; doubles after a batch that answered fast, halves after a
  slow one, a timeout or an execution-time throttle, and stays below a size the service refused as too large.
- `Pacer`: one pause for the whole connector; every request waits for it, so a 429 slows everything at once
  instead of each record finding the limit on its own.
- `ConcurrencyLimit`: a semaphore whose limit follows ``x-ms-dop-hint`` (never above the configured maximum).
- `cookieless_jar`: a cookie jar that keeps nothing, so the affinity cookie is never sent back.
"""

from __future__ import annotations

import threading
import time
from http.cookiejar import CookieJar, CookiePolicy
from typing import Any

INITIAL_BATCH = 10


class AdaptiveBatchSize:
    """Operations per ``$batch`` for one table (plug-ins make tables differ in cost)."""

    def __init__(self, ceiling: int, start: int = INITIAL_BATCH, target_seconds: float = 10.0) -> None:
        self.ceiling = max(1, ceiling)
        self.target_seconds = target_seconds
        self._size = max(1, min(start, self.ceiling))
        self._refused_at = self.ceiling + 1  # the smallest batch answered 413
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def answered(self, ops: int, seconds: float) -> None:
        """A batch of ``ops`` operations answered in ``seconds``."""
        with self._lock:
            if seconds > self.target_seconds:
                self._size = max(1, min(self._size, ops) // 2)
            elif seconds < self.target_seconds / 2 and ops >= self._size:
                self._size = min(self.ceiling, self._refused_at - 1, self._size * 2)

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
    """A pause shared by every request of one connector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + max(0.0, seconds))

    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def wait(self) -> float:
        """Sleep until the pause is over (it may be extended meanwhile); returns the seconds waited."""
        waited = 0.0
        while (left := self.remaining()) > 0:
            time.sleep(left)
            waited += left
        return waited


class ConcurrencyLimit:
    """A semaphore whose limit can change while requests hold it."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self._limit = self.ceiling
        self._active = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    def follow_hint(self, hint: str | None) -> None:
        """Adopt ``x-ms-dop-hint`` (bounded by the configured maximum); ignore anything that is not a number."""
        if not hint or not hint.strip().isdigit() or int(hint) < 1:
            return
        with self._cond:
            self._limit = min(self.ceiling, int(hint))
            self._cond.notify_all()

    def __enter__(self) -> ConcurrencyLimit:
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
