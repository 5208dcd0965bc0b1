"""`dualsync ui`: the web console and the admin API for the embedded runtime, on 127.0.0.1 only.

Other web pages open in the same browser can reach a loopback port too, so:

- DNS rebinding: a request whose Host header is not this server's own address and port is refused (a page on
  evil.example rebound to 127.0.0.1 still sends Host: evil.example).
- Cross-site requests: every API call must carry the token made at launch (header `X-Dualsync-Token`), which
  only the URL printed on the terminal holds (in its fragment, which browsers never send to a server or in a
  Referer). A header a page on another origin cannot set without a CORS preflight, which this server never
  answers. The page and its script carry no data and need no token.

Whoever holds the token is the operator (the same person who could run `dualsync replay` in that workdir).
Long operations run as jobs in a background thread (shared.engine.jobs), and the page follows their progress.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from shared.admin_access import OPERATOR, READER, AccessDenied, Principal
from shared.admin_api import ApiRequest, ApiResponse, handle
from shared.app import SyncApp
from shared.engine import jobs
from shared.process_identity import current_holder

TOKEN_HEADER = "X-Dualsync-Token"
LOCAL_OPERATOR = Principal("local operator", frozenset({OPERATOR, READER}))


class ConsoleServer:
    def __init__(self, app: SyncApp, port: int = 0, token: str | None = None) -> None:
        self.app = app
        self.token = token or secrets.token_urlsafe(24)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self._jobs: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/#token={self.token}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="dualsync-ui", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for job in self._jobs:
            job.join(timeout=30)

    def caller(self, presented: str | None) -> Principal:
        if presented and hmac.compare_digest(presented.encode(), self.token.encode()):
            return LOCAL_OPERATOR
        raise AccessDenied(401, "open the console with the URL `dualsync ui` printed (it carries the token)")

    def start_job(self, app: SyncApp, job: jobs.JobView) -> jobs.JobView:
        thread = threading.Thread(target=jobs.run_in_background, args=(app, job.id, current_holder()),
                                  name=f"job-{job.id[:8]}", daemon=True)
        self._jobs.append(thread)
        thread.start()
        return job


def _handler(server: ConsoleServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dualsync-ui"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: object) -> None:  # quiet: the terminal is the operator's
            return

        def _serve(self, method: str) -> None:
            if self.headers.get("Host", "") not in server.hosts:
                self._send(ApiResponse(421, b'{"error": "this console answers only at 127.0.0.1 or localhost"}'))
                return
            parts = urlsplit(self.path)
            path = "console" if parts.path in ("/", "/index.html") else parts.path.removeprefix("/api/")
            if path == parts.path:  # outside /api/
                self._send(ApiResponse(404, b'{"error": "not found"}'))
                return
            length = int(self.headers.get("Content-Length") or 0)
            presented = self.headers.get(TOKEN_HEADER)
            request = ApiRequest(method=method, path=path, query=dict(parse_qsl(parts.query)),
                                 body=self.rfile.read(length) if length else b"",
                                 content_type=self.headers.get("Content-Type", ""),
                                 caller=lambda: server.caller(presented))
            self._send(handle(lambda: server.app, request, server.start_job))

        def _send(self, response: ApiResponse) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

    return Handler
