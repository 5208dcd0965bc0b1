"""The settings of a `kind: dataverse` system in the flows file (URL, sign-in, paging and batching limits)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config_base import Strict, secret_ref


class DataverseAuth(Strict):
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    certificate_path: str | None = None
    # The same PEM (private key, then the certificate) as text from an env:NAME reference: on Azure a Key Vault
    # reference to the certificate's secret (…/secrets/<certificate name>), so no file has to be deployed.
    certificate_pem: str | None = None
    certificate_thumbprint: str | None = None
    certificate_password: str | None = None
    managed_identity: bool = False
    # A federated identity credential: the app registration (client_id) trusts this user-assigned managed
    # identity (its client id, or env:AZURE_CLIENT_ID), whose token for `token_exchange_audience` is the client
    # assertion. No secret or certificate exists to expire or leak.
    federated_identity_client_id: str | None = None
    token_exchange_audience: str = "api://AzureADTokenExchange"  # ...USGov / ...China in those clouds
    authority_host: str = "https://login.microsoftonline.com"
    # For simulators and tests only: send this static bearer token instead of asking MSAL.
    static_token: str | None = None

    _secrets = field_validator("client_secret", "certificate_pem", "certificate_password", "static_token")(secret_ref)

    @model_validator(mode="after")
    def _one_method(self) -> DataverseAuth:
        methods = [bool(self.client_secret), bool(self.certificate_path), bool(self.certificate_pem),
                   self.managed_identity, bool(self.federated_identity_client_id), bool(self.static_token)]
        if sum(methods) != 1:
            raise ValueError("choose exactly one of client_secret, certificate_path, certificate_pem, "
                             "managed_identity, federated_identity_client_id, static_token")
        confidential = (self.client_secret or self.certificate_path or self.certificate_pem
                        or self.federated_identity_client_id)
        if confidential and not (self.tenant_id and self.client_id):
            raise ValueError("tenant_id and client_id are required with a client secret, certificate or "
                             "federated identity")
        return self


class DataverseSystem(Strict):
    kind: Literal["dataverse"]
    url: str
    auth: DataverseAuth
    api_version: str = "v9.2"
    page_size: int = Field(default=5000, ge=1, le=5000)
    # The most operations per $batch; a table's batches start at initial_batch_size (Microsoft advises about
    # 10) and grow while they answer fast, shrink on slow answers, timeouts, throttling and 413.
    batch_size: int = Field(default=1000, ge=1, le=1000)
    initial_batch_size: int = Field(default=10, ge=1, le=1000)
    max_concurrency: int = Field(default=4, ge=1, le=52)
    # A 429 pauses the whole connector for its Retry-After; a write or read waits out at most this much in
    # all before it gives up with a transient error (the engine then retries the record later).
    max_throttle_wait_seconds: float = Field(default=30, ge=0)
    timeout_seconds: float = Field(default=60, gt=0)
    # One pull reads at most this many pages (5,000 rows each by default); the next run resumes from the link.
    max_pages_per_run: int = Field(default=2000, ge=1)
    # An answer larger than this is refused while it streams in (a 5,000-row page is a few MB).
    max_response_mb: int = Field(default=128, ge=1, le=1024)
    # Sent as the `tag` query parameter on every write; plug-ins see it as the shared variable "tag".
    tag: str | None = Field(default="dualsync", min_length=1, max_length=100)
