"""Request counters, so tests and benchmarks can count API round trips instead of timing them."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    """HTTP requests: total, by method, by kind (query, delta, create, upsert, batch, error...); batch
    sub-operations by kind; and requests rejected before reaching the API (401, injected 429 and 5xx)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_method: Counter[str] = Counter()
            self.by_kind: Counter[str] = Counter()
            self.batch_operations: Counter[str] = Counter()
            self.rejected: Counter[int] = Counter()
            self.affinity_cookies = 0  # requests that sent the ARRAffinity cookie back

    def record_request(self, method: str, kind: str) -> None:
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            self.by_kind[kind] += 1

    def record_batch_operation(self, kind: str) -> None:
        with self._lock:
            self.batch_operations[kind] += 1

    def record_rejection(self, method: str, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            self.rejected[status] += 1

    def record_affinity_cookie(self) -> None:
        with self._lock:
            self.affinity_cookies += 1

    @property
    def batch_operation_count(self) -> int:
        return sum(self.batch_operations.values())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_method": dict(self.by_method),
                "by_kind": dict(self.by_kind),
                "batch_operations": dict(self.batch_operations),
                "rejected": dict(self.rejected),
            }
