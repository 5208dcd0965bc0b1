"""Builds the connector for a configured system. Imports are lazy so a deployment only loads what it uses."""

from __future__ import annotations

from shared.config import DataverseSystem, FilesSystem, SqlSystem, System, resolve_secret
from shared.ports.connector import Connector


def build_connector(name: str, system: System) -> Connector:
    if isinstance(system, SqlSystem):
        from shared.connectors.sql import SqlConnector

        return SqlConnector(resolve_secret(system.url))
    if isinstance(system, DataverseSystem):
        from shared.connectors.dataverse import DataverseConnector

        return DataverseConnector.from_config(name, system)
    if isinstance(system, FilesSystem):
        from shared.connectors.files.connector import FilesConnector

        return FilesConnector.from_config(name, system)
    raise TypeError(f"system {name}: no connector for kind {system.kind!r}")
