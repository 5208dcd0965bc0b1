"""The message contract between pull and apply (`ChangeMessage`) and its bus envelope.

The envelope carries what Service Bus (and the SQLite bus that mirrors it) needs to route, de-duplicate
and let an operator filter: message_id, subject, correlation_id and application properties.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Service Bus caps message_id at 128 characters.
MAX_MESSAGE_ID = 128
# Application properties of a message sent already condemned (shared/engine/verdicts.py, the claim check's
# stubs in shared/bus/claim_check.py): apply dead-letters it with this reason and description, never applies it.
VERDICT_REASON = "dead_letter_reason"
VERDICT_DESCRIPTION = "dead_letter_description"

# Format of a ChangeMessage body, carried as `v`. 1: the bodies of releases before `v` existed; 2: adds `v`,
# `throttles` and `throttled_since` (a v1 body reads as not throttled). A release reads every earlier format
# (upgrading it step by step, `_UPGRADES`) and leaves a newer one on the bus for a newer release (`NewerFormat`):
# a deployment never dead-letters the messages in flight. Bump it, and add the step from the previous format,
# whenever a field is added, renamed or changes meaning.
MESSAGE_FORMAT = 2


class NewerFormat(ValueError):
    """The body was written by a newer release; this one must not guess at it."""

    def __init__(self, found: object, known: int) -> None:
        super().__init__(f"message format v{found} is newer than this release reads (v{known})")
        self.found = found


class ChangeMessage(BaseModel):
    # NaN and Infinity travel as themselves (not as null), so apply can refuse them naming the field.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    v: int = Field(default=MESSAGE_FORMAT, strict=True, ge=1)
    flow: str = Field(min_length=1)
    op: Literal["upsert", "delete"]
    source_system: str = Field(min_length=1)
    entity: str = Field(min_length=1)
    key: str = Field(min_length=1)
    version: str = Field(min_length=1)
    changed_at: datetime
    payload: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str = ""
    attempt: int = Field(default=1, ge=1)  # counts errors only; throttling has its own budget (in time)
    throttles: int = Field(default=0, ge=0)  # times the target throttled this change (429, Retry-After)
    throttled_since: datetime | None = None  # when it was first throttled: the throttle budget runs from here
    # Operator decisions: `force` re-applies whatever the version, echo and conflict checks say (resync,
    # a conflict resolved for this side); `approved` carries a reviewed change request past review.
    force: bool = False
    approved: bool = False
    # A delete the engine inferred (the record is missing at its source); see shared.engine.deletes.
    inferred: bool = False
    correlation_id: str = ""
    first_enqueued_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def base_message_id(self) -> str:
        return bounded_id(f"{self.flow}:{self.key}:{self.version}")

    def message_id(self) -> str:
        """Deterministic, so a re-sent pull is dropped by duplicate detection; every re-send is new."""
        if self.attempt == 1 and not self.throttles:
            return self.base_message_id()
        throttled = f"t{self.throttles}" if self.throttles else ""
        return bounded_id(f"{self.flow}:{self.key}:{self.version}:r{self.attempt}{throttled}")

    def restarted(self, **changes: Any) -> ChangeMessage:
        """The change sent anew (replay, an operator's decision): attempts and the throttle budget start over."""
        return self.model_copy(update={**changes, "attempt": 1, "throttles": 0, "throttled_since": None})

    def retry_clone(self) -> ChangeMessage:
        """The next attempt after an error."""
        return self.model_copy(update={"attempt": self.attempt + 1})

    def throttled_clone(self, now: datetime) -> ChangeMessage:
        """The same attempt again after the target throttled it: attempts stay for errors."""
        return self.model_copy(update={"throttles": self.throttles + 1, "throttled_since": self.throttled_since or now})


class Envelope(BaseModel):
    """One message as the bus port sends and receives it."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    body: bytes
    subject: str = ""
    correlation_id: str = ""
    content_type: str = "application/json"
    application_properties: dict[str, str | int] = Field(default_factory=dict)
    scheduled_enqueue_time_utc: datetime | None = None


def bounded_id(raw: str) -> str:
    if len(raw) <= MAX_MESSAGE_ID:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:32]
    return f"{raw[: MAX_MESSAGE_ID - 33]}~{digest}"


def to_envelope(
    message: ChangeMessage, *, message_id: str | None = None, scheduled_at: datetime | None = None
) -> Envelope:
    return Envelope(
        message_id=message_id or message.message_id(),
        body=message.model_dump_json().encode(),
        subject=message.flow,
        correlation_id=message.correlation_id,
        application_properties={
            "flow": message.flow,
            "entity": message.entity,
            "key": message.key,
            "op": message.op,
            "attempt": message.attempt,
            "version": message.version,
        },
        scheduled_enqueue_time_utc=scheduled_at,
    )


def parse_body(body: bytes | str) -> ChangeMessage:
    """A body of this release's format or an earlier one (upgraded). Raises `NewerFormat` for a body of a
    newer release, pydantic.ValidationError or ValueError on a malformed body."""
    try:  # this release's own bodies: one pass of pydantic's JSON parser (half the cost of the way below)
        message = ChangeMessage.model_validate_json(body)
        if "v" in message.model_fields_set and message.v == MESSAGE_FORMAT:
            return message
    except ValidationError:
        pass  # malformed, or of another format: the way below tells which
    data = json.loads(body)  # NaN and Infinity come back as floats, as they were sent
    if not isinstance(data, dict):
        return ChangeMessage.model_validate_json(body)  # names what is wrong with it
    found = data.get("v", 1)
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise ValueError(f"v: not a message format: {found!r}")
    if found > MESSAGE_FORMAT:
        raise NewerFormat(found, MESSAGE_FORMAT)
    for step in range(found, MESSAGE_FORMAT):
        data = _UPGRADES[step](data)
    return ChangeMessage.model_validate(data)


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "v": 2}


# format n -> format n + 1
_UPGRADES = {1: _v1_to_v2}


def fingerprint(values: dict[str, Any]) -> str:
    """Stable hash of field values, so 'what we last wrote' compares equal to its echo."""
    canonical = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex
