"""The connector of a kind of system defined outside shared/ (by a test), joined to the flows file with its
settings (plugin_kind_settings) by one entry in `shared.connectors.registry.KINDS` (test_connector_capabilities)."""

from __future__ import annotations

from shared.ports.connector import Capabilities
from tests.fakes.memory_connector import MemoryConnector
from tests.unit.plugin_kind_settings import EchoSystem


class EchoConnector(MemoryConnector):
    capabilities = Capabilities(change_modes=frozenset({"snapshot"}), snapshot_reads=frozenset({"snapshot"}))

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    @classmethod
    def capabilities_for(cls, system: EchoSystem) -> Capabilities:
        return cls.capabilities

    @classmethod
    def from_config(cls, name: str, system: EchoSystem) -> EchoConnector:
        return cls(f"{name}:{system.label}")
