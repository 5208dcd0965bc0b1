"""Change mode `snapshot`: a source without any change marker (a file export) hands over every row each time;
pull sends only the rows that changed, so an unchanged row is never put on the bus.

A row is compared with what is known of its record:
- with the record state (the values last synced from this source, by the one equivalence rule apply uses),
  when nothing this mode sent for the record is still unsettled;
- with the fingerprint this mode last sent for it, while that change may still be in flight (its version is
  newer than the version the record state has applied). The record state lags the bus: a row edited in one
  export and edited back in the next must still travel, although it equals the state, or the first edit would
  win at the target. A change apply skipped or dead-lettered stays "in flight" for good, so the same row is
  not sent (nor dead-lettered) again with every export, until it changes.

A delete this mode sent (an inferred delete, confirmed at the source by shared.engine.deletes) is remembered
as such: the row that comes back is sent again whatever its values (once; then it is compared as above).

The markers live beside the key map (`StateStore.put_sent`); they are written after the page is on the bus
and before the cursor moves, so a crash in between re-sends the page (dropped as a duplicate), never loses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shared.app import SyncApp
from shared.engine.identity import record_id
from shared.engine.values import equivalence, unchanged
from shared.messages import fingerprint
from shared.ports.connector import SourceRecord
from shared.state.store import RecordState

MODE = "snapshot"


def row_fingerprint(app: SyncApp, flow_name: str, record: SourceRecord) -> str:
    """The fingerprint of the fields the flow reads: a change to a column nobody syncs is no change."""
    fields = [fm.from_ for fm in app.config.flows[flow_name].fields]
    return fingerprint({name: record.values.get(name) for name in fields})


def changed(app: SyncApp, flow_name: str, records: Sequence[SourceRecord]) -> list[SourceRecord]:
    """The records to send: new, changed, refused (they are dead-lettered, once), or deletes."""
    if not records:
        return []
    flow = app.config.flows[flow_name]
    pair, source = app.config.pair_of(flow_name), flow.source.system
    keys = [r.key for r in records]
    sent = app.state.get_sent(pair, source, flow.source.entity, keys)
    links = app.state.lookup_keys(pair, source, keys)
    ids = {key: record_id(app.config, flow_name, key, links) for key in keys}
    states = app.state.get_records(pair, ids.values())
    rules = equivalence(flow, app.connector(source), app.connector(flow.target.system))
    fields = [fm.from_ for fm in flow.fields]

    def same(record: SourceRecord) -> bool:
        marker, state = sent.get(record.key), states.get(ids[record.key])
        if marker is not None and marker.get("deleted"):
            return False  # its delete may still be on its way: the row that came back must follow it
        if marker is None or _settled(marker, state, source):
            return (state is not None and source not in state.tombstones
                    and unchanged(rules, fields, record.values, state.values.get(source)))
        return marker.get("fingerprint") == row_fingerprint(app, flow_name, record)

    return [r for r in records if r.deleted or not same(r)]


def _settled(marker: dict[str, Any], state: RecordState | None, source: str) -> bool:
    """What was last sent has been applied (or overtaken): the record state tells the truth again."""
    applied = state.versions.get(source) if state else None
    return applied is not None and applied >= str(marker.get("version", ""))


def remember_sent(app: SyncApp, flow_name: str, records: Sequence[SourceRecord]) -> None:
    if not records:
        return
    flow = app.config.flows[flow_name]
    app.state.put_sent(app.config.pair_of(flow_name), flow.source.system, flow.source.entity, {
        r.key: {"deleted": True} if r.deleted
        else {"fingerprint": row_fingerprint(app, flow_name, r), "version": r.version}
        for r in records})


def deletes_sent(app: SyncApp, flow_name: str) -> Callable[[list[str]], None] | None:
    """What shared.engine.deletes tells once inferred deletes of this flow are on the bus (a full read's, a
    reconciliation's): for this mode, remember them, so the row that comes back is a change whatever its
    values."""
    flow = app.config.flows[flow_name]
    if flow.source.changes != MODE:
        return None

    def remember(keys: list[str]) -> None:
        app.state.put_sent(app.config.pair_of(flow_name), flow.source.system, flow.source.entity,
                           {key: {"deleted": True} for key in keys})

    return remember
