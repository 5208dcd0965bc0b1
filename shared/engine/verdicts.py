"""Messages that are sent already condemned: the sender knows they must be dead-lettered, never applied.

Initial sync decides some records' fate itself (an ambiguous match, a record it cannot map), but neither
Service Bus nor the bus port can put a message straight into a dead-letter queue: only a receiver can
dead-letter what it holds. So the verdict travels with the message:

- `condemned()` builds the envelope of a normal ChangeMessage (its real payload, so replay and Service
  Bus Explorer show the record) with two extra application properties, `dead_letter_reason` and
  `dead_letter_description`, and a message_id of its own (`...:verdict`), so a pulled copy of the same
  version is never taken for a duplicate of it, nor it for a duplicate of the pulled copy;
- `record_verdicts()` also writes each verdict to the failure ledger under that message_id, which the
  plain (auto-complete) trigger already consults before applying anything (`handle_with_ledger`);
- `verdict_outcome()` is what the apply step calls first for every received message: a condemned
  message becomes a DEAD_LETTER outcome with the carried reason and description, and is never applied.

Receiving our own messages back to dead-letter them would be racy (a worker may take one first and apply
it) and would bump the delivery count of every other message received and abandoned on the way.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.app import SyncApp
from shared.engine.outcome import Kind, Outcome
from shared.messages import VERDICT_DESCRIPTION, VERDICT_REASON, ChangeMessage, Envelope, bounded_id, to_envelope
from shared.ports.bus import Received

REASON_PROPERTY = VERDICT_REASON
DESCRIPTION_PROPERTY = VERDICT_DESCRIPTION
MAX_DESCRIPTION = 4096  # what settle() passes to dead_letter


def condemned(message: ChangeMessage, reason: str, description: str) -> Envelope:
    envelope = to_envelope(message, message_id=bounded_id(f"{message.base_message_id()}:verdict"))
    properties = {**envelope.application_properties, REASON_PROPERTY: str(reason),
                  DESCRIPTION_PROPERTY: description[:MAX_DESCRIPTION]}
    return envelope.model_copy(update={"application_properties": properties})


def record_verdicts(app: SyncApp, envelopes: Sequence[Envelope]) -> None:
    """Write condemned envelopes' verdicts to the failure ledger (before they are sent)."""
    for envelope in envelopes:
        props = envelope.application_properties
        if REASON_PROPERTY in props:
            app.state.record_failure(app.queue, envelope.message_id, str(props[REASON_PROPERTY]),
                                     str(props.get(DESCRIPTION_PROPERTY, "")))


def verdict_outcome(received: Received, message: ChangeMessage | None = None) -> Outcome | None:
    """A DEAD_LETTER outcome for a condemned message, or None for every other message."""
    props = received.envelope.application_properties
    reason = props.get(REASON_PROPERTY)
    if not reason:
        return None
    return Outcome(received, message, Kind.DEAD_LETTER, str(reason), str(props.get(DESCRIPTION_PROPERTY, "")))
