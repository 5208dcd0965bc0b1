"""Claim-check cost on the embedded SQLite bus: what the size check adds to ordinary messages, and what a record
over 256 KB costs when its body travels by reference (a file under the workdir) instead of inside the queue.

Prints, per case, messages/s for send, receive and complete (and ms per message for the large ones):
* small: N ChangeMessages of ~400 bytes, with the claim check in place (every message is measured, none is
  over the limit) -- compare with a run of main's bus to see the size check's cost;
* large by reference: M messages of --mb MB each, body in FilePayloadStore;
* large inline: the same M messages on a bus whose limit is raised so they stay in the queue (what the SQLite bus
  did before it enforced Service Bus's limit).
Usage: python bench/claim_check.py [--small 5000] [--large 20] [--mb 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.bus.payload_store import FilePayloadStore  # noqa: E402
from shared.bus.sqlite_bus import SqliteBus  # noqa: E402
from shared.messages import ChangeMessage, to_envelope  # noqa: E402

Q = "dualsync-changes"


def envelopes(count: int, size: int, tag: str) -> list:
    now = datetime.now(UTC)
    return [to_envelope(ChangeMessage(flow="notes", op="upsert", source_system="crm", entity="notes",
                                      key=f"{tag}-{i}", version="1", changed_at=now, payload={"text": "x" * size}))
            for i in range(count)]


def run(name: str, bus: SqliteBus, batch: list, chunk: int) -> None:
    t0 = time.perf_counter()
    for start in range(0, len(batch), chunk):
        bus.send(Q, batch[start:start + chunk])
    t1 = time.perf_counter()
    got = []
    while len(got) < len(batch):
        got += bus.receive(Q, max_messages=chunk, max_wait=0)
    t2 = time.perf_counter()
    settler = bus.settler(Q)
    for start in range(0, len(got), chunk):
        settler.complete(got[start:start + chunk])
    t3 = time.perf_counter()
    n = len(batch)
    print(f"{name:<20} n={n:>6}  send {n / (t1 - t0):>9.0f}/s ({1000 * (t1 - t0) / n:6.2f} ms each)  "
          f"receive {n / (t2 - t1):>9.0f}/s ({1000 * (t2 - t1) / n:6.2f} ms)  "
          f"complete {n / (t3 - t2):>9.0f}/s ({1000 * (t3 - t2) / n:6.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--mb", type=float, default=1.0)
    args = parser.parse_args()
    size = int(args.mb * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run("small", SqliteBus(root / "a.db", payloads=FilePayloadStore(root / "pa")),
            envelopes(args.small, 300, "s"), 500)
        run("large by reference", SqliteBus(root / "b.db", payloads=FilePayloadStore(root / "pb")),
            envelopes(args.large, size, "l"), 10)
        run("large inline", SqliteBus(root / "c.db", max_message_size=4 * size),
            envelopes(args.large, size, "l"), 10)


if __name__ == "__main__":
    main()
