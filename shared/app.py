"""The wiring: one object holding the config and the ports an engine call needs.

`SyncApp.from_settings()` builds it from app settings (Azure or embedded); tests build it directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shared.config import Config, load_config
from shared.connectors import build_connector
from shared.engine.backoff import BASE_SECONDS
from shared.ports.bus import MessageBus
from shared.ports.connector import Connector
from shared.settings import setting
from shared.state.store import StateStore


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SyncApp:
    config: Config
    state: StateStore
    bus: MessageBus
    queue: str = "dualsync-changes"
    retry_base: float = BASE_SECONDS
    max_attempts: int = 8  # for flows that do not set their own
    clock: Callable[[], datetime] = utcnow
    connector_factory: Callable[[str], Connector] | None = None
    # Flows whose file passed `shared.engine.preflight` in this process (the timer checks each once per host).
    checked_flows: set[str] = field(default_factory=set, repr=False)
    _connectors: dict[str, Connector] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connector(self, system: str) -> Connector:
        with self._lock:
            if system not in self._connectors:
                factory = self.connector_factory or (lambda name: build_connector(name, self.config.systems[name]))
                self._connectors[system] = factory(system)
            return self._connectors[system]

    def close(self) -> None:
        for connector in self._connectors.values():
            connector.close()
        self._connectors.clear()
        self.bus.close()
        self.state.close()

    @classmethod
    def from_settings(cls, config: Config | None = None) -> SyncApp:
        config = config or load_config(setting("DUALSYNC_CONFIG") or "flows.yaml")
        return cls(
            config=config,
            state=StateStore(_tables_from_settings()),
            bus=_bus_from_settings(),
            queue=setting("APPLY_QUEUE") or "dualsync-changes",
            max_attempts=int(setting("MAX_ATTEMPTS") or 8),
        )

    @classmethod
    def local(cls, config: Config, workdir: str | Path, retry_base: float = BASE_SECONDS) -> SyncApp:
        """The embedded runtime: SQLite state and SQLite queue under `workdir` (and, in `payloads/`, the bodies
        of messages too large for one message)."""
        from shared.bus.sqlite_bus import embedded_bus
        from shared.state.sqlite_tables import SqliteTables

        root = Path(workdir)
        return cls(
            config=config,
            state=StateStore(SqliteTables(root / "state.db")),
            # Retries travel as clones, so the delivery count only climbs on crashes and lost locks.
            bus=embedded_bus(root / "bus.db", max_delivery_count=10),
            retry_base=retry_base,
        )


def _tables_from_settings():  # noqa: ANN202 - returns a TableBackend
    backend = setting("STATE_BACKEND")
    if backend == "tables":
        from shared.state.azure_tables import AzureTables

        return AzureTables.from_settings()
    from shared.state.sqlite_tables import SqliteTables

    return SqliteTables(setting("STATE_SQLITE_PATH") or ".dualsync/state.db")


def _bus_from_settings() -> MessageBus:
    backend = setting("BUS_BACKEND")
    if backend == "servicebus":
        from shared.bus.servicebus import ServiceBusBus

        return ServiceBusBus.from_settings()
    from shared.bus.sqlite_bus import embedded_bus

    return embedded_bus(setting("BUS_SQLITE_PATH") or ".dualsync/bus.db")
