"""dvsim: a Dataverse Web API simulator (test double and demo CRM). See dvsim/README.md."""

from .cli import serve
from .identity import IdentityProvider
from .schema import Schema, load_schema
from .server import DataverseSimulator

__all__ = ["DataverseSimulator", "IdentityProvider", "Schema", "load_schema", "serve"]
