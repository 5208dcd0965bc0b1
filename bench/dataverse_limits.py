"""Records written per second at Dataverse's service protection limits, against the simulator (dvsim).

The simulator enforces the limits per user over a sliding window. Dataverse's window is 300 s; here it is
shorter (``--window``) with the same rates: 6,000 requests per 300 s = 20 requests/s, 1,200 s execution time
per 300 s = 4 s of execution per second, 52 concurrent requests. Each write operation costs ``--op-ms`` of
execution time (an assumption: the real figure depends on the table and its plug-ins).

Writer threads (like apply workers sharing one connector) call ``write_batch`` with ``--chunk`` upserts by
alternate key each until ``--rows`` records are written. Per scenario: wall seconds, records/s, HTTP requests,
429 answers by error code, and the batch size the connector ended with.

Usage: python bench/dataverse_limits.py [--rows 6000] [--window 5] [--op-ms 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvsim import DataverseSimulator  # noqa: E402
from dvsim.limits import ServiceLimits  # noqa: E402
from shared.config import TargetSpec  # noqa: E402
from shared.connectors.dataverse import DataverseConnector  # noqa: E402
from shared.connectors.odata.auth import StaticTokenProvider  # noqa: E402
from shared.ports.connector import WriteOp  # noqa: E402

ACCOUNTS = TargetSpec(system="crm", entity="accounts", key=["accountnumber"])


def scenario(name: str, args: argparse.Namespace, *, dop_hint: int | None, max_concurrency: int,
             threads: int, initial_batch: int, batch_size: int = 1000) -> None:
    window = args.window
    limits = ServiceLimits(window_s=window, max_requests=round(20 * window), max_execution_s=4 * window,
                           max_concurrent=52, op_time_s=args.op_ms / 1000, dop_hint=dop_hint)
    codes: Counter[str] = Counter()
    with DataverseSimulator(limits=limits) as sim:
        connector = DataverseConnector(sim.url, StaticTokenProvider("bench"), max_concurrency=max_concurrency,
                                       initial_batch_size=initial_batch, batch_size=batch_size,
                                       timeout_seconds=args.timeout, max_throttle_wait_seconds=600)
        original = sim.limiter.admit

        def admit(user: str) -> Any:
            try:
                return original(user)
            except Exception as exc:
                codes[getattr(exc, "code", "?")] += 1
                raise

        sim.limiter.admit = admit  # type: ignore[method-assign]
        numbers = iter(range(args.rows))
        lock = threading.Lock()
        failed = 0

        def writer() -> None:
            nonlocal failed
            while True:
                with lock:
                    keys = [n for _, n in zip(range(args.chunk), numbers, strict=False)]
                if not keys:
                    return
                ops = [WriteOp("upsert", {"accountnumber": f"B-{n}"}, {"accountnumber": f"B-{n}", "name": f"n{n}"})
                       for n in keys]
                results = connector.write_batch(ACCOUNTS, ops)
                with lock:
                    failed += sum(1 for r in results if not r.ok)

        started = time.perf_counter()
        pool = [threading.Thread(target=writer) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - started
        written = len(sim.rows("accounts"))
        size = connector._sizer("accounts").size
        connector.close()
        print(f"{name:<44} rows={written:>6} failed={failed} s={elapsed:6.1f} records_per_s={written / elapsed:7.0f} "
              f"requests={sim.stats.requests:>5} 429={dict(codes)} final_batch={size}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--op-ms", type=float, default=10.0)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    print(f"limits per {args.window:g} s window: {round(20 * args.window)} requests, {4 * args.window:g} s execution, "
          f"52 concurrent; {args.op_ms:g} ms per operation; cpu={os.cpu_count()}")
    scenario("from 1000 per batch, 4 in flight", args, dop_hint=None, max_concurrency=4, threads=4,
             initial_batch=1000)
    scenario("adaptive from 10, 4 in flight", args, dop_hint=None, max_concurrency=4, threads=4, initial_batch=10)
    scenario("adaptive from 10, dop hint 8, max 16", args, dop_hint=8, max_concurrency=16, threads=4,
             initial_batch=10)
    scenario("adaptive from 10, 16 in flight, no hint", args, dop_hint=None, max_concurrency=16, threads=8,
             initial_batch=10)


if __name__ == "__main__":
    main()
