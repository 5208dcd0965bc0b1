"""Who may call the admin API: Entra ID app roles, as App Service authentication hands them to the app.

With App Service authentication (Easy Auth) on, the platform validates the caller's Entra ID token before the
request reaches the function and passes the caller's claims in the ``X-MS-CLIENT-PRINCIPAL`` header (base64
JSON); it strips any such header a client sends itself, so the header can be trusted *only* when the platform
says authentication is on (``WEBSITE_AUTH_ENABLED=True``, set by App Service). Without that the admin routes
fail closed: a header anyone can send grants nothing.

Roles (app roles on the admin app registration, assigned to users, groups or other apps):

- ``Reader``: flow status, run history, dead letters, conflicts, change requests, job progress.
- ``Operator``: everything a Reader may, plus pause, resume, replay, purge, resolving conflicts and approving or
  rejecting change requests.

A function key grants only the read-only health route.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

READER = "Reader"
OPERATOR = "Operator"
_IMPLIED = {OPERATOR: {OPERATOR, READER}, READER: {READER}}
PRINCIPAL_HEADER = "x-ms-client-principal"
_ROLE_CLAIMS = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")


class AccessDenied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def may(self, role: str) -> bool:
        return any(role in _IMPLIED.get(held, {held}) for held in self.roles)


def principal_of(headers: Mapping[str, str], auth_enabled: bool) -> Principal:
    """The caller as App Service authentication vouches for it; AccessDenied when it does not."""
    if not auth_enabled:
        raise AccessDenied(503, "the admin API needs App Service authentication (Entra ID) on this app; "
                                "use the dualsync CLI with your own Azure credentials meanwhile")
    raw = next((v for k, v in headers.items() if k.lower() == PRINCIPAL_HEADER), None)
    if not raw:
        raise AccessDenied(401, "sign in with Entra ID: no authenticated caller")
    try:
        payload = json.loads(base64.b64decode(raw, validate=False))
        claims = payload.get("claims") or []
        role_type = payload.get("role_typ")
        name_type = payload.get("name_typ")
        roles = {c["val"] for c in claims if c.get("typ") in (*_ROLE_CLAIMS, role_type)}
        name = next((c["val"] for c in claims if c.get("typ") in (name_type, "name", "appid")), "unknown")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise AccessDenied(401, "the authenticated caller's claims cannot be read") from None
    return Principal(str(name), frozenset(str(r) for r in roles))


def require(headers: Mapping[str, str], role: str, auth_enabled: bool) -> Principal:
    principal = principal_of(headers, auth_enabled)
    if not principal.may(role):
        raise AccessDenied(403, f"this needs the {role} app role")
    return principal
