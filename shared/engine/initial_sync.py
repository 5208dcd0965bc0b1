"""Initial sync: link the records that already exist on both sides before creating the rest.

`initial_sync(app, flow)` is a flow's first pull with matching: it holds the flow's cursor lease like
pull does, reads the whole source, and decides every record by the flow's `match_on` (target fields):

1. Targets are scanned once (`Connector.iter_keys` on the target entity, then `read_records` in chunks)
   into an index: normalised match values -> target keys. Normalised = the field's declared type,
   `shared.engine.values.canonical`, and for text stripped and case-folded. A target with an empty match
   value is not indexed.
2. The source is read once to count, per target, how many unlinked source records claim it.
3. The source is read again and each record is decided (one bucket each; they add up to the records read):
   - already_linked: the key map knows it (a re-run, or the pull got there first): left alone;
   - matched: exactly one candidate target, claimed by no other source record and linked to nothing:
     keys linked and record state written without writing to the target (versions[source], the values
     of both sides). When the mapped values differ from what the target holds, the
     master's side is sent through its flow as a normal upsert to bring the other side in line (`aligned`;
     the record state's baseline is then the receiving side as it is, so the conflict check sees only the
     incoming side as changed): master = source or none -> this flow; master = target and the pair has a
     reverse flow -> the target record through the reverse flow; master = target without a reverse flow
     -> nothing is sent (the target is the master);
   - created: no candidate (or an empty match value): sent as a normal upsert; the engine creates it;
   - ambiguous: more than one candidate, or a candidate also claimed by another source record or already
     linked to one, or no candidate but the target key the mapping gives is taken (the upsert would
     overwrite a record that did not match): dead-lettered with reason AmbiguousMatch, naming the record,
     the match fields and values and the candidate keys. Never guessed;
   - failed: the mapping failed (validation, value map; a missing parent of a match field): dead-lettered
     with that reason. (A missing parent of another field is not a failure: the record is matched or
     sent, and apply waits for the parent as usual.)
   Dead-lettering goes through `shared.engine.verdicts`: the message is sent condemned, and apply turns it
   into a dead letter with the carried reason.

Per page: key links and record states are written, then the messages sent, then (first run only: the
cursor had no position) the cursor advanced to the page's position, so the regular pull continues from
where initial sync read and never re-sends the snapshot. A crash re-runs safely: linked records count as
already_linked, sends have deterministic message_ids.

Memory: the target index (one tuple and key per target) and the claim counts; source records are held
one page at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.app import SyncApp
from shared.config import Flow, SourceSpec
from shared.engine import aliases, cursor_lease
from shared.engine.batching import chunked
from shared.engine.mapping import Lookups, lookup_requests, map_record
from shared.engine.values import CoercionError, canonical, canonical_row, coerce, same_value
from shared.engine.verdicts import condemned, record_verdicts
from shared.errors import ConcurrencyError, ConfigError, MissingReferenceError, PermanentError, Reason
from shared.keys import key_of
from shared.messages import ChangeMessage, Envelope, new_run_id, to_envelope
from shared.ports.connector import SourceRecord
from shared.process_identity import current_holder
from shared.state.store import Cursor, KeyLink, RecordState

TARGET_CHUNK = 500
MAX_EXAMPLES = 20
MAX_NAMED = 10  # candidate / claimant keys named in one description


@dataclass
class InitialSyncResult:
    flow: str
    run_id: str
    status: str = "ok"  # ok | disabled | paused | leased | lease_lost
    matched: int = 0  # linked to the one existing target record
    created: int = 0  # no match: sent, the engine creates it
    ambiguous: int = 0  # dead-lettered, reason AmbiguousMatch
    already_linked: int = 0  # known before this run
    failed: int = 0  # mapping failed: dead-lettered with its reason
    aligned: int = 0  # of `matched`: values differed, the master's side was sent to bring the other in line
    targets: int = 0  # target records scanned
    pages: int = 0
    examples: list[str] = field(default_factory=list)  # the first dead-letter descriptions
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.matched + self.created + self.ambiguous + self.already_linked + self.failed


def initial_sync(app: SyncApp, flow_name: str, owner: str | None = None) -> InitialSyncResult:
    flow = app.config.flows[flow_name]
    if not flow.match_on:
        raise ConfigError([f"flows.{flow_name}.match_on: initial sync needs the target fields that identify "
                           "a record on both sides (e.g. [account_number] or [email])"])
    result = InitialSyncResult(flow_name, new_run_id())
    cursor, result.status = cursor_lease.start_run(app.state, flow_name, flow.enabled, owner or current_holder(),
                                                   app.clock())
    if cursor is None:
        return result
    run = _Run(app, flow_name, cursor, result)
    try:
        run.index_targets()
        run.count_claims()
        run.decide_all()
    except ConcurrencyError:
        result.status = "lease_lost"
        return result
    summary = {k: v for k, v in asdict(result).items() if k not in ("examples", "notes")} | {
        "kind": "initial_sync", "notes": "; ".join(result.notes), "finished_at": app.clock().isoformat()}
    cursor_lease.release(app.state, run.cursor, summary)
    app.state.add_run(flow_name, summary)
    return result


def normalise(value: Any, type_name: str | None) -> Any:
    """The form two sides' match values are compared in; None when there is nothing to match on."""
    try:
        value = coerce(value, type_name)
    except CoercionError:
        pass
    value = canonical(value)
    if isinstance(value, str):
        value = value.strip().casefold()
    return None if value in (None, "") else value


