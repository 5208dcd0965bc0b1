"""Every kind of system the flows file may name (`systems.X.kind`), and where its parts live.

A kind is its settings model (a pydantic model with `kind: Literal["<kind>"]`, in the flows file's system
union and JSON Schema) and its connector class (`shared.ports.connector.ConnectorClass`: its capabilities
and `from_config`), each named by import path. A settings module imports only pydantic and
`shared.config_base`: it is imported while the flows model (`shared.config`) is being built. Adding a kind is one entry in KINDS: neither the flows model
(`shared.config`) nor the connector factory changes. Settings models are imported when the flows model is
built (they are small); a connector's module only when a flow uses that kind, so a deployment loads only the
connectors it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from shared.ports.connector import Capabilities, Connector, ConnectorClass


@dataclass(frozen=True)
class Kind:
    settings: str  # "module:Model", the system's settings in the flows file
    connector: str  # "module:Class", a ConnectorClass


KINDS: dict[str, Kind] = {
    "dataverse": Kind("shared.connectors.dataverse_settings:DataverseSystem",
                      "shared.connectors.dataverse:DataverseConnector"),
    "files": Kind("shared.connectors.files_settings:FilesSystem", "shared.connectors.files.connector:FilesConnector"),
    "odata": Kind("shared.connectors.odata_settings:OdataSystem", "shared.connectors.odata.connector:OdataConnector"),
    "sql": Kind("shared.connectors.sql_settings:SqlSystem", "shared.connectors.sql:SqlConnector"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def settings_models() -> list[type[BaseModel]]:
    """Every kind's settings model, in kind order (the flows file's discriminated union)."""
    return [_load(KINDS[kind].settings) for kind in sorted(KINDS)]


def connector_class(kind: str) -> ConnectorClass:
    return _load(KINDS[kind].connector)


def capabilities_of(system: Any) -> Capabilities:
    """What a configured system's connector can do, without connecting."""
    return connector_class(system.kind).capabilities_for(system)


def build_connector(name: str, system: Any) -> Connector:
    return connector_class(system.kind).from_config(name, system)
