"""What a Blob Storage failure means, decided once for every user of blobs (the payload store, the files
connector): transient (throttling, 5xx, timeouts, a lost connection: it may pass on its own) or not (no such
account or container, access denied, a bad request). The detail names the status and error code only: the
SDK's own message may quote a URL with a SAS or the account's connection string."""

from __future__ import annotations

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def classify(exc: Exception) -> tuple[bool, str]:
    """(transient, detail) of an exception raised by azure-storage-blob."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    transient = isinstance(exc, ServiceRequestError | ServiceResponseError) or status in _TRANSIENT_STATUS
    if isinstance(exc, HttpResponseError) and status is None:
        transient = True
    return transient, ", ".join(str(p) for p in (status, code) if p) or type(exc).__name__
