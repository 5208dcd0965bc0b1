"""Embedded message bus over SQLite with the Service Bus semantics the engine relies on.

Peek-lock with a lock duration, delivery count, max delivery count -> DLQ (MaxDeliveryCountExceeded),
dead-letter with reason and description, scheduled delivery, duplicate detection by message_id within a
window. Each thread gets its own connection; BEGIN IMMEDIATE serialises receivers across processes.

Sharded receive, for the local runtime's worker processes: every message is stored with
`shard = crc32(flow|key) % SHARDS` (flow and key from its application properties), and
`receive(..., shard=(i, n))` takes only messages with `shard % n == i`, so two receivers with different
`i` never hold two versions of one record. Retry clones keep flow and key, so they stay in their shard.
Two receiver-side settings refine it (the runtime sets them from the config; other receivers leave them
empty): `shard_groups` puts every message of some flows into one shard (the two flows of a
bidirectional pair share record state, but a record's keys differ per side), and `receive_after` holds a
flow's messages back until the earlier messages of the flows it looks up are settled (children after
their parents, as a single in-order receiver would apply them).

Message size: as strict as Service Bus Standard (256 KB per message, properties included, estimated from above
by `message_size`). A larger message travels by reference through the claim check (shared/bus/claim_check.py):
its body in `payloads` (files under the workdir in the embedded runtime), or, with no store, as a stub apply
dead-letters as PayloadTooLarge. Only `receive` fetches bodies; peeked and dead-lettered copies are the stubs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.bus.claim_check import MAX_MESSAGE_BYTES, REF_PROPERTY, ClaimCheck, MessageTooLargeError, message_size
from shared.bus.payload_store import FilePayloadStore, PayloadStore
from shared.errors import LockLostError
from shared.messages import Envelope
from shared.ports.bus import HELD_PROPERTY, QueueCounts, Received, Settler
from shared.process_identity import current_holder, holder_is_gone
from shared.state.sqlite_tables import connect

MAX_DELIVERY_EXCEEDED = "MaxDeliveryCountExceeded"
SHARDS = 64  # stored shard numbers; any receiver count up to this splits them evenly enough

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    subject TEXT, correlation_id TEXT, content_type TEXT, props TEXT, body BLOB,
    enqueued_at REAL NOT NULL,
    due_at REAL NOT NULL,          -- scheduled enqueue time (= enqueued_at when not scheduled)
    locked_until REAL NOT NULL DEFAULT 0,
    lock_token TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    dl_reason TEXT, dl_description TEXT,
    shard INTEGER NOT NULL DEFAULT 0  -- crc32(flow|key) % SHARDS, see sharded receive
);
CREATE INDEX IF NOT EXISTS ix_ready ON messages (queue, dead, seq);
CREATE INDEX IF NOT EXISTS ix_subject ON messages (queue, subject, dead, seq);  -- receive_after, counts_by_flow
CREATE TABLE IF NOT EXISTS seen_ids (
    queue TEXT NOT NULL, message_id TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "seq, message_id, subject, correlation_id, content_type, props, body, enqueued_at, "
    "delivery_count, lock_token, dl_reason, dl_description"
)


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def shard_of(flow: str, key: str) -> int:
    return zlib.crc32(f"{flow}|{key}".encode()) % SHARDS


def _chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    """SQLite allows at most 999 parameters per statement in old builds: IN lists go in chunks."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _props_shard(props: dict[str, Any], subject: str, message_id: str) -> int:
    return shard_of(str(props.get("flow", subject)), str(props.get("key", message_id)))


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class SqliteBus:
    def __init__(
        self,
        path: str | Path,
        *,
        lock_duration: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window: float = 600.0,
        clock: Any = time.time,
        max_message_size: int = MAX_MESSAGE_BYTES,
        payloads: PayloadStore | None = None,
    ) -> None:
        self.path = str(path)
        self.max_message_size = max_message_size
        self.claims = ClaimCheck(payloads)
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.duplicate_window = duplicate_window
        self._clock = clock
        self._local = threading.local()
        # Receiver-side sharding refinements (see the module docstring): flow -> group name, and
        # flow -> the flows whose earlier messages must be settled before its own are received.
        self.shard_groups: dict[str, str] = {}
        self.receive_after: dict[str, tuple[str, ...]] = {}
        conn = self._conn()
        conn.executescript(_SCHEMA)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    # -- sending ---------------------------------------------------------------------------------
    def send(self, queue: str, envelopes: Sequence[Envelope]) -> int:
        """Returns how many were enqueued; the rest were duplicates within the window."""
        if not envelopes:
            return 0
        checked = self.claims.check_in(queue, envelopes, self._fits, self.max_message_size)
        for original, envelope in zip(envelopes, checked, strict=True):
            # A stub cannot shrink its properties: one still too large is refused, as Service Bus would.
            if envelope is not original and not self._fits(envelope):
                raise MessageTooLargeError(envelope.message_id, message_size(envelope), self.max_message_size)
        envelopes = checked
        now = self._clock()
        unique = list({e.message_id: e for e in reversed(envelopes)}.values())[::-1]
        with _Tx(self._conn()) as conn:
            seen = self._recently_seen(conn, queue, [e.message_id for e in unique], now)
            fresh = [e for e in unique if e.message_id not in seen]
            conn.executemany(
                "INSERT OR REPLACE INTO seen_ids VALUES (?,?,?)",
                [(queue, e.message_id, now + self.duplicate_window) for e in fresh],
            )
            conn.executemany(
                "INSERT INTO messages (queue, message_id, subject, correlation_id, content_type, props, body,"
                " enqueued_at, due_at, shard) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        queue, e.message_id, e.subject, e.correlation_id, e.content_type,
                        json.dumps(e.application_properties), e.body, now,
                        e.scheduled_enqueue_time_utc.timestamp() if e.scheduled_enqueue_time_utc else now,
                        _props_shard(e.application_properties, e.subject, e.message_id),
                    )
                    for e in fresh
                ],
            )
            orphans = self._orphaned_payloads(conn, queue, [e for e in unique if e.message_id in seen])
        self.claims.release(orphans)
        return len(fresh)

    def _fits(self, envelope: Envelope) -> bool:
        return message_size(envelope) <= self.max_message_size

    @staticmethod
    def _orphaned_payloads(conn: Any, queue: str, dropped: list[Envelope]) -> list[Received]:
        """Duplicates dropped here whose body was stored again although no message refers to it any more (the
        first copy was already completed): their bodies are released, not left behind."""
        out = []
        for e in dropped:
            if REF_PROPERTY in e.application_properties and conn.execute(
                "SELECT 1 FROM messages WHERE queue=? AND message_id=? LIMIT 1", (queue, e.message_id)
            ).fetchone() is None:
                out.append(Received(envelope=e, delivery_count=0, enqueued_at=datetime.now(UTC), sequence_number=0))
        return out

    @staticmethod
    def _recently_seen(conn: Any, queue: str, ids: list[str], now: float) -> set[str]:
        seen: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT message_id FROM seen_ids WHERE queue=? AND expires_at>? AND message_id IN ({marks})",
                (queue, now, *chunk),
            ).fetchall()
            seen.update(r[0] for r in rows)
        return seen

    # -- receiving -------------------------------------------------------------------------------
    def receive(
        self, queue: str, max_messages: int = 100, max_wait: float = 1.0, *, shard: tuple[int, int] | None = None
    ) -> list[Received]:
        """shard=(i, n): only messages whose shard is i modulo n (see the module docstring)."""
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, not {shard!r}")
        got = self._receive(queue, max_messages, max_wait, dead=0, shard=shard)
        return self.claims.resolve_all(got, self._abandon)

    def receive_dead_letters(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Received]:
        return self._receive(queue, max_messages, max_wait, dead=1)

    def _receive(self, queue: str, max_messages: int, max_wait: float, dead: int,
                 shard: tuple[int, int] | None = None) -> list[Received]:
        deadline = time.monotonic() + max_wait
        while True:
            got = self._lock_batch(queue, max_messages, dead, shard)
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _ready_filter(self, conn: Any, queue: str, now: float, shard: tuple[int, int] | None
                      ) -> tuple[str, list[Any]]:
        """The extra WHERE terms (and their parameters) of a sharded, ordered receive."""
        sql, params = "", []
        if shard is not None and shard[1] > 1:
            if self.shard_groups:
                cases = " ".join("WHEN ? THEN ?" for _ in self.shard_groups)
                sql += f" AND (CASE subject {cases} ELSE shard END) % ? = ?"
                for flow, group in self.shard_groups.items():
                    params += [flow, zlib.crc32(group.encode()) % SHARDS]
            else:
                sql += " AND shard % ? = ?"
            params += [shard[1], shard[0]]
        first: dict[str, int | None] = {}  # parent flow -> its oldest unsettled (due or locked) message
        for flow, parents in self.receive_after.items():
            for parent in parents:
                if parent not in first:
                    row = conn.execute(
                        "SELECT seq FROM messages WHERE queue=? AND subject=? AND dead=0 AND due_at<=?"
                        " ORDER BY seq LIMIT 1", (queue, parent, now)).fetchone()
                    first[parent] = row[0] if row else None
            barrier = min((first[p] for p in parents if first[p] is not None), default=None)
            if barrier is not None:
                sql += " AND NOT (subject=? AND seq>?)"
                params += [flow, barrier]
        return sql, params

    def _lock_batch(self, queue: str, max_messages: int, dead: int, shard: tuple[int, int] | None = None
                    ) -> list[Received]:
        now = self._clock()
        with _Tx(self._conn()) as conn:
            extra, params = self._ready_filter(conn, queue, now, shard) if not dead else ("", [])
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE queue=? AND dead=? AND due_at<=? AND locked_until<=?"
                f"{extra} ORDER BY seq LIMIT ?",
                (queue, dead, now, now, *params, max_messages),
            ).fetchall()
            rows = _uncount_dead_holders(rows)
            if not dead:
                exhausted = [r for r in rows if r[8] >= self.max_delivery_count]
                conn.executemany(
                    "UPDATE messages SET dead=1, lock_token=NULL, locked_until=0, dl_reason=?, dl_description=?"
                    " WHERE seq=?",
                    [(MAX_DELIVERY_EXCEEDED, f"delivered {r[8]} times", r[0]) for r in exhausted],
                )
                rows = [r for r in rows if r[8] < self.max_delivery_count]
            token = f"{current_holder()}:{uuid.uuid4().hex}"
            by_count: dict[int, list[int]] = {}
            for r in rows:
                by_count.setdefault(r[8], []).append(r[0])
            for count, seqs in by_count.items():
                for chunk in _chunks(seqs):
                    conn.execute(
                        "UPDATE messages SET lock_token=?, locked_until=?, delivery_count=?"
                        f" WHERE seq IN ({','.join('?' * len(chunk))})",
                        (token, now + self.lock_duration, count + 1, *chunk),
                    )
        return [self._received(r, token, delivered=True) for r in rows]

    def peek(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Received]:
        """Browse active and scheduled messages, oldest first, without locking them."""
        return self._peek(queue, max_messages, from_sequence, dead=0)

    def peek_dead_letters(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Received]:
        return self._peek(queue, max_messages, from_sequence, dead=1)

    def _peek(self, queue: str, max_messages: int, from_sequence: int, dead: int) -> list[Received]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM messages WHERE queue=? AND dead=? AND seq>=? ORDER BY seq LIMIT ?",
            (queue, dead, from_sequence, max_messages),
        ).fetchall()
        return [self._received(r, "", delivered=False) for r in rows]

    @staticmethod
    def _received(row: tuple[Any, ...], token: str, delivered: bool) -> Received:
        seq, mid, subject, corr, ctype, props, body, enq, count, _tok, reason, desc = row
        envelope = Envelope(
            message_id=mid, body=body, subject=subject or "", correlation_id=corr or "",
            content_type=ctype or "", application_properties=json.loads(props or "{}"),
        )
        return Received(
            envelope=envelope, delivery_count=count + (1 if delivered else 0), enqueued_at=_ts(enq),
            sequence_number=seq, lock_token=token, dead_letter_reason=reason, dead_letter_description=desc,
            handle=seq,
        )

    # -- settling --------------------------------------------------------------------------------
    def settler(self, queue: str) -> Settler:
        return self.claims.settler(_SqliteSettler(self))

    def _held(self, conn: Any, messages: Sequence[Received]) -> None:
        now = self._clock()
        wanted = {m.handle: m.lock_token for m in messages}
        held: set[int] = set()
        seqs = list(wanted)
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            rows = conn.execute(
                f"SELECT seq, lock_token, locked_until FROM messages WHERE seq IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            held.update(seq for seq, token, until in rows if token == wanted[seq] and until >= now)
        lost = [m for m in messages if m.handle not in held]
        if lost:
            raise LockLostError(f"lock lost on message {lost[0].envelope.message_id} (and {len(lost) - 1} more)")

    def _complete(self, messages: Sequence[Received]) -> None:
        with _Tx(self._conn()) as conn:
            self._held(conn, messages)
            for chunk in _chunks([m.handle for m in messages]):
                conn.execute(f"DELETE FROM messages WHERE seq IN ({','.join('?' * len(chunk))})", chunk)

    def complete_dead_letters(self, queue: str, messages: Sequence[Received]) -> None:
        self._complete(messages)
        self.claims.release(messages)

    def _abandon(self, message: Received) -> None:
        with _Tx(self._conn()) as conn:
            self._held(conn, [message])
            if message.delivery_count >= self.max_delivery_count:
                conn.execute(
                    "UPDATE messages SET dead=1, lock_token=NULL, locked_until=0, dl_reason=?, dl_description=?"
                    " WHERE seq=?",
                    (MAX_DELIVERY_EXCEEDED, f"delivered {message.delivery_count} times", message.handle),
                )
            else:
                conn.execute("UPDATE messages SET lock_token=NULL, locked_until=0 WHERE seq=?", (message.handle,))

    def _dead_letter(self, message: Received, reason: str, description: str) -> None:
        with _Tx(self._conn()) as conn:
            self._held(conn, [message])
            conn.execute(
                "UPDATE messages SET dead=1, lock_token=NULL, locked_until=0, dl_reason=?, dl_description=?"
                " WHERE seq=?",
                (reason, description, message.handle),
            )

    # -- inspection ------------------------------------------------------------------------------
    def counts(self, queue: str) -> QueueCounts:
        now = self._clock()
        active, scheduled, dead = self._conn().execute(
            "SELECT COALESCE(SUM(dead=0 AND due_at<=?),0), COALESCE(SUM(dead=0 AND due_at>?),0),"
            " COALESCE(SUM(dead=1),0) FROM messages WHERE queue=?",
            (now, now, queue),
        ).fetchone()
        return QueueCounts(active=active, scheduled=scheduled, dead_letter=dead)

    def has_active(self, queue: str) -> bool:
        """counts(queue).active > 0, without counting: the local runtime asks it often while draining."""
        return bool(self._conn().execute(
            "SELECT EXISTS(SELECT 1 FROM messages WHERE queue=? AND dead=0 AND due_at<=?)", (queue, self._clock())
        ).fetchone()[0])

    def release_held(self, queue: str, flow: str) -> int:
        """Make `flow`'s changes held for a pause (scheduled, application property `held`) due now."""
        now = self._clock()
        with _Tx(self._conn()) as conn:
            return conn.execute(
                "UPDATE messages SET due_at=? WHERE queue=? AND subject=? AND dead=0 AND due_at>?"
                " AND json_extract(props, ?) IS NOT NULL",
                (now, queue, flow, now, f"$.{HELD_PROPERTY}"),
            ).rowcount

    def release_orphaned_locks(self, queue: str) -> int:
        """Unlock messages whose receiver process died on this host, instead of waiting out the lock
        (after a crashed `dualsync run` or apply worker), and take back the delivery their lock counted: the
        receiver died, the message did not fail, so enough crashes never dead-letter a healthy message as
        MaxDeliveryCountExceeded. Service Bus cannot tell a dead receiver from a failed delivery: there an
        expired lock always counts. A lock that merely expired (its holder alive, or on another host) counts
        here too. A dead holder's lock that expired before anyone released it is not counted either: the next
        receive finds the dead holder's token on the message (see `_uncount_dead_holders`)."""
        with _Tx(self._conn()) as conn:
            tokens = [row[0] for row in conn.execute(
                "SELECT DISTINCT lock_token FROM messages WHERE queue=? AND dead=0 AND lock_token IS NOT NULL",
                (queue,)).fetchall()]
            orphaned = [t for t in tokens if holder_is_gone(t.rpartition(":")[0])]
            released = 0
            for token in orphaned:
                released += conn.execute(
                    "UPDATE messages SET lock_token=NULL, locked_until=0, delivery_count=MAX(delivery_count-1, 0)"
                    " WHERE queue=? AND lock_token=?",
                    (queue, token)).rowcount
        return released

    def message_states(self, queue: str, seqs: Sequence[int]) -> dict[int, bool]:
        """For the given sequence numbers still stored: seq -> dead-lettered. A seq that is missing was
        completed. The local runtime uses it to learn how far a crashed worker got in settling a batch."""
        found: dict[int, bool] = {}
        for chunk in _chunks(list(seqs)):
            rows = self._conn().execute(
                f"SELECT seq, dead FROM messages WHERE queue=? AND seq IN ({','.join('?' * len(chunk))})",
                (queue, *chunk),
            ).fetchall()
            found.update((seq, bool(dead)) for seq, dead in rows)
        return found

    def counts_by_flow(self, queue: str) -> dict[str, int]:
        """Messages not yet settled (active, locked or scheduled) per flow, i.e. per subject."""
        rows = self._conn().execute(
            "SELECT subject, COUNT(*) FROM messages WHERE queue=? AND dead=0 GROUP BY subject", (queue,)
        ).fetchall()
        return {subject: n for subject, n in rows}

    def exhausted_by_flow(self, queue: str) -> dict[str, int]:
        """Dead letters per flow that the bus itself moved (MaxDeliveryCountExceeded), not an apply step."""
        rows = self._conn().execute(
            "SELECT subject, COUNT(*) FROM messages WHERE queue=? AND dead=1 AND dl_reason=? GROUP BY subject",
            (queue, MAX_DELIVERY_EXCEEDED),
        ).fetchall()
        return {subject: n for subject, n in rows}

    def next_due(self, queue: str) -> datetime | None:
        """When the next scheduled (not yet due) message becomes receivable: the local runtime's drain bound."""
        row = self._conn().execute(
            "SELECT MIN(due_at) FROM messages WHERE queue=? AND dead=0", (queue,)
        ).fetchone()
        return _ts(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        self.claims.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def embedded_bus(path: str | Path, **options: Any) -> SqliteBus:
    """The embedded runtime's bus: a message too large for one message keeps its body in `payloads/` beside
    the queue file."""
    return SqliteBus(path, payloads=FilePayloadStore(Path(path).parent / "payloads"), **options)


def _uncount_dead_holders(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows about to be received whose last lock expired in the hands of a dead receiver (its token is still
    there: nobody settled or abandoned it): that delivery is taken back, as `release_orphaned_locks` does."""
    tokens = {r[9] for r in rows if r[9]}
    gone = {t for t in tokens if holder_is_gone(t.rpartition(":")[0])}
    if not gone:
        return rows
    return [(*r[:8], max(r[8] - 1, 0), *r[9:]) if r[9] in gone else r for r in rows]


class _SqliteSettler:
    def __init__(self, bus: SqliteBus) -> None:
        self._bus = bus

    def complete(self, messages: Sequence[Received]) -> None:
        self._bus._complete(messages)

    def abandon(self, message: Received) -> None:
        self._bus._abandon(message)

    def dead_letter(self, message: Received, reason: str, description: str) -> None:
        self._bus._dead_letter(message, reason, description)
