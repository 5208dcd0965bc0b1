"""Sync state on top of the table port: cursors and leases, key map, record state, runs, failures.

Written once for every backend. Cursor writes are always etag-guarded (insert / update-if-unchanged),
never blind upserts, so two pullers can never both advance one flow; so are apply's record-state writes
(`save_records`, the per-record leases of shared.engine.record_lock).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.engine.values import DIGEST_OVER, EXACT, is_digest
from shared.ports.tables import Entity, TableBackend

CURSORS = "cursors"
KEYMAP = "keymap"
RECORDS = "records"
RUNS = "runs"
FAILURES = "failures"
CONFLICTS = "conflicts"
REQUESTS = "changerequests"
GRANTS = "grants"  # operator decisions a message must match to lift a check (shared.engine.grants)
JOBS = "jobs"  # long operator operations and their progress (shared.engine.jobs)
TABLES = (CURSORS, KEYMAP, RECORDS, RUNS, FAILURES, CONFLICTS, REQUESTS, GRANTS, JOBS)

RECORD_BUCKETS = 16
# Record values are JSON (ASCII, so one character is one UTF-16 unit) split over properties `values_0`,
# `values_1`, ...: a Table property holds 32 Ki UTF-16 units (64 KiB), an entity 1 MiB. Long values are digests
# (see _bounded_values), and at most 12 parts (720 KB as UTF-16) are written, so the entity always fits.
_VALUES_CHUNK = 30_000
_VALUES_CHUNKS = 12
_SHORT_DIGEST_OVER = 48  # when even that does not fit, every value longer than this becomes a digest
_CURSOR_RK = "cursor"
_MAX_TICKS = 10**19  # inverted timestamps sort newest first
_CLAIM = "claim_until"  # in a key map row: a claim on the key (shared.engine.target_claims), not a link
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)  # a claim given back: expired for everyone


# Format of a stored cursor, carried as `format`. 1: the cursors of releases before it existed (same fields,
# no `format`); 2: adds it. Positions are connector-specific (a delta link, a watermark and last key, ...): a
# release that changes one bumps this and adds the step from the previous format to `_CURSOR_UPGRADES`. A
# cursor of a newer format is never read by an older release's pull (start_run refuses it) and is written
# back with its position untouched.
CURSOR_FORMAT = 2


def _cursor_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data


# format n -> format n + 1, applied to the stored data before it is read
_CURSOR_UPGRADES = {1: _cursor_v1_to_v2}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class Cursor:
    flow: str
    position: dict[str, Any] | None = None
    lease_owner: str | None = None
    lease_expires: datetime | None = None
    paused: bool = False
    paused_reason: str | None = None
    last_run: dict[str, Any] = field(default_factory=dict)
    # Set when a full read starts, cleared once its deletes were inferred: a run that finds it set (the
    # last one died in between) infers them by a key-set comparison before it reads on.
    deletes_pending: str | None = None
    # The flow's last pull failure ({"error", "since", "at", "run_id"}), kept until a pull succeeds.
    last_error: dict[str, Any] | None = None
    # When the flow's last successful pull ended (ISO time): what shared.flow_health reports.
    last_success: str | None = None
    etag: str = ""
    format: int = CURSOR_FORMAT

    @property
    def newer_format(self) -> bool:
        """Written by a newer release: its position must not be read here."""
        return self.format > CURSOR_FORMAT

    def to_data(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "position": self.position,
            "lease_owner": self.lease_owner,
            "lease_expires": _iso(self.lease_expires),
            "paused": self.paused,
            "paused_reason": self.paused_reason,
            "last_run": self.last_run,
            "deletes_pending": self.deletes_pending,
            "last_error": self.last_error,
            "last_success": self.last_success,
        }

    @classmethod
    def from_entity(cls, entity: Entity) -> Cursor:
        d = entity.data
        found = d.get("format", 1)
        for step in range(found, CURSOR_FORMAT):
            d = _CURSOR_UPGRADES[step](d)
        return cls(
            flow=entity.pk,
            position=d.get("position"),
            lease_owner=d.get("lease_owner"),
            lease_expires=_from_iso(d.get("lease_expires")),
            paused=bool(d.get("paused", False)),
            paused_reason=d.get("paused_reason"),
            last_run=d.get("last_run") or {},
            deletes_pending=d.get("deletes_pending"),
            last_error=d.get("last_error") or None,
            last_success=d.get("last_success"),
            etag=entity.etag,
            format=max(found, CURSOR_FORMAT),
        )


@dataclass
class KeyLink:
    """One record known on both sides; stored in both directions."""

    system_a: str
    key_a: str
    system_b: str
    key_b: str
    # The etag of the claim on key_b taken before the write (shared.engine.target_claims): the link is written
    # only over that claim, never over a row another record claimed or linked since.
    claim: str | None = None


@dataclass
class KeyClaim:
    """A target key claimed by a source record before its write (shared.engine.target_claims). It lives in
    the key map row the link will take, so committing the link turns it into that link; lookups ignore it."""

    system: str  # the target system
    key: str  # the target key, formatted
    owner_system: str
    owner: str  # the source key claiming it
    until: datetime
    etag: str | None = None  # the row as read (None: absent); after the claim, the claim's own


@dataclass
class KeyHolder:
    """Who holds a target key: a source record linked to it (until None) or claiming it until then."""

    owner: str
    until: datetime | None
    etag: str


@dataclass
class RecordLease:
    """Who is applying a version of this record right now (see shared.engine.record_lock)."""

    owner: str
    until: datetime


@dataclass
class RecordState:
    record_id: str  # "<system>|<key>" of the side the pair treats as canonical
    versions: dict[str, str] = field(default_factory=dict)  # system -> last applied version from it
    # system -> field -> canonical value both sides last agreed on (written there by us, or seen there and
    # synced). An incoming change equal to it is an echo; a target differing from it changed since.
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    synced_at: datetime | None = None
    # system -> when a delete was inferred for the record there (shared.engine.deletes): its version stays
    # the last real one, and any real change from that system wins over the tombstone.
    tombstones: dict[str, str] = field(default_factory=dict)
    lease: RecordLease | None = None
    etag: str = ""  # as read or last written; "" = not stored yet

    def remember(self, system: str, values: dict[str, Any]) -> None:
        self.values.setdefault(system, {}).update(values)

    def forget(self, system: str) -> None:
        """The record was deleted on `system`: nothing there to compare with any more."""
        self.values.pop(system, None)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"versions": self.versions, "synced_at": _iso(self.synced_at),
                                "tombstones": self.tombstones}
        text = _bounded_values(self.record_id, self.values)
        for number, start in enumerate(range(0, len(text), _VALUES_CHUNK)):
            data[f"values_{number}"] = text[start : start + _VALUES_CHUNK]
        if self.lease is not None:
            data["lease"] = {"owner": self.lease.owner, "until": _iso(self.lease.until)}
        return data

    @classmethod
    def from_entity(cls, entity: Entity) -> RecordState:
        d = entity.data
        values = d.get("values")  # written before values were split into parts
        if values is None:
            parts = []
            while f"values_{len(parts)}" in d:
                parts.append(d[f"values_{len(parts)}"])
            values = json.loads("".join(parts)) if parts else {}
        lease = d.get("lease")
        return cls(
            record_id=entity.rk,
            versions=d.get("versions") or {},
            values=values,
            synced_at=_from_iso(d.get("synced_at")),
            tombstones=d.get("tombstones") or {},
            lease=RecordLease(lease["owner"], _from_iso(lease["until"])) if lease else None,  # type: ignore[arg-type]
            etag=entity.etag,
        )


def _bounded_values(record_id: str, values: dict[str, dict[str, Any]]) -> str:
    """The values as JSON that fits the entity: long values (remembered in full by an older writer, or
    by a caller that did not digest them) become digests of their normal form, compared by digest."""
    limit = _VALUES_CHUNK * _VALUES_CHUNKS
    for over in (DIGEST_OVER, _SHORT_DIGEST_OVER):
        shrunk = {system: {name: _shrunk(value, over) for name, value in fields.items()}
                  for system, fields in values.items()}
        text = json.dumps(shrunk, ensure_ascii=True, separators=(",", ":"), default=str)
        if len(text) <= limit:
            return text
    raise ValueError(f"record {record_id}: the state of {sum(len(f) for f in values.values())} fields is "
                     f"{len(text)} characters with every value over {_SHORT_DIGEST_OVER} characters digested, more than "
                     f"the {limit} it may hold")


def _shrunk(value: Any, over: int) -> Any:
    if is_digest(value) or not isinstance(value, str) or len(value) <= over:
        return value
    return EXACT.digest(value)


def record_partition(pair: str, record_id: str) -> str:
    bucket = int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=2).digest()) % RECORD_BUCKETS
    return f"{pair}~{bucket:02d}"


class StateStore:
    def __init__(self, tables: TableBackend) -> None:
        self.tables = tables

    # -- cursors and leases -------------------------------------------------------------------
    def get_cursor(self, flow: str) -> Cursor | None:
        entity = self.tables.get(CURSORS, flow, _CURSOR_RK)
        return Cursor.from_entity(entity) if entity else None

    def create_cursor(self, cursor: Cursor) -> Cursor:
        cursor.etag = self.tables.insert(CURSORS, cursor.flow, _CURSOR_RK, cursor.to_data())
        return cursor

    def save_cursor(self, cursor: Cursor) -> Cursor:
        """Etag-guarded; raises ConcurrencyError when someone else wrote the cursor since we read it."""
        cursor.etag = self.tables.update(CURSORS, cursor.flow, _CURSOR_RK, cursor.to_data(), cursor.etag)
        return cursor

    def list_cursors(self) -> list[Cursor]:
        return [Cursor.from_entity(e) for e in self.tables.query(CURSORS)]

    # -- key map ------------------------------------------------------------------------------
    def lookup_keys(self, pair: str, system: str, keys: Iterable[str]) -> dict[str, str]:
        """Source keys of `system` -> the other system's keys, for those the pair has linked."""
        wanted = list(dict.fromkeys(keys))
        found = self.tables.get_many(KEYMAP, pair, [f"{system}|{k}" for k in wanted])
        prefix = len(system) + 1
        return {rk[prefix:]: e.data["other_key"] for rk, e in found.items() if _CLAIM not in e.data}

    def link_keys(self, pair: str, links: Sequence[KeyLink]) -> list[KeyLink]:
        """Both directions of each link. A link over a claim is written only while that claim is unchanged;
        returns those whose claim was taken over (or released) meanwhile, of which nothing is written."""
        claimed = [a for a in links if a.claim]
        written = self.tables.write_guarded(KEYMAP, [
            (pair, f"{a.system_b}|{a.key_b}", {"other_system": a.system_a, "other_key": a.key_a}, a.claim)
            for a in claimed]) if claimed else {}
        lost = []
        for a in claimed:
            etag = written.get((pair, f"{a.system_b}|{a.key_b}"))
            if etag is None:
                lost.append(a)
            else:
                a.claim = etag  # the row as written: written again (a batch narrowed down after a failure) it holds
        rows = []
        gone = {id(a) for a in lost}
        for a in links:
            if id(a) in gone:
                continue
            rows.append((pair, f"{a.system_a}|{a.key_a}", {"other_system": a.system_b, "other_key": a.key_b}))
            if not a.claim:
                rows.append((pair, f"{a.system_b}|{a.key_b}", {"other_system": a.system_a, "other_key": a.key_a}))
        self.tables.upsert_many(KEYMAP, rows)
        return lost

    def unlink_keys(self, pair: str, links: Sequence[KeyLink], keep: Collection[tuple[str, str]] = ()) -> None:
        """Both directions of each link, but not the rows named (system, key) in `keep`: a target key that a
        claim of the same batch takes over stays claimed, so nobody else can take it in between."""
        for link in links:
            for system, key in ((link.system_a, link.key_a), (link.system_b, link.key_b)):
                if (system, key) not in keep:
                    self.tables.delete(KEYMAP, pair, f"{system}|{key}")

    def linked_keys(self, pair: str, system: str) -> Iterator[str]:
        """Every key of `system` the pair knows, streamed in key order (for delete inference)."""
        prefix = f"{system}|"
        for entity in self.tables.query(KEYMAP, pair, rk_prefix=prefix):
            if _CLAIM not in entity.data:
                yield entity.rk[len(prefix) :]

    # -- target key claims (shared.engine.target_claims) -------------------------------------------
    def key_holders(self, pair: str, system: str, keys: Iterable[str]) -> dict[str, KeyHolder]:
        """Keys of `system` -> the source record linked to each, or claiming it (live or not)."""
        found = self.tables.get_many(KEYMAP, pair, [f"{system}|{k}" for k in dict.fromkeys(keys)])
        prefix = len(system) + 1
        return {rk[prefix:]: KeyHolder(e.data["other_key"], _from_iso(e.data.get(_CLAIM)), e.etag)
                for rk, e in found.items()}

    def claim_keys(self, pair: str, claims: Sequence[KeyClaim]) -> set[str]:
        """Each claim written only over the row as read (its etag; none: only if still absent), in one guarded
        write. Returns the keys that lost that race; the others carry their claim's etag."""
        written = self.tables.write_guarded(KEYMAP, [
            (pair, f"{c.system}|{c.key}", {"other_system": c.owner_system, "other_key": c.owner, _CLAIM: _iso(c.until)},
             c.etag) for c in claims])
        lost: set[str] = set()
        for claim in claims:
            etag = written.get((pair, f"{claim.system}|{claim.key}"))
            if etag is None:
                lost.add(claim.key)
            claim.etag = etag
        return lost

    def release_keys(self, pair: str, claims: Sequence[KeyClaim]) -> None:
        """Give claims back (their change wrote nothing it keeps): each ends now, unless someone took it since."""
        rows = [(pair, f"{c.system}|{c.key}", {"other_system": c.owner_system, "other_key": c.owner,
                                                _CLAIM: _iso(_RELEASED)}, c.etag) for c in claims if c.etag]
        if rows:
            self.tables.write_guarded(KEYMAP, rows)

    # Aliases live in the key map partition under their own prefix, so `linked_keys` never lists them.
    @staticmethod
    def _alias_rk(system: str, entity: str, source_id: str) -> str:
        return f"~id|{system}|{entity}|{source_id}"

    def put_aliases(self, pair: str, system: str, entity: str, keys_by_id: dict[str, str]) -> None:
        """Remember a source's own record ids -> the flow's keys (see SourceRecord.source_id)."""
        self.tables.upsert_many(KEYMAP, [(pair, self._alias_rk(system, entity, i), {"key": k})
                                         for i, k in keys_by_id.items()])

    def get_aliases(self, pair: str, system: str, entity: str, ids: Iterable[str]) -> dict[str, str]:
        wanted = {self._alias_rk(system, entity, i): i for i in dict.fromkeys(ids)}
        found = self.tables.get_many(KEYMAP, pair, list(wanted))
        return {wanted[rk]: e.data["key"] for rk, e in found.items()}

    def drop_aliases(self, pair: str, system: str, entity: str, ids: Iterable[str]) -> None:
        for source_id in ids:
            self.tables.delete(KEYMAP, pair, self._alias_rk(system, entity, source_id))

    # What a snapshot pull last sent for a record (shared.engine.snapshot), beside the aliases.
    @staticmethod
    def _sent_rk(system: str, entity: str, key: str) -> str:
        return f"~sent|{system}|{entity}|{key}"

    def put_sent(self, pair: str, system: str, entity: str, sent: dict[str, dict[str, Any]]) -> None:
        """key -> {"fingerprint", "version"} ({"deleted": True, "version"} for a delete)."""
        self.tables.upsert_many(KEYMAP, [(pair, self._sent_rk(system, entity, k), v) for k, v in sent.items()])

    def get_sent(self, pair: str, system: str, entity: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = {self._sent_rk(system, entity, k): k for k in dict.fromkeys(keys)}
        found = self.tables.get_many(KEYMAP, pair, list(wanted))
        return {wanted[rk]: e.data for rk, e in found.items()}

    def count_keys(self, pair: str, system: str) -> int:
        return sum(1 for _ in self.linked_keys(pair, system))

    # -- record state -------------------------------------------------------------------------
    def get_records(self, pair: str, record_ids: Iterable[str]) -> dict[str, RecordState]:
        by_partition: dict[str, list[str]] = defaultdict(list)
        for rid in dict.fromkeys(record_ids):
            by_partition[record_partition(pair, rid)].append(rid)
        found: dict[str, RecordState] = {}
        for partition, rids in by_partition.items():
            for rk, entity in self.tables.get_many(RECORDS, partition, rids).items():
                found[rk] = RecordState.from_entity(entity)
        return found

    def put_records(self, pair: str, records: Sequence[RecordState]) -> None:
        rows = [(record_partition(pair, r.record_id), r.record_id, r.to_data()) for r in records]
        self.tables.upsert_many(RECORDS, rows)

    def save_records(self, pair: str, records: Sequence[RecordState]) -> set[str]:
        """Each record written only if unchanged since it was read (its etag; none: only if still absent).
        Returns the record ids that lost that race; the others carry their new etag."""
        rows = [(record_partition(pair, r.record_id), r.record_id, r.to_data(), r.etag or None) for r in records]
        written = self.tables.write_guarded(RECORDS, rows)
        lost: set[str] = set()
        for record in records:
            etag = written.get((record_partition(pair, record.record_id), record.record_id))
            if etag is None:
                lost.add(record.record_id)
            else:
                record.etag = etag
        return lost

    def forget_record(self, pair: str, record_id: str) -> None:
        self.tables.delete(RECORDS, record_partition(pair, record_id), record_id)

    # -- runs ---------------------------------------------------------------------------------
    def add_run(self, flow: str, summary: dict[str, Any], at: datetime | None = None) -> None:
        moment = at or datetime.now(UTC)
        inverted = _MAX_TICKS - int(moment.timestamp() * 1_000_000)
        row = {**summary, "at": _iso(moment)}
        batch = f"-{summary['batch']}" if "batch" in summary else ""  # rows written at once by several instances
        self.tables.upsert_many(RUNS, [(flow, f"{inverted:020d}-{summary.get('run_id', '')}{batch}", row)])

    def recent_runs(self, flow: str, limit: int = 10) -> list[dict[str, Any]]:
        runs = []
        for entity in self.tables.query(RUNS, flow):
            runs.append(entity.data)
            if len(runs) >= limit:
                break
        return runs

    # -- failure ledger (apply without settlement: reason kept until the DLQ takes the message) --
    def record_failure(self, queue: str, message_id: str, reason: str, description: str,
                       sequence_number: int | None = None) -> None:
        """`sequence_number` names the delivery the verdict is for (None: every delivery of that message_id)."""
        data: dict[str, Any] = {"reason": reason, "description": description}
        if sequence_number:
            data["sequence_number"] = sequence_number
        self.tables.upsert_many(FAILURES, [(queue, message_id, data)])

    def get_failure(self, queue: str, message_id: str) -> dict[str, Any] | None:
        entity = self.tables.get(FAILURES, queue, message_id)
        return entity.data if entity else None

    def clear_failure(self, queue: str, message_id: str) -> None:
        self.tables.delete(FAILURES, queue, message_id)

    # -- parked decisions: conflicts (policy manual) and change requests (review: true) -------------
    def park(self, table: str, flow: str, key: str, data: dict[str, Any]) -> None:
        """One open item per record: a newer change replaces the older one, which it supersedes."""
        self.tables.upsert_many(table, [(flow, key, data)])

    def parked(self, table: str, flow: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for entity in self.tables.query(table, flow):
            yield entity.pk, entity.rk, entity.data

    def get_parked(self, table: str, flow: str, key: str) -> dict[str, Any] | None:
        entity = self.tables.get(table, flow, key)
        return entity.data if entity else None

    def unpark(self, table: str, flow: str, key: str) -> None:
        self.tables.delete(table, flow, key)

    # -- grants: operator decisions a message must match (shared.engine.grants) -----------------------
    def grant(self, flow: str, key: str, version: str, kind: str) -> None:
        self.tables.upsert_many(GRANTS, [(flow, f"{kind}|{version}|{key}", {"granted_at": _iso(datetime.now(UTC))})])

    def has_grant(self, flow: str, key: str, version: str, kind: str) -> bool:
        return self.tables.get(GRANTS, flow, f"{kind}|{version}|{key}") is not None

    def revoke_grant(self, flow: str, key: str, version: str, kind: str) -> None:
        self.tables.delete(GRANTS, flow, f"{kind}|{version}|{key}")

    # -- jobs: long operations any instance can report on and carry on (shared.engine.jobs) ----------------------
    _JOB_PK = "job"

    def create_job(self, job_id: str, data: dict[str, Any]) -> str:
        return self.tables.insert(JOBS, self._JOB_PK, job_id, data)

    def get_job(self, job_id: str) -> tuple[dict[str, Any], str] | None:
        """The job's data and etag."""
        entity = self.tables.get(JOBS, self._JOB_PK, job_id)
        return (entity.data, entity.etag) if entity else None

    def save_job(self, job_id: str, data: dict[str, Any], etag: str) -> str:
        """Etag-guarded: ConcurrencyError when another instance wrote the job since it was read."""
        return self.tables.update(JOBS, self._JOB_PK, job_id, data, etag)

    def delete_job(self, job_id: str) -> None:
        self.tables.delete(JOBS, self._JOB_PK, job_id)

    def list_jobs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for entity in self.tables.query(JOBS, self._JOB_PK):
            yield entity.rk, entity.data

    def close(self) -> None:
        self.tables.close()
