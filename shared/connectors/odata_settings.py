"""The settings of a `kind: odata` system in the flows file: an OData v4 service root, its sign-in, paging and
batching. Its Entra ID sign-in is Dataverse's (`DataverseAuth`, another settings module), a URL's secrets are
refused as SQL's are (`sql_settings`): both import only pydantic and `shared.config_base` as this one does."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config_base import secret_ref
from shared.connectors.dataverse_settings import DataverseAuth, HttpLimits
from shared.connectors.sql_settings import SqlSystem


class OdataAuth(DataverseAuth):
    """An OData service's sign-in: none (no field set), basic (``username`` + ``password``, an env:NAME
    reference), or any Entra ID method of `DataverseAuth` (client secret or certificate through MSAL, managed
    identity, federated identity), asking for ``scope`` (default ``<service origin>/.default``)."""

    client_id: str | None = Field(default=None, description=(
        "Application (client) id of the app registration the service trusts (Entra ID sign-in)."))
    managed_identity: bool = Field(default=False, description=(
        "Sign in as the Function App's managed identity (which the service must trust)."))
    username: str | None = Field(default=None, description="Basic authentication's user name (with password).")
    password: str | None = Field(default=None, description=(
        "Basic authentication's password, as env:NAME (a Key Vault reference on Azure); never literal."))
    scope: str | None = Field(default=None, description=(
        "The Entra ID scope a token is asked for; default <origin of url>/.default (F&O, Business Central: "
        "https://api.businesscentral.dynamics.com/.default)."))

    _password = field_validator("password")(secret_ref)

    @model_validator(mode="after")
    def _one_method(self) -> OdataAuth:
        basic = bool(self.username or self.password)
        if basic and not (self.username and self.password):
            raise ValueError("basic authentication needs both username and password")
        methods = [basic, bool(self.client_secret), bool(self.certificate_path), bool(self.certificate_pem),
                   self.managed_identity, bool(self.federated_identity_client_id), bool(self.static_token)]
        if sum(methods) > 1:
            raise ValueError("choose at most one of username/password, client_secret, certificate_path, "
                             "certificate_pem, managed_identity, federated_identity_client_id, static_token")
        self._check_confidential()
        return self

    @property
    def method(self) -> str:
        if self.username:
            return "basic"
        if any((self.client_secret, self.certificate_path, self.certificate_pem, self.managed_identity,
                self.federated_identity_client_id, self.static_token)):
            return "bearer"
        return "none"


class OdataSystem(HttpLimits):
    """An OData v4 service (Finance & Operations, Business Central, SAP Gateway or CAP)."""

    kind: Literal["odata"] = Field(description="odata: any OData v4 service (F&O, Business Central, SAP, CAP).")
    url: str = Field(description=(
        "The service root, e.g. https://contoso.operations.dynamics.com/data/ or .../odata/v4/erp/ (or env:NAME)."))
    auth: OdataAuth = Field(default_factory=OdataAuth, description=(
        "How to sign in: nothing, basic (username + password) or one Entra ID method."))
    query_options: dict[str, str] = Field(default_factory=dict, description=(
        "Added to every request, e.g. {cross-company: \"true\"} (F&O: rows of every company, not only the "
        "default)."))
    batch_format: Literal["json", "multipart"] = Field(default="json", description=(
        "$batch as JSON (OData 4.01) or multipart/mixed, for services that speak only that."))
    batch_size: int = Field(default=100, ge=1, le=1000, description="Requests per $batch at most.")
    page_size: int = Field(default=1000, ge=1, le=10000, description=(
        "Rows per page asked for (odata.maxpagesize); the service may page smaller."))
    etags: bool = Field(default=True, description=(
        "false for a service without ETags: updates are sent with If-Match: * and no write is conditional, "
        "so the system cannot be a pair's target."))
    datetime_digits: int = Field(default=3, ge=0, le=7, description=(
        "Fractional-second digits the service's DateTimeOffsets keep (CAP 3, F&O 7)."))

    @field_validator("url")
    @classmethod
    def _no_literal_password(cls, value: str) -> str:
        return SqlSystem._no_literal_password(value)  # a secret in the URL must be an env:NAME reference too
