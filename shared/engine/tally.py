"""Counts per flow that must add up: every change is applied, skipped (why), dead-lettered, or waiting."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.engine.outcome import Kind, Outcome


@dataclass
class FlowCounts:
    backlog: int = 0  # unsettled on the bus when the run started
    pulled: int = 0
    duplicates: int = 0  # pulled again after a crash; dropped by duplicate detection
    applied: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    retried: int = 0  # retry clones scheduled (an attempt, not a final outcome)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    waiting: int = 0  # still on the bus (scheduled retry, deferred) when the run ended
    conflicts: int = 0  # fields both sides changed, settled by the policy (within applied or skipped)

    @property
    def settled(self) -> int:
        return self.applied + sum(self.skipped.values()) + sum(self.dead_lettered.values())

    def adds_up(self) -> bool:
        return self.backlog + self.pulled - self.duplicates == self.settled + self.waiting


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.flows: dict[str, FlowCounts] = defaultdict(FlowCounts)
        self.pull_errors: list[tuple[str, str]] = []  # (flow, error) in the order the pulls failed

    def pull_failed(self, flow: str, error: str) -> None:
        with self._lock:
            self.pull_errors.append((flow, error))

    def pulled(self, flow: str, n: int, duplicates: int = 0) -> None:
        with self._lock:
            self.flows[flow].pulled += n
            self.flows[flow].duplicates += duplicates

    def record(self, outcomes: Iterable[Outcome]) -> None:
        with self._lock:
            for o in outcomes:
                counts = self.flows[o.flow]
                counts.conflicts += o.conflicts
                if o.fetched_parent:  # read from its source on demand: counted like a pulled change
                    self.flows[o.fetched_parent].pulled += 1
                if o.kind is Kind.APPLIED:
                    counts.applied += 1
                elif o.kind is Kind.SKIPPED:
                    counts.skipped[o.reason] += 1
                elif o.kind is Kind.DEAD_LETTER:
                    counts.dead_lettered[str(o.reason)] += 1
                elif o.kind is Kind.RETRY:
                    counts.retried += 1

    def settled_total(self) -> int:
        with self._lock:
            return sum(c.settled for c in self.flows.values())
