"""Delete changes the engine infers itself (a full read or a key-set reconciliation found a key gone).

Their version is the last applied version plus a suffix, so it sorts after everything applied for the
record and two inferences of the same deletion share one message_id (duplicate detection drops one).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.app import SyncApp
from shared.engine.identity import record_id
from shared.messages import ChangeMessage

DELETE_SUFFIX = "~deleted"


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
            key=key, version=last + DELETE_SUFFIX, changed_at=now, correlation_id=run_id,
        ))
    return messages