_Match = tuple[SourceRecord, str, dict[str, Any] | None, Exception | None]  # record, target key, mapped, error


@dataclass
class _Decided:
    """What one page's records came to, written in one go."""

    links: list[KeyLink] = field(default_factory=list)
    states: list[RecordState] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    verdicts: list[Envelope] = field(default_factory=list)
    handled: list[SourceRecord] = field(default_factory=list)  # status-flag sources: rows to mark processed
    failed: list[tuple[SourceRecord, str]] = field(default_factory=list)  # status-flag sources: (row, reason)


class _Run:
    def __init__(self, app: SyncApp, flow_name: str, cursor: Cursor, result: InitialSyncResult) -> None:
        self.app = app
        self.name = flow_name
        self.flow: Flow = app.config.flows[flow_name]
        self.pair = app.config.pair_of(flow_name)
        self.anchor = app.config.anchor_of(flow_name)
        self.reverse_name = app.config.reverse_of(flow_name)
        self.cursor = cursor
        self.first_run = not cursor.position
        self.result = result
        self.source = self.flow.source
        self.target = self.flow.target
        self.match_on = list(self.flow.match_on)
        self.types = {f.to: f.type for f in self.flow.fields if f.to in self.match_on}
        self.match_flow = self._only(self.match_on)  # maps just the match fields
        self.key_flow = self._only(self.target.key)  # maps just the target key
        reverse = app.config.flows[self.reverse_name] if self.reverse_name else None
        # The source fields the record state remembers for the source side: what this flow reads and
        # (in a pair) what the reverse flow writes.
        self.source_fields = list(dict.fromkeys(
            [f.from_ for f in self.flow.fields] + ([f.to for f in reverse.fields] if reverse else [])))
        self.target_fields = list(dict.fromkeys(f.to for f in self.flow.fields))
        self.index: dict[tuple[Any, ...], list[str]] = {}
        self.claims: Counter[str] = Counter()
        self.claimants: dict[str, list[str]] = {}
        self.taken: set[str] = set()  # targets linked during this run (guards against a source changed between reads)
        self.rekeyed = 0

    def _only(self, names: list[str]) -> Flow:
        return self.flow.model_copy(update={"fields": [f for f in self.flow.fields if f.to in names]})

    # -- lease ---------------------------------------------------------------------------------------
    def _keep_lease(self, position: dict[str, Any] | None = None) -> None:
        new = position if (position is not None and self.first_run) else self.cursor.position
        self.cursor = cursor_lease.advance(self.app.state, self.cursor, new, self.app.clock())  # type: ignore[arg-type]

    # -- pass 1: the target index --------------------------------------------------------------------
    def index_targets(self) -> None:
        connector = self.app.connector(self.target.system)
        spec = SourceSpec(system=self.target.system, entity=self.target.entity, key=list(self.target.key))
        for chunk in chunked(connector.iter_keys(spec), TARGET_CHUNK):
            rows = connector.read_records(self.target.entity, self.target.key, chunk)
            for key, row in rows.items():
                self.result.targets += 1
                values = tuple(normalise(row.values.get(name), self.types.get(name)) for name in self.match_on)
                if None not in values:
                    self.index.setdefault(values, []).append(key)
            self._keep_lease()

    # -- pass 2: who claims which target -------------------------------------------------------------
    def count_claims(self) -> None:
        for page in self._read_source():
            records = [r for r in page.records if not r.deleted]
            linked = self.app.state.lookup_keys(self.pair, self.source.system, [r.key for r in records])
            lookups = self._lookups(r.values for r in records)
            for record in records:
                if record.key in linked:
                    continue
                try:
                    match = self._match(record, lookups)
                except PermanentError:
                    continue
                for target_key in self.index.get(match[1], []) if match else []:
                    self.claims[target_key] += 1
                    named = self.claimants.setdefault(target_key, [])
                    if len(named) < MAX_NAMED:
                        named.append(record.key)
            self._keep_lease()

    # -- pass 3: decide and act ----------------------------------------------------------------------
    def decide_all(self) -> None:
        for page in self._read_source():
            records = [r for r in page.records if not r.deleted]
            self.result.pages += 1
            self._decide_page(records)
            aliases.remember(self.app, self.name, self.flow, records)  # its deletes may come by id only
            self._keep_lease(page.position)
        if self.rekeyed:
            self.result.notes.append(
                f"{self.rekeyed} matched records have another key on {self.target.system} than their mapping "
                f"gives ({', '.join(self.target.key)}): their updates must be written by the linked key")

    def _read_source(self) -> Iterator[Any]:
        return self.app.connector(self.source.system).read_changes(self.source, None, self.flow.page_size)

    def _decide_page(self, records: list[SourceRecord]) -> None:
        app, flow = self.app, self.flow
        keys = [r.key for r in records]
        linked = app.state.lookup_keys(self.pair, self.source.system, keys)
        lookups = self._lookups(r.values for r in records)
        out = _Decided()
        matches: list[_Match] = []
        unmatched: list[SourceRecord] = []
        candidates: dict[str, list[str]] = {}
        match_values: dict[str, tuple[Any, ...]] = {}
        for record in records:
            if record.key in linked:
                self.result.already_linked += 1
                out.handled.append(record)
                continue
            try:
                match = self._match(record, lookups)
            except PermanentError as exc:
                self._fail(out, record, exc, match_field=True)
                continue
            if match is None:
                unmatched.append(record)
                continue
            match_values[record.key] = match[0]
            candidates[record.key] = self.index.get(match[1], [])
        wanted = {t for found in candidates.values() for t in found}
        target_links = app.state.lookup_keys(self.pair, self.target.system, wanted) if wanted else {}
        for record in records:
            found = candidates.get(record.key)
            if found is None:
                continue
            if not found:
                unmatched.append(record)
                continue
            problem = self._ambiguity(found, target_links)
            if problem:
                self._ambiguous(out, record, match_values[record.key], problem)
                continue
            target_key = found[0]
            self.taken.add(target_key)
            try:
                mapped: dict[str, Any] | None = map_record(self.name, flow, record.key, record.values, lookups)
                error: Exception | None = None
            except MissingReferenceError as exc:
                mapped, error = None, exc
            except PermanentError as exc:
                mapped, error = None, exc
            matches.append((record, target_key, mapped, error))
            if self._mapped_key(record, lookups) not in (None, target_key):
                self.rekeyed += 1
        if matches:
            self._link(out, matches)
        self._create_all(out, unmatched, lookups, match_values)
        self._flush(out)

    def _match(self, record: SourceRecord, lookups: Lookups) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
        """(mapped match values, normalised) or None when a match value is empty; raises PermanentError."""
        mapped = map_record(self.name, self.match_flow, record.key, record.values, lookups)
        raw = tuple(mapped.get(name) for name in self.match_on)
        values = tuple(normalise(v, self.types.get(name)) for name, v in zip(self.match_on, raw, strict=True))
        return None if None in values else (raw, values)

    def _mapped_key(self, record: SourceRecord, lookups: Lookups) -> str | None:
        try:
            return key_of(self.target.key, map_record(self.name, self.key_flow, record.key, record.values, lookups))
        except PermanentError:
            return None

    def _ambiguity(self, found: list[str], target_links: dict[str, str]) -> str | None:
        target = f"{self.target.system} {self.target.entity}"
        if len(found) > 1:
            return f"{len(found)} candidates in {target}: {_named(found)}"
        target_key = found[0]
        if target_key in target_links:
            return f"{target} {target_key} is already linked to {self.source.system} record {target_links[target_key]}"
        if target_key in self.taken:
            return f"{target} {target_key} was matched to another {self.source.system} record earlier in this run"
        if self.claims[target_key] > 1:
            others = self.claimants.get(target_key, [])
            more = max(0, self.claims[target_key] - len(others))
            return (f"{target} {target_key} is matched by {self.claims[target_key]} {self.source.system} records: "
                    f"{', '.join(others)}" + (f" and {more} more" if more else ""))
        return None

    # -- outcomes ------------------------------------------------------------------------------------
    def _message(self, record: SourceRecord, flow_name: str | None = None) -> ChangeMessage:
        flow = self.app.config.flows[flow_name or self.name]
        return ChangeMessage(
            flow=flow_name or self.name, op="upsert", source_system=flow.source.system, entity=flow.source.entity,
            key=record.key, version=record.version, changed_at=record.changed_at, payload=record.values,
            correlation_id=self.result.run_id, first_enqueued_at=self.app.clock(),
        )

    def _create_all(self, out: _Decided, records: list[SourceRecord], lookups: Lookups,
                    match_values: dict[str, tuple[Any, ...]]) -> None:
        """Unmatched records are created, unless their key is taken on the target: an upsert would then
        overwrite a record that did not match (other match values), which is a guess too."""
        keys = {r.key: self._mapped_key(r, lookups) for r in records}
        wanted = [k for k in keys.values() if k is not None]
        existing = (self.app.connector(self.target.system).read_records(self.target.entity, self.target.key, wanted)
                    if wanted else {})
        for record in records:
            taken = keys[record.key]
            if taken in existing:
                raw = match_values.get(record.key) or (None,) * len(self.match_on)  # None: an empty match value
                self._ambiguous(out, record, raw, f"no {self.target.system} {self.target.entity} record matches, but "
                                f"{taken} already exists under the key the mapping gives; creating would overwrite it")
            else:
                self._create(out, record, lookups)

    def _create(self, out: _Decided, record: SourceRecord, lookups: Lookups) -> None:
        try:
            map_record(self.name, self.flow, record.key, record.values, lookups)
        except MissingReferenceError:
            pass  # the engine waits for the parent (or fetches it), as for any change
        except PermanentError as exc:
            self._fail(out, record, exc)
            return
        self.result.created += 1
        out.envelopes.append(to_envelope(self._message(record)))
        out.handled.append(record)

    def _fail(self, out: _Decided, record: SourceRecord, exc: PermanentError, match_field: bool = False) -> None:
        description = str(exc)
        if match_field and isinstance(exc, MissingReferenceError):
            description += (f" (a match field: initial sync cannot match this record before flow {exc.flow} has "
                            "linked the parent; run initial-sync for it first, then again for this flow)")
        self.result.failed += 1
        self._verdict(out, record, exc.reason, description)

    def _ambiguous(self, out: _Decided, record: SourceRecord, raw: tuple[Any, ...], problem: str) -> None:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(self.match_on, raw, strict=True))
        description = (f"flow {self.name} record {record.key}: ambiguous match on {shown}: {problem}; never guessed: "
                       "make the match unique (or link the records by hand), then run initial-sync again")
        self.result.ambiguous += 1
        self._verdict(out, record, Reason.AMBIGUOUS_MATCH, description)

    def _verdict(self, out: _Decided, record: SourceRecord, reason: str, description: str) -> None:
        out.verdicts.append(condemned(self._message(record), reason, description))
        out.failed.append((record, f"{reason}: {description}"))
        if len(self.result.examples) < MAX_EXAMPLES:
            self.result.examples.append(f"{reason}: {description}")

    def _link(self, out: _Decided, matches: list[_Match]) -> None:
        app, source, target = self.app, self.source.system, self.target.system
        rows = app.connector(target).read_records(self.target.entity, self.target.key, [m[1] for m in matches])
        record_ids = {m[0].key: self._record_id(m[0].key, m[1]) for m in matches}
        states = app.state.get_records(self.pair, record_ids.values())
        now = app.clock()
        winner = self.flow.master or source
        for record, target_key, mapped, error in matches:
            out.links.append(KeyLink(source, record.key, target, target_key))
            record_id = record_ids[record.key]
            state = states.get(record_id) or RecordState(record_id)
            state.record_id, state.synced_at = record_id, now
            out.states.append(state)
            row = rows.get(target_key)
            current = row.values if row else {}
            if isinstance(error, PermanentError) and not isinstance(error, MissingReferenceError):
                self._fail(out, record, error)  # linked, so a fix and a replay update the matched record
                continue
            self.result.matched += 1
            out.handled.append(record)
            observed = {name: canonical(record.values.get(name)) for name in self.source_fields}
            if mapped is not None and _holds(current, mapped):
                state.versions[source] = record.version
                state.remember(target, canonical_row(mapped))
                state.remember(source, observed)
            elif winner == source or mapped is None:
                # The target's values are the baseline, so apply sees only the source side as changed.
                state.remember(target, canonical_row({n: current.get(n) for n in (mapped or self.target_fields)}))
                out.envelopes.append(to_envelope(self._message(record)))
                self.result.aligned += 1
            else:
                state.versions[source] = record.version
                state.remember(source, observed)
                self._send_target_side(out, state, target_key, current, mapped)

    def _send_target_side(self, out: _Decided, state: RecordState, target_key: str, current: dict[str, Any],
                          mapped: dict[str, Any]) -> None:
        """The target is the master: its record goes through the reverse flow, if the pair has one."""
        if self.reverse_name is None:
            state.remember(self.target.system, canonical_row({n: current.get(n) for n in mapped}))
            return
        reverse = self.app.config.flows[self.reverse_name]
        record = self.app.connector(reverse.source.system).read_record(reverse.source, target_key)
        if record is None:  # gone since the scan: nothing to align
            return
        out.envelopes.append(to_envelope(self._message(record, self.reverse_name)))
        self.result.aligned += 1

    def _record_id(self, source_key: str, target_key: str) -> str:
        """The pair's anchor identity (as apply names records): the anchor system's key."""
        if self.anchor == self.source.system:
            return f"{self.anchor}|{source_key}"
        return f"{self.anchor}|{target_key}"

    def _lookups(self, payloads: Iterable[dict[str, Any]]) -> Lookups:
        wanted: dict[str, set[str]] = {}
        for payload in payloads:
            for lookup_flow, parent_key in lookup_requests(self.flow, payload):
                wanted.setdefault(lookup_flow, set()).add(parent_key)
        lookups: Lookups = {}
        for lookup_flow, keys in wanted.items():
            parent = self.app.config.flows[lookup_flow]
            found = self.app.state.lookup_keys(self.app.config.pair_of(lookup_flow), parent.source.system, keys)
            lookups.update({(lookup_flow, k): v for k, v in found.items()})
        return lookups

    def _flush(self, out: _Decided) -> None:
        app = self.app
        if out.links:
            app.state.link_keys(self.pair, out.links)
        if out.states:
            app.state.put_records(self.pair, out.states)
        record_verdicts(app, out.verdicts)
        envelopes = out.envelopes + out.verdicts
        if envelopes:
            app.bus.send(app.queue, envelopes)
        if out.handled or out.failed:
            connector = app.connector(self.source.system)
            if connector.capabilities.acknowledges(self.source):
                connector.acknowledge(self.source, out.handled, out.failed)


def _holds(current: dict[str, Any], mapped: dict[str, Any]) -> bool:
    """Does the target already hold every mapped value?"""
    return all(name in current and same_value(current[name], canonical(value)) for name, value in mapped.items())



def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMED])
    return shown + (f" and {len(keys) - MAX_NAMED} more" if len(keys) > MAX_NAMED else "")
