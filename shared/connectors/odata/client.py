"""HTTP for an OData service: credentials, the link guard, throttling, timeouts and answer size caps.

- Credentials (`Credentials`) are attached only to URLs with the service's scheme, host, port and root path:
  ``@odata.nextLink`` / ``@odata.deltaLink`` come from responses and from the cursors table, both of which
  someone else may have written, so every URL is checked before a request is built (`UnsafeLinkError`),
  relative links (CAP, SAP Gateway) resolved against the service root first. A read that is handed a link
  it already followed stops (`Trail`): a loop, not more data.
- A 429 pauses every request of the client until its Retry-After (`throttle.Pacer`: one goes first, the rest
  follow once it is answered) and is sent again, for up to ``max_throttle_wait_seconds`` of waiting in all;
  ``x-ms-dop-hint`` and the remaining-requests header bound how many go at once (`throttle.ConcurrencyLimit`).
  No cookie is kept (Dataverse's ``ARRAffinity`` pins a client to one server).
- A connection that could not be made is "not sent"; a request sent without an answer (timeout, connection
  lost) raises `NoAnswer`: the service may have run it. A 401 asks the credentials for a fresh token and tries
  once more; a second 401, or a 403, is an `AuthError`. An answer larger than ``max_response_bytes`` is refused
  while it streams in.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from shared.connectors.odata.faults import ODataError, error_of
from shared.connectors.odata.literals import query_value
from shared.connectors.odata.throttle import ConcurrencyLimit, Pacer, cookieless_jar
from shared.errors import AuthError, PermanentError, Reason, TransientError, UnsafeLinkError

log = logging.getLogger(__name__)

THROTTLE_RETRIES = 20  # 429s one request waits out itself (a Retry-After of 0 would otherwise never end)
BASE_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}


class NoAnswer(TransientError):
    """The request was sent but no answer came: the service may have run it, or may still be running it."""


class Credentials(Protocol):
    def headers(self, refresh: bool) -> dict[str, str]:
        """The Authorization header (none for an open service); ``refresh`` after a 401."""
        ...


class TokenSource(Protocol):
    def token(self) -> str: ...

    def refresh(self) -> str: ...


class NoCredentials:
    def headers(self, refresh: bool) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return "NoCredentials()"


class BasicCredentials:
    """HTTP basic authentication; the password is read through ``password()`` at each request, never kept."""

    def __init__(self, username: str, password: Callable[[], str]) -> None:
        self.username = username
        self._password = password

    def headers(self, refresh: bool) -> dict[str, str]:
        pair = f"{self.username}:{self._password()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self.username!r})"


class BearerCredentials:
    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def headers(self, refresh: bool) -> dict[str, str]:
        token = self.tokens.refresh() if refresh else self.tokens.token()
        return {"Authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return f"BearerCredentials({self.tokens!r})"


class Trail:
    """The links one paged read has followed: a next link that comes round again is a loop, not more data."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: set[str] = set()

    def visit(self, url: str) -> None:
        if url in self.seen:
            raise UnsafeLinkError(f"{self.what}: the next link repeats an earlier page; stopped to avoid a loop")
        self.seen.add(url)


