"""Service protection limits, per user, as *Service protection API limits* describes them.

Three limits, each over a sliding window (300 s in Dataverse) and each per user (the caller the bearer
token names):

* number of requests (6,000): 429, code ``0x80072322``;
* combined execution time (1,200 s): 429, code ``0x80072321``; a request is charged the time the simulator
  spent on it, which includes the execution time it charges per operation (``op_time_s``);
* concurrent requests (52): 429 at once, code ``0x80072326``.

A throttled caller gets ``Retry-After``; a caller that keeps sending while throttled gets a longer one each
time (the docs: "if the client keeps sending requests, the duration increases"). Every answer carries
``x-ms-ratelimit-burst-remaining-xrm-requests``, ``x-ms-ratelimit-time-remaining-xrm-requests`` and, when
``dop_hint`` is set, ``x-ms-dop-hint`` (the recommended degree of parallelism).

All numbers are settings so tests can use a window of a second or two instead of five minutes.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from . import errors


@dataclass
class ServiceLimits:
    window_s: float = 300.0
    max_requests: int = 6000
    max_execution_s: float = 1200.0
    max_concurrent: int = 52
    op_time_s: float = 0.0  # execution time each write operation takes (and is charged), in seconds
    dop_hint: int | None = None  # sent as x-ms-dop-hint when set

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.max_requests < 1 or self.max_execution_s <= 0 or self.max_concurrent < 1:
            raise ValueError("service limits must be positive")
        if self.op_time_s < 0:
            raise ValueError("op_time_s must not be negative")


@dataclass
class _User:
    requests: deque[tuple[float, float]] = field(default_factory=deque)  # (finished at, seconds charged)
    started: deque[float] = field(default_factory=deque)  # start times of requests inside the window
    active: int = 0
    blocked_until: float = 0.0  # the Retry-After last given ends here


def user_of(token: str) -> str:
    """The caller a bearer token names: a JWT's oid / appid / sub claim, else the token itself."""
    parts = token.split(".")
    if len(parts) == 3:
        try:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
            for name in ("oid", "appid", "azp", "sub"):
                if isinstance(claims, dict) and claims.get(name):
                    return str(claims[name])
        except ValueError:
            pass
    return token


class Admission:
    """One admitted request: `finish()` charges its time and frees its concurrency slot."""

    def __init__(self, limiter: "ServiceLimiter", user: str, started: float) -> None:
        self._limiter = limiter
        self._user = user
        self._started = started

    def finish(self) -> dict[str, str]:
        return self._limiter._finish(self._user, self._started)


class ServiceLimiter:
    def __init__(self, settings: ServiceLimits | None = None) -> None:
        self.settings = settings or ServiceLimits()
        self._lock = threading.Lock()
        self._users: dict[str, _User] = {}

    def admit(self, user: str) -> Admission:
        """Admit a request or raise the 429 Dataverse would answer."""
        s = self.settings
        now = time.monotonic()
        with self._lock:
            u = self._users.setdefault(user, _User())
            self._expire(u, now)
            if u.active >= s.max_concurrent:
                # Decided at once, on the requests in flight; the wait is short (one request's time).
                raise errors.too_many_concurrent(s.max_concurrent, self._retry_after(u, now, 1.0))
            if len(u.started) >= s.max_requests:
                free_at = u.started[0] + s.window_s
                raise errors.too_many_requests(self._retry_after(u, now, free_at - now), s.max_requests,
                                               s.window_s)
            charged = sum(c for _, c in u.requests)
            if charged >= s.max_execution_s:
                free_at = self._execution_frees_at(u, charged - s.max_execution_s)
                raise errors.execution_time_exceeded(self._retry_after(u, now, free_at - now),
                                                     s.max_execution_s, s.window_s)
            u.active += 1
            u.started.append(now)
        return Admission(self, user, now)

    def _finish(self, user: str, started: float) -> dict[str, str]:
        s = self.settings
        now = time.monotonic()
        with self._lock:
            u = self._users[user]
            u.active -= 1
            u.requests.append((now, now - started))
            self._expire(u, now)
            charged = sum(c for _, c in u.requests)
            headers = {
                "x-ms-ratelimit-burst-remaining-xrm-requests": str(max(0, s.max_requests - len(u.started))),
                "x-ms-ratelimit-time-remaining-xrm-requests": f"{max(0.0, s.max_execution_s - charged):.2f}",
            }
        if s.dop_hint:
            headers["x-ms-dop-hint"] = str(s.dop_hint)
        return headers

    def _expire(self, u: _User, now: float) -> None:
        horizon = now - self.settings.window_s
        while u.started and u.started[0] <= horizon:
            u.started.popleft()
        while u.requests and u.requests[0][0] <= horizon:
            u.requests.popleft()

    def _execution_frees_at(self, u: _User, excess: float) -> float:
        """When enough charged time has left the window to bring the total under the limit."""
        freed = 0.0
        for finished, charged in u.requests:
            freed += charged
            if freed > excess:
                return finished + self.settings.window_s
        return time.monotonic() + self.settings.window_s

    @staticmethod
    def _retry_after(u: _User, now: float, wait: float) -> float:
        """At least until the window frees up; a caller that comes back before its last Retry-After has
        passed has the time it was told to wait added on top (how much longer is not documented)."""
        wait = max(wait, 0.001)
        if now < u.blocked_until:
            wait += u.blocked_until - now
        u.blocked_until = now + wait
        return wait
