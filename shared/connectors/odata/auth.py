"""Bearer tokens for OData services on Microsoft Entra ID (Dataverse, Finance & Operations, Business Central): MSAL (client secret, certificate, managed identity, federated identity
credential) or a static token.

Every provider answers two calls: ``token()`` (cached; MSAL's own token cache decides when to go to the
identity platform) and ``refresh()`` (drop the cached token and get a new one: the connector calls it once
after a 401). Failures are ``AuthError`` (the identity platform said no: wrong secret, unknown client...)
or ``TransientError`` (it could not be reached).

- Client secret / certificate: one ``msal.ConfidentialClientApplication`` per provider, built on first use
  and then reused, so its in-memory token cache serves every later call (``acquire_token_for_client`` looks
  in the cache first). Authority ``{authority_host}/{tenant_id}``, scope ``{resource}/.default`` (the
  organization or environment URL) unless a scope is given (Business Central: ``https://api.businesscentral.
  dynamics.com/.default``). A certificate
  is a PEM file (``certificate_path``) holding the private key (and, optionally, the certificate) plus the
  thumbprint registered on the app (``certificate_thumbprint``); ``certificate_password`` if the key is
  encrypted. ``certificate_pem`` gives the same PEM as text (an ``env:NAME`` reference; on Azure a Key Vault
  reference to the certificate's secret).
- Managed identity: ``msal.ManagedIdentityClient`` with ``SystemAssignedManagedIdentity`` or, when
  ``client_id`` is set, ``UserAssignedManagedIdentity(client_id=...)``; resource = the org URL (or the
  scope less ``/.default``).
- Federated identity credential (``federated_identity_client_id``): the app registration trusts a user-assigned
  managed identity. ``ConfidentialClientApplication`` gets ``{"client_assertion": callable}``; MSAL calls it
  only when it must go to the identity platform, and the callable returns the managed identity's token for
  ``api://AzureADTokenExchange`` (from ``msal.ManagedIdentityClient``, which caches it too). The app acts as the
  app registration, so Dataverse sees the same application user as with a secret, and nothing can expire.
- ``static_token`` (an ``env:NAME`` reference): for simulators and tests only.

Secrets are resolved (``shared.config_base.resolve_secret``) when the MSAL app is built, not before, and are
never stored on the provider itself. Neither a secret nor a token ever goes into a log line, an exception
message or a repr: messages from MSAL are scrubbed of both before they travel.

Tests point MSAL at a local OpenID endpoint: MSAL accepts only https authorities, so they pass an
``http_client`` (e.g. ``dvsim.IdentityProvider.msal_http_client()``) and ``instance_discovery=False``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, Protocol

from shared.config_base import resolve_secret
from shared.connectors.dataverse_settings import DataverseAuth
from shared.errors import AuthError, ConfigError, TransientError

REDACTED = "***"


class TokenProvider(Protocol):
    def token(self) -> str: ...

    def refresh(self) -> str: ...


def _scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def _first_line(text: str) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else ""


class StaticTokenProvider:
    """A fixed bearer token from an ``env:NAME`` reference (simulators, tests). Read on every call."""

    def __init__(self, ref: str) -> None:
        self._ref = ref

    def token(self) -> str:
        return resolve_secret(self._ref)

    def refresh(self) -> str:
        return self.token()  # nothing to refresh: a refused static token stays refused

    def __repr__(self) -> str:
        return f"StaticTokenProvider(ref={self._ref!r})"  # the reference names a variable, not the value


class _MsalProvider(ABC):
    """Shared plumbing: a lock (one token request at a time), lazy client, result checking."""

    kind = "msal"

    def __init__(self, resource: str, http_client: Any = None) -> None:
        self.resource = resource.rstrip("/")
        self._http_client = http_client
        self._client: Any = None
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()  # what to scrub from messages (set when the client is built)
        self._last_token: str | None = None

    @abstractmethod
    def _build(self) -> Any:
        """The MSAL client (its token cache lives as long as it does)."""

    @abstractmethod
    def _acquire(self, client: Any) -> dict[str, Any]:
        """An MSAL token result, from the cache when it can be."""

    @abstractmethod
    def _forget(self, client: Any) -> None:
        """Drop the cached token, so the next acquire asks the identity provider."""

    def _client_or_build(self) -> Any:
        if self._client is None:
            self._client = self._build()
        return self._client

    def _get(self, force: bool) -> str:
        with self._lock:
            try:
                client = self._client_or_build()
                if force:
                    self._forget(client)
                result = self._acquire(client)
            except (AuthError, TransientError, ConfigError):
                raise
            except Exception as exc:  # noqa: BLE001 - MSAL and requests raise many kinds
                raise self._classify(exc) from None
            token = result.get("access_token") if isinstance(result, dict) else None
            if not token:
                error = result.get("error", "no_token") if isinstance(result, dict) else "no_token"
                description = _first_line(str(result.get("error_description", ""))) if isinstance(result, dict) else ""
                message = _scrub(f"{self.kind}: token request failed: {error}: {description}".rstrip(": "),
                                 *self._secrets, self._last_token)
                if error in ("temporarily_unavailable", "server_error") or str(error).startswith("http_"):
                    raise TransientError(message)
                raise AuthError(message)
            self._last_token = token
            return token

    def _classify(self, exc: Exception) -> Exception:
        name = type(exc).__name__
        text = _scrub(_first_line(str(exc)), *self._secrets, self._last_token)
        module = type(exc).__module__ or ""
        if module.startswith(("requests", "urllib3", "httpx", "socket")) or isinstance(exc, OSError | TimeoutError):
            return TransientError(f"{self.kind}: identity platform unreachable: {name}: {text}")
        return AuthError(f"{self.kind}: cannot obtain a token: {name}: {text}")

    def token(self) -> str:
        return self._get(force=False)

    def refresh(self) -> str:
        return self._get(force=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resource={self.resource!r})"


class ConfidentialClientTokenProvider(_MsalProvider):
    """Client secret or certificate, through ``msal.ConfidentialClientApplication``."""

    kind = "msal confidential client"

    def __init__(
        self,
        auth: DataverseAuth,
        resource: str,
        *,
        http_client: Any = None,
        instance_discovery: bool | None = None,
        authority: str | None = None,
        scope: str | None = None,
        label: str = "dataverse auth",
    ) -> None:
        super().__init__(resource, http_client)
        self.label = label
        if not (auth.tenant_id and auth.client_id) or not (
                auth.client_secret or auth.certificate_path or auth.certificate_pem
                or auth.federated_identity_client_id):
            raise ConfigError([(f"{label}: a client secret, certificate or federated identity needs tenant_id "
                                "and client_id")])
        self._auth = auth
        self._instance_discovery = instance_discovery
        # tenant_id and client_id may be env:NAME references (app settings), like every site-specific value
        self.authority = authority or f"{auth.authority_host.rstrip('/')}/{resolve_secret(auth.tenant_id)}"
        self.scopes = [scope or f"{self.resource}/.default"]

    def _credential(self) -> Any:
        auth = self._auth
        if auth.federated_identity_client_id:
            return {"client_assertion": self._assertion_from(auth.federated_identity_client_id)}
        if auth.client_secret:
            secret = resolve_secret(auth.client_secret)
            self._secrets = (secret,)
            return secret
        pem = self._pem()
        if "PRIVATE KEY-----" not in pem:
            what = "certificate_pem" if auth.certificate_pem else "certificate_path"
            raise ConfigError([f"{self.label}: {what} must be a PEM holding the private key"])
        credential: dict[str, Any] = {"private_key": pem}
        if auth.certificate_thumbprint:
            credential["thumbprint"] = auth.certificate_thumbprint.replace(":", "").replace(" ", "")
        if "-----BEGIN CERTIFICATE-----" in pem:
            start = pem.index("-----BEGIN CERTIFICATE-----")
            end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
            credential["public_certificate"] = pem[start:end]
        if not credential.get("thumbprint") and "public_certificate" not in credential:
            raise ConfigError([f"{self.label}: certificate_thumbprint is required when the PEM holds no certificate"])
        secrets: list[str] = []
        if auth.certificate_password:
            credential["passphrase"] = resolve_secret(auth.certificate_password)
            secrets.append(credential["passphrase"])
        self._secrets = tuple(secrets)
        return credential

    def _pem(self) -> str:
        if self._auth.certificate_pem:
            return resolve_secret(self._auth.certificate_pem)
        try:
            with open(resolve_secret(self._auth.certificate_path or ""), encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError([f"{self.label}: cannot read certificate_path: {type(exc).__name__}"]) from None

    def _assertion_from(self, identity_ref: str) -> Any:
        """The callable MSAL asks for a client assertion: the managed identity's token for the exchange."""
        exchange = ManagedIdentityTokenProvider(self._auth.token_exchange_audience,
                                                client_id=resolve_secret(identity_ref), http_client=self._http_client)
        exchange.kind = "msal managed identity (client assertion)"

        def assertion() -> str:
            token = exchange.token()  # AuthError / TransientError as for any token; cached until near expiry
            self._secrets = (token,)  # never echoed in a message
            return token

        return assertion

    def _build(self) -> Any:
        import msal

        options: dict[str, Any] = {}
        if self._http_client is not None:
            options["http_client"] = self._http_client
        if self._instance_discovery is not None:
            options["instance_discovery"] = self._instance_discovery
        return msal.ConfidentialClientApplication(
            resolve_secret(self._auth.client_id or ""), client_credential=self._credential(), authority=self.authority,
            **options,
        )

    def _acquire(self, client: Any) -> dict[str, Any]:
        return client.acquire_token_for_client(scopes=self.scopes)

    def _forget(self, client: Any) -> None:
        client.remove_tokens_for_client()


