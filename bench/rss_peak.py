"""The peak resident memory of this process while a block runs, sampled in a thread (every 5 ms), for the
benchmarks: unlike tracemalloc it does not slow the code it measures, and unlike ru_maxrss it is per block."""

from __future__ import annotations

import threading
from typing import Self

PAGE_BYTES = 4096
INTERVAL = 0.005


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / 2**20


class RssPeak:
    """`start` and `peak` resident MiB of the block."""

    def __enter__(self) -> Self:
        self.start = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(INTERVAL):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())
