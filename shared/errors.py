"""The failure taxonomy every connector and engine step speaks.

The engine turns these into outcomes: transient -> retry later, permanent -> dead-letter at once,
auth -> pause the flow and leave the message where it is.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Dead-letter reasons an operator sees in Service Bus Explorer."""

    VALIDATION_FAILED = "ValidationFailed"
    MAPPING_FAILED = "MappingFailed"
    MISSING_REFERENCE = "MissingReference"
    UNKNOWN_FLOW = "UnknownFlow"
    MALFORMED_MESSAGE = "MalformedMessage"
    TARGET_REJECTED = "TargetRejected"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    CONFLICT = "Conflict"
    AMBIGUOUS_MATCH = "AmbiguousMatch"
    DUPLICATE_TARGET_KEY = "DuplicateTargetKey"  # two source records map to one target row
    # A message too large for the bus (shared/bus/claim_check.py): no payload store to carry it by reference,
    # a stub whose body was not fetched before apply, or a body no longer in the store.
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    PAYLOAD_NOT_FETCHED = "PayloadNotFetched"
    PAYLOAD_MISSING = "PayloadMissing"


class SyncError(Exception):
    """Base of every error the engine knows how to classify."""


class TransientError(SyncError):
    """Worth trying again later: throttling (429), 5xx, timeouts, lost connections.

    `throttled`: the system asked us to slow down (a 429, or any answer with Retry-After) rather than failed;
    the engine budgets that by time, not by attempts. By default: whenever the system said when to come back.
    """

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = retry_after is not None if throttled is None else throttled


class PermanentError(SyncError):
    """Will fail the same way every time until someone fixes data or config."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MissingReferenceError(PermanentError):
    """A lookup's parent has no key-map entry yet; waits with backoff up to a bound, then dead-letters."""

    def __init__(self, message: str, flow: str = "", key: str = "") -> None:
        super().__init__(Reason.MISSING_REFERENCE, message)
        self.flow = flow
        self.key = key


class TargetChanged(PermanentError):
    """A conditional write found the target row no longer as it was read (412 on If-Match, a guarded UPDATE
    that matched no row, a create-only write of a row someone created meanwhile). Apply decides again."""


class AuthError(SyncError):
    """401/403: retrying will not help and dead-lettering would lose nothing but time; pause the flow."""


class UnsafeLinkError(SyncError):
    """A link (an OData next/delta link from a response or from stored state) points outside the system's
    configured origin and API path, or repeats an earlier page: it is not followed, so the credential is never
    sent anywhere else and a paging loop cannot run forever."""


class ConcurrencyError(SyncError):
    """An etag-guarded write lost the race (the row changed or already exists)."""


class ConfigError(SyncError):
    """The flows file is invalid; carries every problem with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class LockLostError(SyncError):
    """Settling a message whose peek-lock expired (another receiver may hold it now)."""
