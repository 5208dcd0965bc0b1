"""``$batch``: multipart/mixed requests and responses, change sets, Content-ID references.

Behaviour follows "Execute batch operations using the Web API" (Dataverse) and OData 4.0 section 11.7:

* Up to 1,000 requests per batch (operations inside change sets count individually); no nested batches.
* Operations run in order; responses come back in the same order, each an ``application/http`` part.
* A change set is atomic: if one of its operations fails, the whole change set is rolled back and its
  response is that single failed operation (not a nested multipart).
* Without ``Prefer: odata.continue-on-error`` processing stops at the first failure, and the batch's own
  status is that failure's status (Dataverse documents ``400 BadRequest`` for a 400 inside); with it, every
  operation runs and the batch returns 200.
* ``Content-ID: n`` inside a change set makes ``$n`` refer to the record that operation created, in a URL
  (``PATCH $1``) or a bind (``"primarycontactid@odata.bind": "$1"``).

The second half of the module is a small client (build a request body, parse a response) used by tests.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from typing import Any, Union
from urllib.parse import parse_qsl, unquote, urlsplit

from . import errors
from .api import ApiRequest, ApiResponse, BatchScope, DataverseApi, error_response, parse_prefer

MAX_REQUESTS_PER_BATCH = 1000
_API_PATH_RE = re.compile(r"/api/data/v\d+\.\d+/(.*)$", re.DOTALL)


@dataclass
class Operation:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    content_id: str | None = None


@dataclass
class ChangeSet:
    operations: list[Operation]


BatchItem = Union[Operation, ChangeSet]


# --- multipart plumbing (shared by server and client) ---------------------------------------------

def boundary_of(content_type: str) -> str | None:
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/mixed":
        return None
    value = msg.get_param("boundary")
    return value if isinstance(value, str) else None


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts between ``--boundary`` lines, up to ``--boundary--``. Accepts CRLF or LF line ends."""
    delimiter = b"--" + boundary.encode()
    parts: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in body.split(b"\n"):
        line = line.rstrip(b"\r")
        marker = line.rstrip()
        if marker == delimiter + b"--":
            break
        if marker == delimiter:
            current = []
            parts.append(current)
        elif current is not None:
            current.append(line)
    return [b"\n".join(p) for p in parts]


def split_headers(block: bytes) -> tuple[dict[str, str], bytes]:
    """MIME/HTTP headers up to the first empty line, and everything after it."""
    lines = block.split(b"\n")
    headers: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].strip():
        name, sep, value = lines[i].decode("latin-1").partition(":")
        if not sep:
            raise errors.bad_request(f"Malformed header line in batch part: {lines[i]!r}")
        headers[name.strip().lower()] = value.strip()
        i += 1
    return headers, b"\n".join(lines[i + 1 :])


def _http_part(content: bytes) -> tuple[str, dict[str, str], bytes]:
    """An embedded HTTP message: (start line, headers, body)."""
    content = content.lstrip(b"\r\n")
    start, _, rest = content.partition(b"\n")
    headers, body = split_headers(rest)
    return start.decode("latin-1").strip(), headers, body.strip()


# --- server side ------------------------------------------------------------------------------

def parse_batch_request(body: bytes, boundary: str) -> list[BatchItem]:
    items: list[BatchItem] = []
    for part in split_multipart(body, boundary):
        part_headers, content = split_headers(part)
        ctype = part_headers.get("content-type", "")
        inner_boundary = boundary_of(ctype)
        if inner_boundary:
            ops = [_parse_operation(p) for p in split_multipart(content, inner_boundary)]
            items.append(ChangeSet(ops))
        else:
            items.append(_parse_operation(part))
    return items


def _parse_operation(part: bytes) -> Operation:
    part_headers, content = split_headers(part)
    if part_headers.get("content-type", "application/http").split(";")[0].strip().lower() != "application/http":
        raise errors.bad_request("Each batch part must have Content-Type: application/http.")
    start, headers, body = _http_part(content)
    words = start.split()
    if len(words) < 2:
        raise errors.bad_request(f"Malformed request line in batch part: '{start}'.")
    return Operation(words[0].upper(), words[1], headers, body, part_headers.get("content-id"))


def execute_batch(api: DataverseApi, req: ApiRequest) -> ApiResponse:
    boundary = boundary_of(req.header("content-type") or "")
    if not boundary:
        raise errors.bad_request("A batch request must have Content-Type: multipart/mixed with a boundary.")
    items = parse_batch_request(req.body, boundary)
    count = sum(len(i.operations) if isinstance(i, ChangeSet) else 1 for i in items)
    if count > MAX_REQUESTS_PER_BATCH:
        # The limit is documented; this message is the simulator's own.
        raise errors.bad_request(
            f"The batch contains {count} requests; the maximum is {MAX_REQUESTS_PER_BATCH}."
        )
    continue_on_error = "odata.continue-on-error" in parse_prefer(req.header("prefer"))
    parts: list[bytes] = []
    stopped_with: int | None = None
    for item in items:
        if isinstance(item, ChangeSet):
            part, failed_status = _run_changeset(api, req, item)
        else:
            resp = _run_operation(api, req, item, BatchScope())
            part = render_http_part(resp, item.content_id)
            failed_status = resp.status if resp.status >= 400 else None
        parts.append(part)
        if failed_status is not None and not continue_on_error:
            stopped_with = failed_status
            break
    boundary_out = f"batchresponse_{uuid.uuid4()}"
    headers = {"Content-Type": f"multipart/mixed; boundary={boundary_out}", "OData-Version": "4.0"}
    if continue_on_error:
        headers["Preference-Applied"] = "odata.continue-on-error"
    return ApiResponse(stopped_with or 200, headers, render_multipart(parts, boundary_out), "batch")