class ODataClient:
    """Requests to one OData service root (``https://host/odata/v4/erp/``, ``https://org/api/data/v9.2/``)."""

    def __init__(
        self,
        root: str,
        credentials: Credentials,
        *,
        name: str,
        timeout_seconds: float = 60,
        max_concurrency: int = 4,
        max_throttle_wait_seconds: float = 30,
        max_response_bytes: int = 128 * 1024 * 1024,
        transport: httpx.BaseTransport | None = None,
        throttled_text: str = "throttled by the service",
    ) -> None:
        self.root = root if root.endswith("/") else root + "/"
        parts = urlsplit(self.root)
        self._origin = (parts.scheme.lower(), parts.netloc.lower())
        self.root_path = parts.path
        self.name = name
        self.credentials = credentials
        self.timeout_seconds = timeout_seconds
        self.max_throttle_wait_seconds = max_throttle_wait_seconds
        self.max_response_bytes = max_response_bytes
        self.throttled_text = throttled_text
        self.slots = ConcurrencyLimit(max_concurrency)  # follows x-ms-dop-hint
        self.pacer = Pacer()  # one pause for every request after a 429
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            headers=BASE_HEADERS,
            cookies=cookieless_jar(),
        )

    def url(self, path: str, options: list[tuple[str, str]] | None = None) -> str:
        """``root + path`` with query options, each value percent-encoded (`literals.query_value`)."""
        query = "&".join(f"{name}={query_value(value)}" for name, value in options or [])
        return f"{self.root}{path}" + (f"?{query}" if query else "")

    def resolve(self, link: str) -> str:
        """A next or delta link as an absolute URL (services may give it relative to the service root)."""
        return urljoin(self.root, link)

    def check_link(self, url: str) -> None:
        """Only this service's scheme, host, port and root path may receive the credentials."""
        parts = urlsplit(url)
        segments = parts.path.split("/")
        if ((parts.scheme.lower(), parts.netloc.lower()) != self._origin or not parts.path.startswith(self.root_path)
                or ".." in segments or "." in segments or "%2e" in parts.path.lower()):
            shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path[:80]}"
            raise UnsafeLinkError(f"{self.name}: refusing to follow a link outside {self.root}: {shown} "
                                  "(a tampered response or cursor; reset the flow's cursor if it is stored there)")

    def send(self, method: str, url: str, what: str, headers: dict[str, str] | None = None,
             content: bytes | None = None, on_throttle: Callable[[ODataError], None] | None = None) -> httpx.Response:
        """One request with the credentials; see the module docstring for 401, 403 and 429.

        Raises TransientError (transport; `NoAnswer` when the request went out and no answer came, so it may
        have run), AuthError, UnsafeLinkError. Other statuses are the caller's."""
        self.check_link(url)
        refreshed = False
        waited = 0.0
        throttles = 0
        while True:
            pause = self.pacer.remaining()
            if pause > 0 and waited + pause > self.max_throttle_wait_seconds:
                raise TransientError(f"{what}: {self.throttled_text}; not sent", retry_after=pause)
            paused, probe = self.pacer.wait()
            waited += paused
            request_headers = {**(headers or {}), **self.credentials.headers(refreshed)}
            started = time.perf_counter()
            throttled = True  # until an answer other than 429 says otherwise
            try:
                with self.slots:
                    if self.pacer.remaining() > 0:
                        continue  # a 429 came while this one waited for a slot: back to the pause
                    response = self._bounded(self._client.build_request(
                        method, url, headers=request_headers, content=content), what)
                throttled = response.status_code == 429
                if throttled:  # pause everyone before anyone else is let go
                    self.slots.throttled()
                    err = error_of(429, response.headers, response.content)
                    self.pacer.pause(err.retry_after if err.retry_after is not None else 1.0)
            except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError) as exc:
                raise TransientError(f"{what}: {type(exc).__name__}: not sent") from None
            except httpx.TimeoutException:
                raise NoAnswer(f"{what}: no answer within {self.timeout_seconds:g}s") from None
            except httpx.TransportError as exc:
                raise NoAnswer(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                               .rstrip(": ")) from None
            finally:
                self.pacer.answered(probe, throttled)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s -> %s (%.0f ms)", method, url, response.status_code,
                          (time.perf_counter() - started) * 1000)
            self.slots.follow_hint(response.headers.get("x-ms-dop-hint"))
            if not throttled:
                self.slots.answered()
                self.slots.follow_budget(response.headers.get("x-ms-ratelimit-burst-remaining-xrm-requests"))
            if throttled:
                delay = err.retry_after if err.retry_after is not None else 1.0
                if on_throttle is not None:
                    on_throttle(err)
                throttles += 1
                if (self.max_throttle_wait_seconds > 0 and throttles <= THROTTLE_RETRIES
                        and waited + delay <= self.max_throttle_wait_seconds):
                    continue
                return response
            if response.status_code == 401:
                if not refreshed:
                    refreshed = True
                    continue
                raise AuthError(f"{what}: 401 Unauthorized: the credentials were refused, also after a refresh")
            if response.status_code == 403:
                err = error_of(403, response.headers, response.content)
                raise AuthError(f"{what}: 403 Forbidden: {err.text()}")
            return response

    def _bounded(self, request: httpx.Request, what: str) -> httpx.Response:
        """Send and read the answer, refusing one larger than ``max_response_bytes`` before it fills memory."""
        response = self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise self._too_large(what, int(declared))
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > self.max_response_bytes:
                    raise self._too_large(what, len(body))
        finally:
            response.close()
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=request)

    def _too_large(self, what: str, size: int) -> PermanentError:
        return PermanentError(Reason.TARGET_REJECTED, f"{what}: the answer is larger than the limit of "
                                                      f"{self.max_response_bytes:,} bytes ({size:,} so far)")

    def get_json(self, url: str, what: str, prefer: str | None = None,
                 headers: dict[str, str] | None = None) -> tuple[dict[str, Any], httpx.Response]:
        """A GET whose answer is a JSON object (decimals exact); ODataError for a status of 400 or more."""
        request_headers = dict(headers or {})
        if prefer:
            request_headers["Prefer"] = prefer
        response = self.send("GET", url, what, request_headers)
        if response.status_code >= 400:
            raise error_of(response.status_code, response.headers, response.content)
        try:
            data = json.loads(response.content, parse_float=Decimal)  # decimals keep every digit
        except ValueError:
            raise TransientError(f"{what}: the answer is not JSON (HTTP {response.status_code})") from None
        if not isinstance(data, dict):
            raise TransientError(f"{what}: unexpected answer shape")
        return data, response

    def pages(self, url: str | None, what: str, prefer: str | None = None,
              headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a query, following ``@odata.nextLink`` (checked, loops refused) page by page."""
        trail = Trail(what)
        while url:
            trail.visit(url)
            data, _ = self.get_json(url, what, prefer, headers)
            yield data
            link = data.get("@odata.nextLink")
            url = self.resolve(link) if link else None

    def close(self) -> None:
        self._client.close()
