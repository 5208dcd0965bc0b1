"""``$batch`` requests and answers in both formats of OData v4.01: JSON (*JSON Format* section 19) and
multipart/mixed (*Protocol* section 11.7), the latter for services that speak only it (OData 4.0 servers,
Dataverse). Operations carry ids (``Content-ID`` / ``id``), and answers are mapped back by them, by position
when a service leaves them out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import Message

from shared.connectors.odata.literals import json_body


@dataclass
class BatchRequest:
    method: str
    url: str  # relative to the service root (JSON), or the absolute path the multipart request line carries
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # JSON text


@dataclass
class BatchPart:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    content_id: str | None


# ---------------------------------------------------------------------------------------------- JSON format


def json_batch(requests: Sequence[BatchRequest]) -> tuple[bytes, str]:
    """The body and Content-Type of a JSON batch; ids are 1, 2, ... in order. Bodies go in as the JSON text
    they are, so decimals keep every digit."""
    items = []
    for number, request in enumerate(requests, start=1):
        head = {"id": str(number), "method": request.method, "url": request.url,
                "headers": {k.lower(): v for k, v in request.headers.items()}}
        text = json.dumps(head)
        if request.body is not None:
            text = text[:-1] + ',"body":' + request.body.decode() + "}"
        items.append(text)
    return ('{"requests":[' + ",".join(items) + "]}").encode(), "application/json"


def parse_json_batch(body: bytes) -> list[BatchPart]:
    data = json.loads(body, parse_float=Decimal)
    responses = data.get("responses") if isinstance(data, dict) else None
    if not isinstance(responses, list):
        raise ValueError("a JSON batch answer without 'responses'")  # noqa: TRY004 - an unreadable answer
    parts = []
    for response in responses:
        if not isinstance(response, dict) or not isinstance(response.get("status"), int):
            raise ValueError("a JSON batch response without a status")  # noqa: TRY004
        headers = {str(k).lower(): str(v) for k, v in (response.get("headers") or {}).items()}
        content = response.get("body")
        raw = b"" if content is None else (content.encode() if isinstance(content, str) else json_body(content).encode())
        parts.append(BatchPart(response["status"], headers, raw, str(response["id"]) if "id" in response else None))
    return parts


# ---------------------------------------------------------------------------------------------- multipart


def multipart_batch(requests: Sequence[BatchRequest], boundary: str | None = None) -> tuple[bytes, str]:
    """The body and Content-Type of a multipart batch (no change sets: each operation stands alone)."""
    boundary = boundary or f"batch_{uuid.uuid4()}"
    out: list[bytes] = []
    for number, request in enumerate(requests, start=1):
        lines = [
            f"--{boundary}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            f"Content-ID: {number}",
            "",
            f"{request.method} {request.url} HTTP/1.1",
        ]
        for name, value in request.headers.items():
            is_json = name.lower() == "content-type"
            lines.append("Content-Type: application/json; type=entry" if is_json else f"{name}: {value}")
        lines.append("")
        out.append("\r\n".join(lines).encode() + b"\r\n" + (request.body or b"") + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/mixed; boundary={boundary}"  # unquoted: CAP reads no quoted boundary


def boundary_of(content_type: str) -> str | None:
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/mixed":
        return None
    value = msg.get_param("boundary")
    return value if isinstance(value, str) else None


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
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
    return [b"\r\n".join(p) for p in parts]


def _split_headers(block: bytes) -> tuple[dict[str, str], bytes]:
    lines = block.split(b"\r\n")
    headers: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].strip():
        name, _, value = lines[i].decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
        i += 1
    return headers, b"\r\n".join(lines[i + 1:])


def parse_batch_response(body: bytes, content_type: str) -> list[BatchPart]:
    """Every operation response of a multipart ``$batch`` in order (change set responses flattened)."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise ValueError(f"not a multipart/mixed response: {content_type!r}")
    result: list[BatchPart] = []
    for part in _split_multipart(body, boundary):
        mime, content = _split_headers(part)
        inner = boundary_of(mime.get("content-type", ""))
        if inner:
            for sub in _split_multipart(content, inner):
                sub_mime, sub_content = _split_headers(sub)
                result.append(_http_part(sub_mime, sub_content))
        else:
            result.append(_http_part(mime, content))
    return result


def _http_part(mime: dict[str, str], content: bytes) -> BatchPart:
    content = content.lstrip(b"\r\n")
    start, _, rest = content.partition(b"\r\n")
    headers, body = _split_headers(rest)
    words = start.decode("latin-1").split()
    if len(words) < 2 or not words[1].isdigit():
        raise ValueError(f"malformed status line in a batch response: {start[:80]!r}")
    return BatchPart(int(words[1]), headers, body.strip(), mime.get("content-id"))


def parts_by_request(parts: Sequence[BatchPart], count: int) -> list[BatchPart | None]:
    """Each request's answer: by id when every answer has one, else by position; None where the batch
    stopped before an operation (it was not run)."""
    by_id = {p.content_id: p for p in parts if p.content_id}
    if len(by_id) == len(parts) == count:
        return [by_id.get(str(n)) for n in range(1, count + 1)]
    return [parts[n] if n < len(parts) else None for n in range(count)]

