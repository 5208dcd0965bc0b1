"""Cost of comparing values through the typed equivalence, and of bounding record state.

Prints microseconds per comparison (the echo/no-op/conflict checks make one per mapped field per record)
for the previous untyped comparison (canonical + same_value at commit 8f5335c, read from git) and for
FieldRule.same, untyped and typed; then the time to serialise a record state of 20 fields and of a 100 KB
text. Run from the repository root: python bench/value_equivalence.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.engine.values import FieldRule  # noqa: E402
from shared.state.store import RecordState  # noqa: E402

N = 20_000
PAIRS = [("Contoso Ltd", "Contoso Ltd"), ("100.50", Decimal("100.5")), ("2024-05-01T10:00:00Z", "2024-05-01 10:00:00"),
         (True, 1), (None, None), ("+1 555 0100", "+1 555 0101")]


def per_call(compare: Any, pairs: list[tuple[Any, Any]]) -> float:
    start = time.perf_counter()
    for _ in range(N):
        for a, b in pairs:
            compare(a, b)
    return (time.perf_counter() - start) / (N * len(pairs)) * 1e6


def previous() -> dict[str, Any]:
    source = subprocess.run(["git", "show", "8f5335c:shared/engine/values.py"], capture_output=True, text=True,
                            check=True).stdout
    namespace: dict[str, Any] = {"__name__": "previous_values"}
    exec(compile(source, "previous_values.py", "exec"), namespace)  # noqa: S102 - our own file, from git
    return namespace


def main() -> None:
    old = previous()
    print(f"comparisons ({N * len(PAIRS)} per line), microseconds each:")
    before = per_call(lambda a, b: old["same_value"](a, old["canonical"](b)), PAIRS)
    print(f"  previous canonical+same_value: {before:6.2f}")
    print(f"  FieldRule.same, inferred:      {per_call(FieldRule().same, PAIRS):6.2f}")
    typed = FieldRule("datetime", datetime_digits=0)
    moments = [("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC))] * len(PAIRS)
    print(f"  FieldRule.same, datetime:      {per_call(typed.same, moments):6.2f}")
    small = RecordState("crm|1", values={s: {f"field{i}": f"value {i}" for i in range(20)} for s in ("crm", "erp")})
    big = RecordState("crm|2", values={"crm": {"body": "x" * 100_000}, "erp": {"body": "x" * 100_000}})
    for name, state in (("20 short fields x 2 sides", small), ("one 100 KB text x 2 sides", big)):
        start = time.perf_counter()
        for _ in range(1000):
            data = state.to_data()
        took = (time.perf_counter() - start) / 1000 * 1e6
        size = sum(len(v) for k, v in data.items() if k.startswith("values_"))
        print(f"record state to_data, {name}: {took:8.1f} us, {size} characters stored")


if __name__ == "__main__":
    main()
