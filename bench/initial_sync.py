"""Initial sync benchmark: N accounts SQLite CRM -> pull -> SQLite bus -> apply -> SQLite ERP.

Prints records/s end to end, bus messages/s, state writes per record (rows and round trips) and peak RSS
(of this process, and of the largest apply worker). Apply runs in worker processes (--workers N, the
`dualsync run` default) or in this process (--workers 0); the counters are summed over all processes.
Usage: python bench/initial_sync.py [--rows 100000] [--workers 2] [--batch-size 1000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo import sample_data  # noqa: E402
from shared.app import SyncApp  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.apply_workers import APPLY_BATCH  # noqa: E402
from shared.local_runtime import RunOptions, run_once  # noqa: E402


class CountingTables:
    """Wraps a table backend to count what the engine writes and how often it goes to the store."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.rows_written = 0
        self.write_calls = 0
        self.read_calls = 0

    def upsert_many(self, table, rows):  # noqa: ANN001, ANN201
        self.rows_written += len(rows)
        self.write_calls += 1
        return self.inner.upsert_many(table, rows)

    def get_many(self, table, pk, rks):  # noqa: ANN001, ANN201
        self.read_calls += 1
        return self.inner.get_many(table, pk, rks)

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(self.inner, name)


class CountingBus:
    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.sent = 0
        self.send_calls = 0

    def send(self, queue, envelopes):  # noqa: ANN001, ANN201
        self.sent += len(envelopes)
        self.send_calls += 1
        return self.inner.send(queue, envelopes)

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(self.inner, name)


def counters(app: SyncApp) -> dict[str, int]:
    tables, bus = app.state.tables, app.bus
    return {"rows_written": tables.rows_written, "write_calls": tables.write_calls, "read_calls": tables.read_calls,
            "sent": bus.sent, "send_calls": bus.send_calls}


def instrument(app: SyncApp):  # noqa: ANN201 - RunOptions.worker_init: wrap a worker's stores, report at exit
    app.state.tables = CountingTables(app.state.tables)
    app.bus = CountingBus(app.bus)
    profile_dir = os.environ.get("DUALSYNC_BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_dir else None
    if profiler:
        profiler.enable()

    def finish() -> dict[str, int]:
        if profiler:
            profiler.disable()
            profiler.dump_stats(Path(profile_dir) / f"worker-{os.getpid()}.prof")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return counters(app) | {"peak_rss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}

    return finish


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="apply worker processes; 0 = in this process")
    parser.add_argument("--batch-size", type=int, default=APPLY_BATCH)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of every worker to this folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dualsync-bench-"))
    t0 = time.perf_counter()
    crm_url, erp_url = sample_data.build(work / "data", accounts=args.rows, contacts=0, with_bad_rows=False)
    os.environ["CRM_DB_URL"], os.environ["ERP_DB_URL"] = crm_url, erp_url
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["DUALSYNC_BENCH_PROFILE"] = str(args.profile.resolve())
    print(f"seeded {args.rows} rows in {time.perf_counter() - t0:.1f}s ({work})")
    app = SyncApp.local(load_config(sample_data.write_flows(work)), work / "state")
    app.state.tables = CountingTables(app.state.tables)
    app.bus = CountingBus(app.bus)
    options = RunOptions(workers=args.workers, drain_bound=1, batch_size=args.batch_size,
                         workdir=work / "state", worker_init="bench.initial_sync:instrument")
    profiler = cProfile.Profile() if args.profile and args.workers == 0 else None
    if profiler:
        profiler.enable()
    start, cpu_start = time.perf_counter(), _cpu()
    tally = run_once(app, options)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu_start
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile / "in-process.prof")
    counts = tally.flows["accounts-to-customers"]
    total = counters(app)
    reports = getattr(tally, "worker_reports", [])
    for report in reports:
        for name in total:
            total[name] += report[name]
    app.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mib = max((r["peak_rss_kib"] for r in reports), default=0) / 1024
    mode = f"{args.workers} worker processes" if args.workers else "in process"
    print(f"initial_sync  rows={args.rows}  applied={counts.applied}  seconds={elapsed:.2f}  "
          f"records_per_s={counts.applied / elapsed:,.0f}  ({mode}, batch {args.batch_size})")
    print(f"bus           messages={total['sent']}  send_calls={total['send_calls']}  "
          f"messages_per_s={total['sent'] / elapsed:,.0f}")
    print(f"state         rows_written_per_record={total['rows_written'] / args.rows:.2f}  "
          f"write_round_trips_per_1000={total['write_calls'] * 1000 / args.rows:.1f}  "
          f"read_round_trips_per_1000={total['read_calls'] * 1000 / args.rows:.1f}")
    print(f"memory        peak_rss_mib={peak_mib:.0f}" + (f"  worker_peak_rss_mib={worker_mib:.0f}" if reports else ""))
    worker_cpu = sum(r["cpu_s"] for r in reports)
    print(f"cpu           main_process_s={cpu:.1f}  workers_s={worker_cpu:.1f}  "
          f"us_per_record={(cpu + worker_cpu) * 1e6 / args.rows:.0f}")
    for error in getattr(tally, "errors", [])[:10]:
        print(f"error         {error}")
    if not counts.adds_up() or counts.applied != args.rows:
        sys.exit("counts do not add up")


if __name__ == "__main__":
    main()
