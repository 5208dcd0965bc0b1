"""A minimal Microsoft identity platform (Entra ID) stand-in, so MSAL's own code can be tested offline.

Serves what ``msal.ConfidentialClientApplication.acquire_token_for_client`` needs:

* ``GET  /{tenant}/v2.0/.well-known/openid-configuration``  (OIDC discovery; MSAL calls it once per app)
* ``GET  /common/discovery/instance``                         (instance discovery, if a caller asks for it)
* ``POST /{tenant}/oauth2/v2.0/token``                        (client-credentials grant, with a client secret
  or with a client assertion from a trusted managed identity: a federated identity credential)

``ManagedIdentityEndpoint`` plays the managed identity endpoint of App Service / Azure Functions
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``) for identities of this provider: its tokens for
``api://AzureADTokenExchange`` are what an app registration with a federated credential accepts as its client
assertion (``register_federated_client``).

Pointing MSAL at it. MSAL only accepts ``https://`` authorities (``msal.authority.canonicalize``) and, for an
unknown host, would call ``https://login.microsoftonline.com/common/discovery/instance``. So::

    app = msal.ConfidentialClientApplication(
        client_id, client_credential=secret,
        authority=idp.authority,            # https://127.0.0.1:<port>/<tenant>
        instance_discovery=False,           # never contact login.microsoftonline.com
        http_client=idp.msal_http_client(), # a requests.Session that sends https://127.0.0.1:<port> over http
    )

The discovery document advertises ``https://127.0.0.1:<port>/...`` endpoints (MSAL checks the token
endpoint is https too); the http client rewrites exactly that origin to ``http://`` and nothing else.

Access tokens are HS256 JWTs signed with a per-instance key, so ``verify_token`` can tell the simulator
whether a bearer token really came from here (and is unexpired, and for the right resource).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_TENANT = "72f988bf-0000-4000-8000-00000000d5e1"
DEFAULT_CLIENT_ID = "dvsim-client"
DEFAULT_CLIENT_SECRET = "dvsim-secret"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one send() per response (see server.py)
    server: "_IdpServer"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        status, body = self.server.provider._get(self.path)
        self._reply(status, body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = self.rfile.read(length).decode() if length else ""
        status, body = self.server.provider._post(self.path, form, self.headers.get("Authorization"))
        self._reply(status, body)


class _IdpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], provider: "IdentityProvider"):
        self.provider = provider
        super().__init__(address, _Handler)


class _Loopback:
    """Start/stop of a threaded HTTP server on loopback, shared by the identity provider and the managed identity
    endpoint. Subclasses set `host`, `port` and `_server_class`."""

    host: str
    port: int
    _server: ThreadingHTTPServer | None
    _server_class: type[ThreadingHTTPServer]

    def start(self) -> str:
        if self._server is None:
            self._server = self._server_class((self.host, self.port), self)  # type: ignore[arg-type]
            self.port = self._server.server_address[1]
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IdentityProvider(_Loopback):
    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        tenant_id: str = DEFAULT_TENANT,
        clients: dict[str, str] | None = None,
        token_lifetime_s: int = 3599,
    ):
        self.host = host
        self.port = port
        self.tenant_id = tenant_id
        self.clients = dict(clients if clients is not None else {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET})
        self.token_lifetime_s = token_lifetime_s
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self.token_requests = 0  # POSTs to the token endpoint, successful or not
        self.discovery_requests = 0  # GETs of the OIDC or instance discovery documents
        self.issued_tokens: list[str] = []
        # app client id -> the (issuer, subject, audience) of every federated identity credential it trusts
        self.federated: dict[str, list[tuple[str, str, str]]] = {}
        self._server: _IdpServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    _server_class = _IdpServer

    @property
    def url(self) -> str:
        """Where the server really listens (plain http)."""
        return f"http://{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        """The authority to give MSAL (https, as MSAL requires; see the module docstring)."""
        return f"https://{self.host}:{self.port}/{self.tenant_id}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/token"

    def register_client(self, client_id: str, secret: str) -> None:
        self.clients[client_id] = secret

    @property
    def issuer(self) -> str:
        """The issuer of managed identity tokens for the token exchange (a federated credential's issuer)."""
        return f"https://login.microsoftonline.com/{self.tenant_id}/v2.0"

    def register_federated_client(self, client_id: str, subject: str, issuer: str | None = None,
                                  audience: str = TOKEN_EXCHANGE_AUDIENCE) -> None:
        """An app registration that trusts tokens of ``subject`` (a managed identity's object id) as its
        credential, as ``az ad app federated-credential create`` sets it up."""
        self.federated.setdefault(client_id, []).append((issuer or self.issuer, subject, audience))

    def msal_http_client(self) -> Any:
        """A ``requests.Session`` for MSAL's ``http_client=`` that reaches this server over plain http."""
        import requests  # MSAL's own dependency; imported lazily so dvsim's server needs nothing extra

        https_origin = f"https://{self.host}:{self.port}"
        http_origin = self.url

        class _LoopbackSession(requests.Session):
            def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                if url.startswith(https_origin):
                    url = http_origin + url[len(https_origin):]
                return super().request(method, url, *args, **kwargs)

        return _LoopbackSession()

    # --- tokens ----------------------------------------------------------------------------------

    def _issue(self, client_id: str, resource: str, object_id: str | None = None, issuer: str | None = None,
               lifetime_s: int | None = None) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "HS256"}
        object_id = object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, client_id))
        claims = {
            "aud": resource,
            "iss": issuer or f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + (self.token_lifetime_s if lifetime_s is None else lifetime_s),
            "appid": client_id,
            "tid": self.tenant_id,
            "oid": object_id,
            "sub": object_id,
            "jti": str(uuid.uuid4()),
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def token_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this provider signed, or None."""
        try:
            head, payload, signature = token.split(".")
            expected = hmac.new(self._key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _b64url_decode(signature)):
                return None
            return json.loads(_b64url_decode(payload))
        except ValueError:
            return None

    def verify_token(self, token: str, audience: str | None = None) -> bool:
        """True for an unexpired token issued here (for ``audience``, if given). Use as the simulator's
        ``token_verifier``."""
        claims = self.token_claims(token)
        if claims is None or claims.get("exp", 0) < time.time():
            return False
        return audience is None or claims.get("aud", "").rstrip("/") == audience.rstrip("/")

    # --- endpoints -------------------------------------------------------------------------------

    def _openid_configuration(self) -> dict[str, Any]:
        base = f"https://{self.host}:{self.port}/{self.tenant_id}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
        }

    def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        split = urlsplit(path)
        with self._lock:
            self.discovery_requests += 1
        if split.path == f"/{self.tenant_id}/v2.0/.well-known/openid-configuration":
            return 200, self._openid_configuration()
        if split.path == "/common/discovery/instance":
            host = f"{self.host}:{self.port}"
            return 200, {
                "tenant_discovery_endpoint": f"https://{host}/{self.tenant_id}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }
        if split.path.endswith("/v2.0/.well-known/openid-configuration"):
            tenant = split.path.split("/")[1]
            return 400, {
                "error": "invalid_tenant",
                "error_description": f"AADSTS90002: Tenant '{tenant}' not found.",
                "error_codes": [90002],
            }
        return 404, {"error": "not_found", "error_description": f"No such endpoint: {split.path}"}

    def _post(self, path: str, form_text: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests += 1
        if urlsplit(path).path != f"/{self.tenant_id}/oauth2/v2.0/token":
            return 404, {"error": "not_found", "error_description": f"No such endpoint: {path}"}
        form = {k: v[0] for k, v in parse_qs(form_text, keep_blank_values=True).items()}
        if form.get("client_assertion_type") == JWT_BEARER:
            return self._federated_grant(form)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):  # client_secret_basic
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return 400, _aad_error("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if not client_id or client_id not in self.clients:
            return 400, _aad_error(
                "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory '{self.tenant_id}'.",
            )
        if secret != self.clients[client_id]:
            return 401, _aad_error(
                "invalid_client", 7000215,
                f"Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        return self._grant(client_id, form)

    def _federated_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Client credentials proven by a token of a trusted identity (a federated identity credential)."""
        client_id = form.get("client_id") or ""
        if form.get("grant_type") != "client_credentials":
            return 400, _aad_error("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        claims = self.token_claims(form.get("client_assertion") or "")
        if claims is None:
            return 401, _aad_error("invalid_client", 50027, "JWT token is invalid or malformed.")
        if claims.get("exp", 0) < time.time():
            return 401, _aad_error("invalid_client", 700024, "Client assertion is not within its valid time range.")
        presented = (claims.get("iss"), claims.get("sub"), claims.get("aud"))
        if presented not in self.federated.get(client_id, []):
            return 401, _aad_error(
                "invalid_client", 70021,
                f"No matching federated identity record found for presented assertion. Assertion Issuer: "
                f"'{presented[0]}'. Assertion Subject: '{presented[1]}'. Assertion Audience: '{presented[2]}'.",
            )
        return self._grant(client_id, form)

    def _grant(self, client_id: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        scopes = (form.get("scope") or "").split()
        resources = [s[: -len("/.default")] for s in scopes if s.endswith("/.default")]
        if len(resources) != 1:
            return 400, _aad_error(
                "invalid_scope", 1002012,
                f"The provided value for scope {form.get('scope', '')} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        token = self._issue(client_id, resources[0])
        with self._lock:
            self.issued_tokens.append(token)
        return 200, {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_s,
            "ext_expires_in": self.token_lifetime_s,
            "access_token": token,
        }


class _MiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    server: "_MiServer"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status, body = self.server.endpoint._get(self.path, self.headers.get("X-IDENTITY-HEADER"))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _MiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], endpoint: "ManagedIdentityEndpoint"):
        self.endpoint = endpoint
        super().__init__(address, _MiHandler)


class ManagedIdentityEndpoint(_Loopback):
    """The managed identity endpoint of App Service / Azure Functions (REST protocol 2019-08-01) on loopback,
    issuing tokens of ``idp`` for the user-assigned identities it holds (client id -> object id).

    Point MSAL at it with the variables the platform sets: ``IDENTITY_ENDPOINT=endpoint.url`` and
    ``IDENTITY_HEADER=endpoint.header``.
    """

    def __init__(self, idp: IdentityProvider, identities: dict[str, str], host: str = "127.0.0.1",
                 token_lifetime_s: int = 86399):
        self.idp = idp
        self.identities = dict(identities)
        self.host = host
        self.port = 0
        self.header = secrets.token_hex(16)
        self.token_lifetime_s = token_lifetime_s
        self.requests: list[dict[str, str]] = []
        self._server: _MiServer | None = None

    _server_class = _MiServer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/msi/token"

    def _get(self, path: str, header: str | None) -> tuple[int, dict[str, Any]]:
        split = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        self.requests.append(query)
        if split.path != "/msi/token":
            return 404, {"statusCode": 404, "message": f"No such endpoint: {split.path}"}
        if header != self.header:
            return 401, {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong"}
        client_id = query.get("client_id")
        if query.get("api-version") != "2019-08-01" or not query.get("resource"):
            return 400, {"statusCode": 400, "message": "api-version 2019-08-01 and resource are required"}
        if client_id not in self.identities:
            return 400, {"statusCode": 400, "message": f"No managed identity with client id {client_id} on this app"}
        resource = query["resource"]
        # The token exchange audience gets a v2.0 token: its issuer is what a federated credential names.
        issuer = self.idp.issuer if resource == TOKEN_EXCHANGE_AUDIENCE else None
        token = self.idp._issue(client_id, resource, object_id=self.identities[client_id], issuer=issuer,
                                lifetime_s=self.token_lifetime_s)
        return 200, {"access_token": token, "expires_on": str(int(time.time()) + self.token_lifetime_s),
                     "resource": resource, "token_type": "Bearer", "client_id": client_id}


def _aad_error(error: str, code: int, description: str) -> dict[str, Any]:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {description}",
        "error_codes": [code],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }
