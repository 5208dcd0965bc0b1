"""Delete changes the engine infers itself (a full read or a key-set reconciliation found a key gone).

One mechanism for both: a candidate (a linked key the read did not see) is re-read from the source
(`read_records`, one query per batch) and only a key the source still lacks becomes a delete. So a row the
read skipped (a NULL watermark), a record created and linked while the read ran, or a read that was not a
snapshot at all, never turns into a false delete.

An inferred delete has no version of its own: the source keeps none for a row that is gone. Its message
version is the last applied version plus a suffix, so two inferences of the same deletion share one
message_id (duplicate detection drops one) and a stale inference sorts below a newer applied edit. It is
marked `inferred`, and apply then leaves the remembered version where it was and records a tombstone
instead: any real change of that record from then on (a later edit, or a restore carrying the very version
last applied) is applied, whatever the source's version format (timestamps, counters, opaque strings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from shared.app import SyncApp
from shared.engine.batching import chunked
from shared.engine.identity import record_id
from shared.messages import ChangeMessage, to_envelope
from shared.state.store import RecordState

DELETE_SUFFIX = "~deleted"
BATCH = 500


@dataclass
class Confirmed:
    sent: int = 0  # delete messages sent
    duplicates: int = 0  # of those, dropped by duplicate detection (sent before)
    present: int = 0  # candidates the re-read still found


def send_confirmed_deletes(app: SyncApp, flow_name: str, candidates: Iterable[str], run_id: str,
                           batch_size: int = BATCH, on_sent: Callable[[list[str]], None] | None = None) -> Confirmed:
    """Re-read each batch of candidate keys at the source; send a delete for each one it no longer has.
    `on_sent` is told the keys of each batch of deletes once they are on the bus."""
    source = app.config.flows[flow_name].source
    connector = app.connector(source.system)
    confirmed = Confirmed()
    for chunk in chunked(candidates, batch_size):
        still_there = connector.read_records(source.entity, source.key, chunk)
        gone = [key for key in chunk if key not in still_there]
        confirmed.present += len(chunk) - len(gone)
        if gone:
            accepted = app.bus.send(app.queue, [to_envelope(m) for m in delete_messages(app, flow_name, gone, run_id)])
            confirmed.sent += len(gone)
            if on_sent:
                on_sent(gone)
            if accepted is not None:
                confirmed.duplicates += len(gone) - accepted
    return confirmed


def delete_messages(app: SyncApp, flow_name: str, keys: Sequence[str], run_id: str) -> list[ChangeMessage]:
    flow = app.config.flows[flow_name]
    pair = app.config.pair_of(flow_name)
    source = flow.source.system
    links = app.state.lookup_keys(pair, source, keys) if source != app.config.anchor_of(flow_name) else {}
    ids = {key: record_id(app.config, flow_name, key, links) for key in keys}
    states = app.state.get_records(pair, ids.values())
    now = app.clock()
    messages = []
    for key in keys:
        state = states.get(ids[key])
        last = state.versions.get(source, "") if state else ""
        messages.append(ChangeMessage(
            flow=flow_name, op="delete", source_system=source, entity=flow.source.entity,
            key=key, version=last + DELETE_SUFFIX, changed_at=now, correlation_id=run_id, inferred=True,
        ))
    return messages


def ordering(message: ChangeMessage) -> tuple[str, bool]:
    """Sorts the changes of one record oldest first: an inferred delete sits at the version it was inferred
    after, above a real change of that same version (a redelivery) and below every newer real change."""
    if message.inferred and message.version.endswith(DELETE_SUFFIX):
        return message.version[: -len(DELETE_SUFFIX)], True
    return message.version, False


def already_applied(state: RecordState | None, system: str, message: ChangeMessage) -> bool:
    """Not newer than what was applied from `system`. After an inferred delete (a tombstone), a real change
    of the version last applied is a restore and counts as new, and the same deletion inferred again (a
    deactivated record stays linked, so every full read finds it again) is not."""
    applied = state.versions.get(system) if state else None
    tombstoned = state is not None and system in state.tombstones
    if message.inferred and tombstoned:
        return ordering(message)[0] <= (applied or "")
    if applied is None or message.version > applied:
        return False
    return not (tombstoned and message.version == applied)


def record_applied(state: RecordState, system: str, message: ChangeMessage) -> None:
    """What apply remembers of a change it wrote: its version, or for an inferred delete a tombstone."""
    if message.inferred:
        state.tombstones[system] = message.changed_at.isoformat()
    else:
        state.versions[system] = message.version
        state.tombstones.pop(system, None)
