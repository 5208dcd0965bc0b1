"""The settings of a `kind: dataverse` system in the flows file (URL, sign-in, paging and batching limits)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config_base import Strict, secret_ref


class DataverseAuth(Strict):
    """How dualsync signs in to Dataverse: exactly one of client_secret, certificate_path, certificate_pem,
    managed_identity, federated_identity_client_id or static_token."""

    tenant_id: str | None = Field(default=None, description=(
        "Entra ID tenant (directory) id; required with a client secret, certificate or federated identity."))
    client_id: str | None = Field(default=None, description=(
        "Application (client) id of the app registration that is Dataverse's application user."))
    client_secret: str | None = Field(default=None, description=(
        "The app registration's client secret, as env:NAME (a Key Vault reference on Azure); never literal."))
    certificate_path: str | None = Field(default=None, description=(
        "Path to a PEM file with the private key and certificate of the app registration."))
    certificate_pem: str | None = Field(default=None, description=(
        "The same PEM as text, as env:NAME: on Azure a Key Vault reference to the certificate's secret "
        "(.../secrets/<certificate name>), so no file has to be deployed."))
    certificate_thumbprint: str | None = Field(default=None, description=(
        "SHA-1 thumbprint of the certificate (computed from the PEM when absent)."))
    certificate_password: str | None = Field(default=None, description=(
        "Password of an encrypted private key, as env:NAME."))
    managed_identity: bool = Field(default=False, description=(
        "Sign in as the Function App's managed identity (which must be a Dataverse application user)."))
    federated_identity_client_id: str | None = Field(default=None, description=(
        "A federated identity credential: the app registration (client_id) trusts this user-assigned managed "
        "identity (its client id, or env:AZURE_CLIENT_ID), whose token is the client assertion. No secret or "
        "certificate exists to expire or leak."))
    token_exchange_audience: str = Field(default="api://AzureADTokenExchange", description=(
        "Audience of the managed identity's token for the federated credential (…USGov / …China in those "
        "clouds)."))
    authority_host: str = Field(default="https://login.microsoftonline.com", description=(
        "Entra ID sign-in host (another for national clouds)."))
    static_token: str | None = Field(default=None, description=(
        "For simulators and tests only: send this bearer token (env:NAME) instead of asking MSAL."))

    _secrets = field_validator("client_secret", "certificate_pem", "certificate_password", "static_token")(secret_ref)

    @model_validator(mode="after")
    def _one_method(self) -> DataverseAuth:
        methods = [bool(self.client_secret), bool(self.certificate_path), bool(self.certificate_pem),
                   self.managed_identity, bool(self.federated_identity_client_id), bool(self.static_token)]
        if sum(methods) != 1:
            raise ValueError("choose exactly one of client_secret, certificate_path, certificate_pem, "
                             "managed_identity, federated_identity_client_id, static_token")
        self._check_confidential()
        return self

    def _check_confidential(self) -> None:
        confidential = (self.client_secret or self.certificate_path or self.certificate_pem
                        or self.federated_identity_client_id)
        if confidential and not (self.tenant_id and self.client_id):
            raise ValueError("tenant_id and client_id are required with a client secret, certificate or "
                             "federated identity")


class HttpLimits(Strict):
    """What the client of any OData service (Dataverse's Web API among them) is limited by."""

    max_concurrency: int = Field(default=4, ge=1, le=52, description=(
        "Parallel requests at most (Dataverse lowers it further by its x-ms-dop-hint header)."))
    max_throttle_wait_seconds: float = Field(default=30, ge=0, description=(
        "A 429 pauses the whole connector for its Retry-After; a read or write waits out at most this much in "
        "all before the engine retries the record later. 0 hands every 429 to the engine."))
    timeout_seconds: float = Field(default=60, gt=0, description="Timeout of one HTTP request, in seconds.")
    max_pages_per_run: int = Field(default=2000, ge=1, description=(
        "Pages one pull reads at most; the next run resumes where it stopped."))
    max_response_mb: int = Field(default=128, ge=1, le=1024, description=(
        "An answer larger than this is refused while it streams in (a 5,000-row page is a few MB)."))


class DataverseSystem(HttpLimits):
    """A Dataverse (Dynamics 365) organization, reached through its Web API."""

    kind: Literal["dataverse"] = Field(description="dataverse: a Dataverse organization (Web API).")
    url: str = Field(description="The organization URL, e.g. https://contoso.crm.dynamics.com (or env:NAME).")
    auth: DataverseAuth = Field(description="How to sign in: exactly one method.")
    api_version: str = Field(default="v9.2", description="Web API version in the path (/api/data/<version>/).")
    page_size: int = Field(default=5000, ge=1, le=5000, description="Rows per page when reading (at most 5,000).")
    batch_size: int = Field(default=1000, ge=1, le=1000, description=(
        "The most operations per $batch: batches start at initial_batch_size, grow while they answer fast and "
        "shrink on slow answers, timeouts, throttling and 413."))
    initial_batch_size: int = Field(default=10, ge=1, le=1000, description=(
        "Operations in a table's first $batch (Microsoft advises about 10)."))
    tag: str | None = Field(default="dualsync", min_length=1, max_length=100, description=(
        "Sent as the tag query parameter on every write; plug-ins see it as the shared variable \"tag\"."))
