"""Resync one record: read it from its source now and send it forced under a new message_id.

`force` tells apply to write it whatever the version, echo and conflict checks say (an operator's
decision, e.g. after the target was edited by hand); it counts only with the grant recorded in state
(shared.engine.grants), so a message alone cannot claim it. The message_id is new every time (`...:resync-<id>`),
so neither duplicate detection nor an earlier resync can swallow it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.app import SyncApp
from shared.engine.grants import FORCE, granted
from shared.errors import ConfigError, SyncError
from shared.messages import ChangeMessage, bounded_id, new_run_id, to_envelope


class RecordNotFoundError(SyncError):
    """The source has no record with that key (nothing to resync; a delete travels as its own change)."""


@dataclass
class ResyncResult:
    flow: str
    key: str
    version: str
    message_id: str


def resync(app: SyncApp, flow_name: str, key: str) -> ResyncResult:
    flow = app.config.flows.get(flow_name)
    if flow is None:
        raise ConfigError([f"no flow named {flow_name!r}; flows: {', '.join(app.config.flows)}"])
    record = app.connector(flow.source.system).read_record(flow.source, key)
    if record is None:
        raise RecordNotFoundError(
            f"flow {flow_name}: record {key!r} not found in {flow.source.system} {flow.source.entity}; "
            "nothing to resync"
        )
    message = ChangeMessage(
        flow=flow_name, op="upsert", source_system=flow.source.system, entity=flow.source.entity,
        key=record.key, version=record.version, changed_at=record.changed_at, payload=record.values,
        correlation_id=new_run_id(), first_enqueued_at=app.clock(),
    )
    message = granted(app, message, FORCE)
    message_id = bounded_id(f"{message.base_message_id()}:resync-{uuid.uuid4().hex[:8]}")
    app.bus.send(app.queue, [to_envelope(message, message_id=message_id)])
    return ResyncResult(flow_name, record.key, record.version, message_id)
