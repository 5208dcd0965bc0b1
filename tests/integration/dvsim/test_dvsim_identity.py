"""MSAL's own code acquiring a token from the local identity endpoint, and the simulator checking it."""

from __future__ import annotations

import httpx
import msal
import pytest

from dvsim import IdentityProvider

CLIENT_ID, SECRET = "dvsim-client", "dvsim-secret"


def msal_app(idp: IdentityProvider, secret: str = SECRET) -> msal.ConfidentialClientApplication:
    # The documented way to point MSAL at dvsim's identity endpoint (see dvsim/identity.py).
    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=secret,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
    )


def test_msal_acquires_a_token_and_then_uses_its_cache(identity_provider: IdentityProvider, dataverse_sim_factory) -> None:
    sim = dataverse_sim_factory(token_verifier=lambda t: identity_provider.verify_token(t, audience=sim.url))
    app = msal_app(identity_provider)
    scopes = [f"{sim.url}/.default"]

    first = app.acquire_token_for_client(scopes=scopes)
    assert first["token_type"] == "Bearer" and first["expires_in"] == 3599
    assert first["token_source"] == "identity_provider"
    assert identity_provider.token_requests == 1

    second = app.acquire_token_for_client(scopes=scopes)
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert identity_provider.token_requests == 1  # no HTTP call for the second token
    assert identity_provider.discovery_requests == 1  # OIDC discovery happened once, when the app was built

    # The simulator accepts exactly the token MSAL obtained.
    ok = httpx.get(sim.api + "WhoAmI", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert ok.status_code == 200
    forged = first["access_token"][:-4] + "AAAA"
    assert httpx.get(sim.api + "WhoAmI", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    other_idp_token = IdentityProvider()._issue(CLIENT_ID, sim.url)
    assert httpx.get(sim.api + "WhoAmI", headers={"Authorization": f"Bearer {other_idp_token}"}).status_code == 401


def test_wrong_secret_is_an_msal_error(identity_provider: IdentityProvider) -> None:
    result = msal_app(identity_provider, secret="wrong").acquire_token_for_client(scopes=["https://org.example/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert identity_provider.token_requests == 1
    assert identity_provider.issued_tokens == []


def test_msal_refuses_a_plain_http_authority(identity_provider: IdentityProvider) -> None:
    # Why the https authority + rewriting http_client is needed.
    with pytest.raises(ValueError, match="https url"):
        msal.ConfidentialClientApplication(
            CLIENT_ID, client_credential=SECRET, authority=f"{identity_provider.url}/{identity_provider.tenant_id}",
            instance_discovery=False,
        )


def test_discovery_documents(identity_provider: IdentityProvider) -> None:
    idp = identity_provider
    config = httpx.get(f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration").json()
    assert config["token_endpoint"] == f"{idp.authority}/oauth2/v2.0/token"
    assert config["issuer"] == f"{idp.authority}/v2.0"
    instance = httpx.get(
        f"{idp.url}/common/discovery/instance",
        params={"api-version": "1.1", "authorization_endpoint": f"{idp.authority}/oauth2/v2.0/authorize"},
    ).json()
    assert instance["tenant_discovery_endpoint"] == f"{idp.authority}/v2.0/.well-known/openid-configuration"
    unknown = httpx.get(f"{idp.url}/other-tenant/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_tenant"


def test_token_endpoint_contract(identity_provider: IdentityProvider) -> None:
    idp = identity_provider
    resp = httpx.post(idp.token_endpoint, data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
        "scope": "https://org.crm.dynamics.com/.default",
    })
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert idp.verify_token(body["access_token"], audience="https://org.crm.dynamics.com")
    assert not idp.verify_token(body["access_token"], audience="https://elsewhere.example")
    no_default = httpx.post(idp.token_endpoint, data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET, "scope": "openid",
    })
    assert no_default.status_code == 400 and no_default.json()["error"] == "invalid_scope"
