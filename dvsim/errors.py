"""The Dataverse errors the simulator returns, with their documented codes and messages.

Web API errors are JSON: ``{"error": {"code": "0x...", "message": "..."}}`` ("Compose HTTP requests and
handle errors"). Where Microsoft documents the text, it is copied here exactly, double spaces included;
where it does not, the message is the simulator's own and says so in the comment.
"""

from __future__ import annotations

import math
from typing import Any


class ODataError(Exception):
    """An error response: HTTP status plus the Dataverse error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# --- records ---------------------------------------------------------------------------------

def record_not_found(logical_name: str, record_id: str, status: int = 404) -> ODataError:
    # "Perform conditional operations using the Web API" (If-Match: * on a missing record);
    # code 0x80040217 is ObjectDoesNotExist.
    return ODataError(status, "0x80040217", f"{logical_name} With Id = {record_id} Does Not Exist")


def key_not_found(logical_name: str, status: int = 404) -> ODataError:
    # The message Dataverse returns when an alternate key matches no record (code 0x80060891).
    return ODataError(status, "0x80060891", f"A record with the specified key values does not exist in {logical_name} entity")


def record_exists() -> ODataError:
    # "Prevent update in upsert" (If-None-Match: *): 412 with this message. 0x80040237 is DuplicateRecord.
    return ODataError(412, "0x80040237", "A record with matching key values already exists.")


def duplicate_id() -> ODataError:
    return ODataError(412, "0x80040237", "Cannot insert duplicate key.")


def duplicate_key(key_name: str, attrs: tuple[str, ...]) -> ODataError:
    # DuplicateRecordEntityKey. Dataverse names display names; the simulator uses logical names.
    names = ", ".join(attrs)
    return ODataError(
        412,
        "0x80060892",
        f"A record that has the attribute values {names} already exists. The entity key {key_name} requires "
        "that this set of attributes contains unique values. Select unique values and try again.",
    )


def version_mismatch() -> ODataError:
    # "Apply optimistic concurrency": 412; 0x80060882 is ConcurrencyVersionMismatch.
    return ODataError(412, "0x80060882", "The version of the existing record doesn't match the RowVersion property provided.")


# --- payload and validation ------------------------------------------------------------------

def _payload_error(set_name: str, inner: str) -> ODataError:
    # The current Dataverse shape for payload (deserialization) errors, code 0x80048d19.
    return ODataError(
        400,
        "0x80048d19",
        f"Error identified in Payload provided by the user for Entity :'{set_name}', For more information on this "
        "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
        f"InnerException : Microsoft.OData.ODataException: {inner}",
    )


def unknown_property(set_name: str, type_name: str, prop: str) -> ODataError:
    return _payload_error(
        set_name,
        f"The property '{prop}' does not exist on type '{type_name}'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type.",
    )


def bad_literal(set_name: str, value: Any, edm_type: str) -> ODataError:
    return _payload_error(set_name, f"Cannot convert the literal '{value}' to the expected type '{edm_type}'.")


def bad_payload(set_name: str, detail: str) -> ODataError:
    return _payload_error(set_name, detail)


def max_length_exceeded(logical_name: str, attr: str, max_length: int) -> ODataError:
    # Verbatim from "Execute batch operations using the Web API" (note the two spaces after the first sentence).
    return ODataError(
        400,
        "0x80044331",
        f"A validation error occurred.  The length of the '{attr}' attribute of the '{logical_name}' entity "
        f"exceeded the maximum allowed length of '{max_length}'.",
    )


def option_out_of_range(logical_name: str, attr: str, value: Any, options: tuple[int, ...]) -> ODataError:
    # Dataverse's message for an option set value that is not defined (code 0x8004431a).
    accepted = ",".join(str(o) for o in options)
    return ODataError(
        400,
        "0x8004431a",
        f"A validation error occurred. The value {value} of '{attr}' on record of type '{logical_name}' is "
        f"outside the valid range. Accepted Values: {accepted}",
    )


def invalid_status(logical_name: str, record_id: str, status: int, state: int) -> ODataError:
    # InvalidStateCodeStatusCode. Dataverse names the state by its label (accountState.Active); the simulator
    # has no labels and gives the number.
    return ODataError(
        400, "0x8004431a",
        f"{status} is not a valid status code for state code {logical_name}State.{state} on {logical_name} "
        f"with Id {record_id}.")


def bind_wrong_target(set_name: str, nav: str, expected: str) -> ODataError:
    return bad_payload(set_name, f"The navigation property '{nav}' must reference the '{expected}' entity set.")


# --- requests and queries --------------------------------------------------------------------

def bad_request(message: str, code: str = "0x80060888") -> ODataError:
    # 0x80060888 is what Dataverse returns for malformed OData URLs/queries.
    return ODataError(400, code, message)


def property_not_found(type_name: str, prop: str) -> ODataError:
    return bad_request(f"Could not find a property named '{prop}' on type '{type_name}'.")


def segment_not_found(segment: str) -> ODataError:
    return ODataError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")


def method_not_allowed(method: str, path: str) -> ODataError:
    return ODataError(405, "0x80060888", f"The HTTP method '{method}' is not allowed on '{path}'.")


def track_changes_option_not_supported(option: str) -> ODataError:
    # Text from "Use change tracking to synchronize data with external systems"; the code is not documented.
    return bad_request(f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.')


def expired_delta_token() -> ODataError:
    # ErrorCodes.ExpiredVersionStamp 0x80044352 with the message quoted in Microsoft's samples. The HTTP
    # status is not documented; Dataverse maps platform faults like this one to 400.
    return ODataError(400, "0x80044352", "Version stamp associated with the client has expired. Please perform a full sync.")


def invalid_delta_token(token: str) -> ODataError:
    # A token the service cannot read (tampered, or from another table or organization). The text is the
    # simulator's own; like Dataverse, the answer is a 400 that a retry does not cure.
    return bad_request(f"The delta token '{token}' is not valid.")


# --- service faults --------------------------------------------------------------------------

def retry_after_text(seconds: float) -> str:
    """Dataverse sends whole seconds; below ten seconds (a test's scaled-down window) the simulator sends
    milliseconds too, so such a test neither waits a whole second per throttle nor loses the growth."""
    return str(math.ceil(seconds)) if seconds >= 10 else f"{math.ceil(seconds * 1000) / 1000:g}"


def _throttle(code: str, message: str, retry_after_s: float) -> ODataError:
    return ODataError(429, code, message, headers={"Retry-After": retry_after_text(retry_after_s)})


def too_many_requests(retry_after_s: float, limit: int = 6000, window_s: float = 300) -> ODataError:
    # "Service protection API limits": number-of-requests limit, hex code 0x80072322, with Retry-After seconds.
    return _throttle("0x80072322", f"Number of requests exceeded the limit of {limit} over time window of "
                     f"{window_s:g} seconds.", retry_after_s)


def execution_time_exceeded(retry_after_s: float, limit_s: float = 1200, window_s: float = 300) -> ODataError:
    # "Service protection API limits": execution time limit, hex code 0x80072321.
    return _throttle("0x80072321", f"Combined execution time of incoming requests exceeded limit of "
                     f"{round(limit_s * 1000):,} milliseconds over time window of {window_s:g} seconds. Decrease "
                     "number of concurrent requests or reduce the duration of requests and try again later.",
                     retry_after_s)


def too_many_concurrent(limit: int, retry_after_s: float) -> ODataError:
    # "Service protection API limits": concurrent requests limit, hex code 0x80072326.
    return _throttle("0x80072326", f"Number of concurrent requests exceeded the limit of {limit}.", retry_after_s)


def payload_too_large() -> str:
    # The front end refuses an oversized request before the Web API sees it; the docs give no error body for
    # it, so the simulator answers the way a web server does: plain text, no Dataverse error code.
    return "413 Request Entity Too Large: the request is larger than the service accepts."


def service_unavailable() -> ODataError:
    # Injected transient failure; the text is the simulator's own.
    return ODataError(503, "0x80040216", "An unexpected error occurred. (injected by dvsim)")