def _operation_request(outer: ApiRequest, op: Operation) -> ApiRequest:
    if op.url.startswith("$"):
        path, _, query = op.url.partition("?")
    else:
        split = urlsplit(op.url)
        path, query = unquote(split.path), split.query
        m = _API_PATH_RE.search(path)
        if m:
            path = m.group(1)
        elif path.startswith("/"):
            raise errors.bad_request(f"The URL '{op.url}' in the batch is not under the Web API service root.")
    return ApiRequest(
        method=op.method,
        path=path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        headers=op.headers,
        body=op.body,
        service_root=outer.service_root,
    )


def _run_operation(api: DataverseApi, outer: ApiRequest, op: Operation, scope: BatchScope) -> ApiResponse:
    try:
        resp = api.handle(_operation_request(outer, op), scope)
    except errors.ODataError as err:  # a malformed operation URL
        resp = error_response(err)
    api.stats.record_batch_operation(resp.kind)
    return resp


class _RollBack(Exception):
    pass


def _run_changeset(api: DataverseApi, outer: ApiRequest, changeset: ChangeSet) -> tuple[bytes, int | None]:
    scope = BatchScope(in_changeset=True)
    done: list[tuple[Operation, ApiResponse]] = []
    failed: tuple[Operation, ApiResponse] | None = None
    try:
        with api.store.transaction():
            for op in changeset.operations:
                if op.method == "GET":
                    resp = error_response(errors.bad_request("GET requests are not allowed in a change set."))
                else:
                    resp = _run_operation(api, outer, op, scope)
                if resp.status >= 400:
                    failed = (op, resp)
                    raise _RollBack
                done.append((op, resp))
                entity_url = resp.headers.get("OData-EntityId")
                if op.content_id and entity_url:
                    scope.content_ids[op.content_id] = entity_url.removeprefix(outer.service_root)
    except _RollBack:
        assert failed is not None
        op, resp = failed
        return render_http_part(resp, op.content_id), resp.status
    boundary = f"changesetresponse_{uuid.uuid4()}"
    inner = render_multipart([render_http_part(r, op.content_id) for op, r in done], boundary)
    # The outer delimiter follows the change set's closing delimiter directly, as in Dataverse's examples.
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n".encode() + inner.removesuffix(b"\r\n"), None


def render_http_part(resp: ApiResponse, content_id: str | None) -> bytes:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"HTTP/1.1 {resp.status} {HTTPStatus(resp.status).phrase}"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    lines.append("")
    return ("\r\n".join(lines) + "\r\n").encode() + resp.body


def render_multipart(parts: list[bytes], boundary: str) -> bytes:
    delimiter = f"--{boundary}\r\n".encode()
    return b"".join(delimiter + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()


# --- client side (tests and benchmarks) -------------------------------------------------------

def build_batch_body(items: list[BatchItem], boundary: str) -> bytes:
    """A ``$batch`` request body in the documented format (CRLF line ends)."""

    def http_part(op: Operation) -> str:
        lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if op.content_id:
            lines.append(f"Content-ID: {op.content_id}")
        lines += ["", f"{op.method} {op.url} HTTP/1.1"]
        headers = dict(op.headers)
        if op.body and "content-type" not in {k.lower() for k in headers}:
            headers["Content-Type"] = "application/json; type=entry"
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["", op.body.decode()]
        return "\r\n".join(lines)

    out: list[str] = []
    for item in items:
        if isinstance(item, ChangeSet):
            cs = f"changeset_{uuid.uuid4()}"
            out.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n")
            for op in item.operations:
                out.append(f"--{cs}\r\n{http_part(op)}")
            out.append(f"--{cs}--\r\n")
        else:
            out.append(f"--{boundary}\r\n{http_part(item)}")
    out.append(f"--{boundary}--\r\n")
    return "\r\n".join(out).encode()


def json_operation(method: str, url: str, body: Any = None, content_id: str | None = None, **headers: str) -> Operation:
    data = b"" if body is None else json.dumps(body).encode()
    return Operation(method, url, {k.replace("_", "-"): v for k, v in headers.items()}, data, content_id)


@dataclass
class ResponsePart:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    content_id: str | None
    in_changeset: bool

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


def parse_batch_response(body: bytes, content_type: str) -> list[ResponsePart]:
    """Every operation response in order; change set responses are flattened (``in_changeset=True``)."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise ValueError(f"not a multipart/mixed response: {content_type!r}")
    result: list[ResponsePart] = []
    for part in split_multipart(body, boundary):
        part_headers, content = split_headers(part)
        inner = boundary_of(part_headers.get("content-type", ""))
        if inner:
            for sub in split_multipart(content, inner):
                result.append(_response_part(sub, in_changeset=True))
        else:
            result.append(_response_part(part, in_changeset=False))
    return result


def _response_part(part: bytes, in_changeset: bool) -> ResponsePart:
    part_headers, content = split_headers(part)
    start, headers, body = _http_part(content)
    status = int(start.split()[1])
    return ResponsePart(status, headers, body, part_headers.get("content-id"), in_changeset)
