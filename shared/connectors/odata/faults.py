"""What an OData service's refusals mean: its error body (``{"error": {"code", "message"}}``, JSON format
section 21), ``Retry-After`` (seconds or an HTTP date), and the port's error taxonomy for each status."""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from shared.errors import AuthError, PermanentError, Reason, SyncError, TransientError


class ODataError(Exception):
    """A non-2xx answer, with the service's error code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code} {message}".strip())
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def text(self) -> str:
        return " ".join(f"{self.code} {self.message}".split()) or f"HTTP {self.status}"


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    with suppress(ValueError):  # seconds; otherwise an HTTP date
        return max(0.0, float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_of(status: int, headers: Any, body: bytes | Any) -> ODataError:
    """The error an answer carries; ``body`` is bytes, or the parsed JSON of a JSON ``$batch`` part."""
    code, message = "", ""
    data: Any
    if isinstance(body, bytes | bytearray):
        try:
            data = json.loads(body) if body and body.strip() else None
        except ValueError:
            data = None
        text = bytes(body).decode("utf-8", "replace")
    else:
        data = body
        text = body if isinstance(body, str) else ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        code = str(data["error"].get("code") or "")
        message = str(data["error"].get("message") or "")
    elif text.strip():
        message = text.strip().splitlines()[0][:500]
    found = None
    if headers:
        found = headers.get("retry-after") or headers.get("Retry-After")
    return ODataError(status, code, message, retry_after(found))


def sync_error(err: ODataError, what: str) -> SyncError:
    """429 and 5xx, 408 are transient (with Retry-After); 401/403 auth; any other refusal is permanent."""
    if err.status == 429:
        return TransientError(f"{what}: 429 Too Many Requests: {err.text()}", retry_after=err.retry_after,
                              throttled=True)
    if err.status >= 500 or err.status == 408:
        return TransientError(f"{what}: {err.status}: {err.text()}", retry_after=err.retry_after)
    if err.status in (401, 403):
        return AuthError(f"{what}: {err.status}: {err.text()}")
    return PermanentError(Reason.TARGET_REJECTED, f"{what}: {err.text()}")
