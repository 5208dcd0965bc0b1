"""OData round trips per 1,000 records: the `kind: odata` connector against a real OData v4 server, SAP CAP
(started on loopback as the tests start it, `tests/fixtures/cap.py`), entity set `accounts` (key `code`,
`modifiedAt` stamped by the server and used as its ETag; pages of up to 1,000 rows).

For each size N (default 1,000 and 5,000), on an empty entity set, four phases in this order:

- create: N new records through `write_batch`, in calls of --ops-per-write ops (the engine's apply batch,
  100): each call reads the ops' keys (`$filter`) and POSTs the absent ones in `$batch` requests of 100.
- full_read: a watermark read from no position (all N rows, keyset pages over `modifiedAt` + key).
- update: the same N records with a new name: the key read, then a PATCH with the ETag just read per record.
- incremental: a watermark read from the full read's position: the N updated rows (the look-back, 60 s by
  default, adds none: every row was updated).

Per phase: `trips`, the HTTP requests counted at the transport (a counting httpx transport under the
connector; `$metadata` is read once before, outside every phase), `per_1000` of them per 1,000 records,
`records/s` and `wall_s` (CAP's own work included: it runs on the same 2 cores, its database on tmpfs so this
disk's fsync is not measured), `cpu_s` (this process's CPU: the connector's own cost), `peak_rss_mib` and
`start_rss_mib` (this process's resident memory: the peak, sampled every 5 ms during the phase, and at its
start; not tracemalloc, which triples the connector's CPU here), then the requests by kind (`get` reads,
`batch` `$batch` POSTs, `count` the full read's `$count` of rows without a watermark) with the seconds spent
waiting for their whole answers (the server's share). A phase that does not write or read all N records
exits 1.

Reading the numbers: a write costs one key read (`$filter` of up to 100 keys) and one `$batch` (of up to 100
requests) per 100 records: 20 per 1,000 whatever the call size. A read costs one GET per page of 1,000, plus
`$count` on a full read. Rates swing with the load on the machine; CAP's `$batch` work dominates writes.

Usage: python bench/odata_calls.py [--rows 1000 5000] [--ops-per-write 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.rss_peak import RssPeak
from shared.apply_workers import APPLY_BATCH
from shared.config import SourceSpec, TargetSpec
from shared.connectors.odata.connector import OdataConnector
from shared.connectors.odata_settings import OdataSystem
from shared.ports.connector import WriteOp
from tests.fixtures.cap import CapServer, cap_server

ENTITY = "accounts"
SOURCE = SourceSpec(system="erp", entity=ENTITY, key=["code"], changes="watermark", watermark="modifiedAt")
TARGET = TargetSpec(system="erp", entity=ENTITY, key=["code"])
PAGE = 1000  # CAP's largest page


class CountingTransport(httpx.HTTPTransport):
    """Counts every request the connector sends, by what it is."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # until the whole answer is in: the server's share
        self._lock = threading.Lock()  # the client sends from several threads

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = ("metadata" if path.endswith("/$metadata") else "count" if path.endswith("/$count")
                else "batch" if path.endswith("/$batch") else request.method.lower())
        started = time.perf_counter()
        response = super().handle_request(request)
        response.read()  # CAP streams a $batch answer part by part: done when the body is in
        with self._lock:
            self.kinds[kind] += 1
            self.seconds[kind] += time.perf_counter() - started
        return response

    def take(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            kinds, seconds, self.kinds, self.seconds = self.kinds, self.seconds, Counter(), Counter()
        return kinds, seconds


def write(connector: OdataConnector, rows: int, name: str, per_call: int) -> int:
    """Every record written with `name`; returns how many were written."""
    written = 0
    for start in range(0, rows, per_call):
        ops = [WriteOp("upsert", {"code": f"A{i:06d}"}, {"name": f"{name} {i}", "city": "Oslo"})
               for i in range(start, min(rows, start + per_call))]
        results = connector.write_batch(TARGET, ops)
        failed = [r for r in results if not r.ok]
        if failed:
            sys.exit(f"{name}: {len(failed)} writes failed, first: {failed[0].error}")
        written += len(results)
    return written


def read(connector: OdataConnector, position: dict[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
    """Rows read from `position` to the end, and the position after them."""
    count = 0
    for page in connector.read_changes(SOURCE, position, PAGE):
        count += len(page.records)
        position = page.position
    return count, position


def phase(name: str, rows: int, transport: CountingTransport, run: Callable[[], tuple[int, Any]]) -> Any:
    transport.take()
    with RssPeak() as rss:
        started, cpu = time.perf_counter(), time.process_time()
        done, result = run()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    kinds, waited = transport.take()
    if done != rows:
        sys.exit(f"{name}: {done} records where {rows} were expected")
    trips = sum(kinds.values())
    what = " ".join(f"{k}={n}/{waited[k]:.2f}s" for k, n in sorted(kinds.items()))
    print(f"{name:<12} {rows:>6} {trips:>6} {trips * 1000 / rows:>9.1f} {rows / seconds:>10,.0f} "
          f"{seconds:>7.2f} {cpu:>7.2f} {rss.peak:>12.0f} {rss.start:>13.0f}  {what}")
    return result


def run_size(server: CapServer, rows: int, per_call: int) -> None:
    server.clear(ENTITY)
    transport = CountingTransport()
    system = OdataSystem.model_validate({"kind": "odata", "url": server.erp, "page_size": PAGE})
    connector = OdataConnector.from_config("erp", system, transport=transport)
    try:
        connector.describe(ENTITY)  # $metadata, read once per connector: not part of any phase
        phase("create", rows, transport, lambda: (write(connector, rows, "Account", per_call), None))
        position = phase("full_read", rows, transport, lambda: read(connector, None))
        phase("update", rows, transport, lambda: (write(connector, rows, "Renamed", per_call), None))
        phase("incremental", rows, transport, lambda: read(connector, position))
    finally:
        connector.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--ops-per-write", type=int, default=APPLY_BATCH)
    args = parser.parse_args()
    memory = Path("/dev/shm")  # CAP's database on tmpfs: this disk's fsync is not what is measured
    with (tempfile.TemporaryDirectory(prefix="dualsync-odatabench-", dir=memory if memory.is_dir() else None) as tmp,
          cap_server(Path(tmp)) as server):
        print(f"SAP CAP at {server.erp}, entity set {ENTITY}, {args.ops_per_write} ops per write_batch")
        print(f"{'phase':<12} {'rows':>6} {'trips':>6} {'per_1000':>9} {'records/s':>10} {'wall_s':>7} "
              f"{'cpu_s':>7} {'peak_rss_mib':>12} {'start_rss_mib':>13}  requests: count/seconds")
        for rows in args.rows:
            run_size(server, rows, args.ops_per_write)


if __name__ == "__main__":
    main()
