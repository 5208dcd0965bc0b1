"""Deletes that name a record only by the source's own id (`SourceRecord.source_id`), for flows keyed by
another column: Dataverse's `$deletedEntity` rows carry the primary id, never the alternate key.

As records are pulled, their id -> flow key is remembered in the pair's key map partition; a delete that
comes with only an id is given its key from there before it is sent, and the alias is dropped after. A
delete whose id was never remembered (a record created and deleted between two reads, or pulled before
this was in place) cannot be named: it is left out with a note. A full read remembers every live record,
so resetting the flow's cursor once covers records pulled before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shared.app import SyncApp
from shared.config import Flow
from shared.ports.connector import SourceRecord


@dataclass
class Named:
    records: list[SourceRecord]
    resolved: list[str] = field(default_factory=list)  # ids of the deletes given their key
    unresolved: int = 0  # deletes left out: their id was never seen


def remember(app: SyncApp, flow_name: str, flow: Flow, records: list[SourceRecord]) -> dict[str, str]:
    """Remember the ids of the records read (any read that moves the flow's cursor); returns them."""
    fresh = {r.source_id: r.key for r in records if r.source_id and not r.deleted and r.key != r.source_id}
    if fresh:
        app.state.put_aliases(app.config.pair_of(flow_name), flow.source.system, flow.source.entity, fresh)
    return fresh


def name_deletes(app: SyncApp, flow_name: str, flow: Flow, records: list[SourceRecord]) -> Named:
    """Remember the ids of the records read, and give each delete known only by its id its flow key."""
    pair, system, entity = app.config.pair_of(flow_name), flow.source.system, flow.source.entity
    fresh = remember(app, flow_name, flow, records)
    if not any(_by_id_only(r) for r in records):
        return Named(records)
    wanted = [r.source_id for r in records if _by_id_only(r) and r.source_id not in fresh]
    known = (app.state.get_aliases(pair, system, entity, wanted) if wanted else {}) | fresh
    named = Named([])
    for record in records:
        if _by_id_only(record):
            key = known.get(record.source_id or "")
            if key is None:
                named.unresolved += 1
                continue
            named.resolved.append(record.source_id or "")
            record = replace(record, key=key)
        named.records.append(record)
    return named


def forget(app: SyncApp, flow_name: str, flow: Flow, named: Named) -> None:
    """After the deletes were sent: their records are gone, and so is the need to name them."""
    if named.resolved:
        app.state.drop_aliases(app.config.pair_of(flow_name), flow.source.system, flow.source.entity,
                               named.resolved)


def _by_id_only(record: SourceRecord) -> bool:
    return record.deleted and not record.key and bool(record.source_id)
