"""The HTTP side: a stdlib ThreadingHTTPServer in front of DataverseApi, plus the simulator's lifecycle,
authentication, fault injection, request counting and test helpers that bypass HTTP."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from . import errors
from .api import ApiRequest, ApiResponse, DataverseApi, error_response
from .faults import FaultInjector, FaultSettings
from .limits import ServiceLimiter, ServiceLimits, user_of
from .schema import Schema, load_schema
from .stats import Stats
from .store import Store
from .tokens import DeltaToken
from .values import new_guid, utcnow

TokenVerifier = Callable[[str], bool]
_API_RE = re.compile(r"^/api/data/(v\d+\.\d+)/(.*)$", re.DOTALL)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: "DataverseSimulator"):
        self.simulator = simulator
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses one connection for many requests
    server_version = "dvsim/1.0"
    server: _Server

    # Buffer the response so status line, headers and body leave in one send(); with an unbuffered writer
    # the separate small writes meet Nagle + delayed ACK and cost ~40 ms per keep-alive request.
    wbufsize = -1

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.simulator.verbose:
            sys.stderr.write("dvsim: %s - %s\n" % (self.address_string(), format % args))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            resp = self.server.simulator.handle_http(self.command, self.path, headers, body)
        except Exception:  # a simulator bug must not kill the connection silently
            traceback.print_exc()
            err = errors.ODataError(500, "0x80040216", "Internal error in dvsim; see the simulator's stderr.")
            resp = error_response(err)
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle


class DataverseSimulator:
    """A Dataverse Web API (OData v4, ``/api/data/v9.2/``) on loopback, backed by SQLite.

    Usage::

        with DataverseSimulator(rate_429=0.1) as sim:
            httpx.get(sim.api + "accounts", headers={"Authorization": "Bearer x"})
    """

    def __init__(
        self,
        schema_path: str | Path | None = None,
        db_path: str = ":memory:",
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        token_verifier: TokenVerifier | None = None,
        rate_429: float = 0.0,
        rate_5xx: float = 0.0,
        latency_ms: float = 0.0,
        retry_after_s: int = 1,
        expire_tokens_after_s: float | None = None,
        seed: int | None = 0,
        verbose: bool = False,
        deleted_form: str = "deletedEntity",
        limits: ServiceLimits | None = None,
        max_request_bytes: int | None = 128 * 1024 * 1024,
        echo_track_changes: bool = True,
    ):
        self.schema: Schema = load_schema(schema_path)
        self.store = Store(self.schema, db_path)
        self.stats = Stats()
        self.faults = FaultInjector(
            FaultSettings(
                rate_429=rate_429,
                rate_5xx=rate_5xx,
                latency_ms=latency_ms,
                retry_after_s=retry_after_s,
                expire_tokens_after_s=expire_tokens_after_s,
                seed=seed,
            )
        )
        # None accepts any bearer token; tests pass e.g. IdentityProvider.verify_token.
        self.token_verifier = token_verifier
        self.web_api = DataverseApi(self.schema, self.store, self.stats, self._delta_token_expired)
        if deleted_form not in ("deletedEntity", "removed"):
            raise ValueError(f"deleted_form must be deletedEntity or removed, got {deleted_form!r}")
        self.web_api.deleted_form = deleted_form
        # Per-user service protection limits (Dataverse's numbers unless a test scales them down).
        self.limiter = ServiceLimiter(limits)
        self.web_api.op_time_s = self.limiter.settings.op_time_s
        # A request body above this is refused with 413 before it reaches the Web API.
        self.max_request_bytes = max_request_bytes
        # False: change-tracking answers leave odata.track-changes out of Preference-Applied (nothing documented
        # says Dataverse always echoes it; a client must judge by the delta link on the last page).
        self.web_api.echo_track_changes = echo_track_changes
        self.host = host
        self.port = port
        self.verbose = verbose
        self._server: _Server | None = None
        self._affinity = new_guid().replace("-", "")
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        """Start serving on a background thread; returns the organization URL."""
        if self._server is not None:
            return self.url
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name=f"dvsim:{self.port}", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections. Data stays readable until close()."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for conn in list(server.open_connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self.store.close()

    def __enter__(self) -> "DataverseSimulator":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The organization URL, e.g. ``http://127.0.0.1:5555`` (what a Dataverse connector is configured with)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api(self) -> str:
        """The Web API service root, ``{url}/api/data/v9.2/``."""
        return f"{self.url}/api/data/v9.2/"

    # --- request pipeline --------------------------------------------------------------------------

    def handle_http(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> ApiResponse:
        split = urlsplit(target)
        m = _API_RE.match(split.path)
        if not m:
            return error_response(errors.segment_not_found(split.path))
        if self.max_request_bytes is not None and len(body) > self.max_request_bytes:
            self.stats.record_rejection(method, 413)
            return ApiResponse(413, {"Content-Type": "text/plain; charset=utf-8"},
                               errors.payload_too_large().encode(), "too_large")
        if "arraffinity=" in headers.get("cookie", "").lower():
            self.stats.record_affinity_cookie()
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token or (self.token_verifier is not None and not self.token_verifier(token)):
            self.stats.record_rejection(method, 401)
            # Dataverse answers 401 with an empty body and a Bearer challenge naming the authority.
            return ApiResponse(
                401,
                {
                    "WWW-Authenticate": "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize, "
                    f"resource_id={self.url}/",
                    "OData-Version": "4.0",
                },
                b"",
                "unauthorized",
            )
        try:
            admission = self.limiter.admit(user_of(token))
        except errors.ODataError as err:
            self.stats.record_rejection(method, err.status)
            return error_response(err)
        try:
            resp = self._serve(method, m, split.query, headers, body)
        finally:
            extra = admission.finish()
        resp.headers.update(extra)
        # Dataverse pins a client to one web server with this cookie; Microsoft advises clients doing
        # parallel work not to send it back ("Service protection API limits").
        resp.headers["Set-Cookie"] = f"ARRAffinity={self._affinity}; Path=/; HttpOnly"
        return resp

    def _serve(self, method: str, m: re.Match[str], query: str, headers: Mapping[str, str],
               body: bytes) -> ApiResponse:
        self.faults.delay()
        fault = self.faults.next_fault()
        if fault is not None:
            self.stats.record_rejection(method, fault.status)
            return error_response(fault)
        req = ApiRequest(
            method=method,
            path=unquote(m.group(2)),
            query=dict(parse_qsl(query, keep_blank_values=True)),
            headers=headers,
            body=body,
            service_root=f"{self.url}/api/data/{m.group(1)}/",
        )
        resp = self.web_api.handle(req)
        self.stats.record_request(method, resp.kind)
        return resp

    def _delta_token_expired(self, token: DeltaToken) -> bool:
        ttl = self.faults.settings.expire_tokens_after_s
        return ttl is not None and (utcnow() - token.issued_at).total_seconds() > ttl

    def expire_all_delta_tokens(self) -> None:
        """Every delta token issued so far now fails with the ExpiredVersionStamp error."""
        self.store.expire_delta_tokens()

    # --- helpers that bypass HTTP (test setup and assertions) ------------------------------------

    def insert(self, set_name: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """Create a record as a POST would (validated, versioned); returns it in Web API shape.
        Lookups may be given as ``_x_value`` GUIDs or as ``nav@odata.bind`` references."""
        entity = self.schema.entity(set_name)
        with self.store.transaction():
            values, body_id = self.web_api.coerce(entity, row, creating=True, raw_lookups=True)
            record_id = body_id or new_guid()
            self.web_api.check_status(entity, values, None, record_id)
            stored = self.store.insert(entity, record_id, values, None)
        return self.web_api.serialize(entity, stored, None)

    def update(self, set_name: str, record_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        entity = self.schema.entity(set_name)
        with self.store.transaction():
            values, _ = self.web_api.coerce(entity, changes, creating=False, raw_lookups=True)
            self.web_api.check_status(entity, values, self.store.get(entity, record_id), record_id)
            stored = self.store.update(entity, record_id, values, None)
        return self.web_api.serialize(entity, stored, None)

    def delete(self, set_name: str, record_id: str) -> None:
        self.store.delete(self.schema.entity(set_name), record_id, None)

    def get(self, set_name: str, record_id: str) -> dict[str, Any] | None:
        entity = self.schema.entity(set_name)
        row = self.store.get(entity, record_id)
        return self.web_api.serialize(entity, row, None) if row else None

    def rows(self, set_name: str) -> list[dict[str, Any]]:
        """All records of a table in Web API shape, oldest write first."""
        entity = self.schema.entity(set_name)
        return [self.web_api.serialize(entity, r, None) for r in self.store.all_rows(entity)]

    def clear(self) -> None:
        """Delete all records (delta tokens stay valid; the deletions are not tracked)."""
        self.store.clear()

    @property
    def last_tags(self) -> dict[tuple[str, str], str]:
        """(set name, id) -> the ``tag`` query parameter of the last write to that record, deletes included."""
        return self.store.tags()

    def dump(self) -> str:
        """All tables as JSON, for debugging a failing test."""
        return json.dumps({e.set_name: self.rows(e.set_name) for e in self.schema.entities}, indent=2, default=str)
