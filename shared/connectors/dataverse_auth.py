"""The Dataverse connector's bearer tokens: the MSAL providers live in `shared.connectors.odata.auth` (every
OData service on Entra ID uses them); these names stay importable from here."""

from shared.connectors.odata.auth import (
    REDACTED,
    ConfidentialClientTokenProvider,
    ManagedIdentityTokenProvider,
    StaticTokenProvider,
    TokenProvider,
    token_provider_for,
)

__all__ = ["REDACTED", "ConfidentialClientTokenProvider", "ManagedIdentityTokenProvider", "StaticTokenProvider",
           "TokenProvider", "token_provider_for"]