class ManagedIdentityTokenProvider(_MsalProvider):
    """System-assigned, or user-assigned when a client id is given, through ``msal.ManagedIdentityClient``."""

    kind = "msal managed identity"

    def __init__(self, resource: str, *, client_id: str | None = None, http_client: Any = None) -> None:
        super().__init__(resource, http_client)
        self.client_id = client_id

    def _build(self) -> Any:
        import msal

        identity = (
            msal.UserAssignedManagedIdentity(client_id=self.client_id)
            if self.client_id
            else msal.SystemAssignedManagedIdentity()
        )
        http_client = self._http_client
        if http_client is None:
            import requests

            http_client = requests.Session()
        self._cache = msal.TokenCache()
        return msal.ManagedIdentityClient(identity, http_client=http_client, token_cache=self._cache)

    def _acquire(self, client: Any) -> dict[str, Any]:
        return client.acquire_token_for_client(resource=self.resource)

    def _forget(self, client: Any) -> None:
        cache = self._cache
        for entry in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)


def token_provider_for(
    auth: DataverseAuth,
    resource: str,
    *,
    http_client: Any = None,
    instance_discovery: bool | None = None,
    authority: str | None = None,
    scope: str | None = None,
    label: str = "dataverse auth",
) -> TokenProvider:
    """The provider an auth block asks for; `resource` is the organization URL, `scope` (``<resource>/.default``
    when None) what a client credential asks for; a managed identity asks for the scope's resource."""
    if auth.static_token:
        return StaticTokenProvider(auth.static_token)
    if auth.managed_identity:
        client_id = resolve_secret(auth.client_id) if auth.client_id else None
        identity_resource = scope.removesuffix("/.default") if scope else resource
        return ManagedIdentityTokenProvider(identity_resource, client_id=client_id, http_client=http_client)
    return ConfidentialClientTokenProvider(
        auth, resource, http_client=http_client, instance_discovery=instance_discovery, authority=authority,
        scope=scope, label=label,
    )
