"""Each adapter and test fake, checked against the Protocol it stands for by mypy (`make test`, `make
typecheck`): a method whose signature drifts from its port is a type error here, before any test runs it.

Never imported at run time; mypy reads it (configured in pyproject.toml, [tool.mypy]).
"""

from __future__ import annotations

from shared.bus.claim_check import _ReleasingSettler
from shared.bus.payload_store import BlobPayloadStore, FilePayloadStore, PayloadStore
from shared.bus.servicebus import ServiceBusBus, _ServiceBusSettler
from shared.bus.sqlite_bus import SqliteBus, _SqliteSettler
from shared.connectors.dataverse import DataverseConnector
from shared.connectors.files.connector import FilesConnector
from shared.connectors.files.storage import BlobStorage, FileStorage, FolderStorage
from shared.connectors.odata.connector import OdataConnector
from shared.connectors.sql import SqlConnector
from shared.ports.bus import MessageBus, Settler
from shared.ports.connector import Connector, ConnectorClass
from shared.ports.tables import TableBackend
from shared.state.azure_tables import AzureTables
from shared.state.sqlite_tables import SqliteTables
from tests.fakes.memory_connector import MemoryConnector
from tests.model.world import DataverseLike


def connectors(sql: SqlConnector, dataverse: DataverseConnector, memory: MemoryConnector,
               model_crm: DataverseLike, odata: OdataConnector) -> list[Connector]:
    return [sql, dataverse, memory, model_crm, odata]


# The registry builds connectors from their classes and asks them for capabilities before they connect.
CONNECTOR_CLASSES: list[ConnectorClass] = [SqlConnector, DataverseConnector, OdataConnector]


def tables(sqlite: SqliteTables, azure: AzureTables) -> list[TableBackend]:
    return [sqlite, azure]


def buses(sqlite: SqliteBus, servicebus: ServiceBusBus) -> list[MessageBus]:
    return [sqlite, servicebus]


def settlers(sqlite: _SqliteSettler, servicebus: _ServiceBusSettler, releasing: _ReleasingSettler) -> list[Settler]:
    return [sqlite, servicebus, releasing]


def payload_stores(files: FilePayloadStore, blobs: BlobPayloadStore) -> list[PayloadStore]:
    return [files, blobs]


def files_exchange(connector: FilesConnector, folder: FolderStorage,
                   blobs: BlobStorage) -> tuple[Connector, ConnectorClass, list[FileStorage]]:
    return connector, FilesConnector, [folder, blobs]
