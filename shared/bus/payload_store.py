"""Where a message body too large for the bus waits while its message travels by reference (the claim check).

Two stores behind one small port: ``BlobPayloadStore`` (Azure Blob Storage, the Azure deployment; Azurite in the
tests) and ``FilePayloadStore`` (files under the embedded runtime's workdir). Names are chosen by the claim check
(shared/bus/claim_check.py); a store only keeps bytes under them.

Failures are classified once, here: ``PayloadStoreError.transient`` is true for what may pass on its own
(throttling, 5xx, timeouts, a lost connection) and false for what will not (no such account, access denied, a
bad request). A connection string is a secret: errors name the setting, the status and the error code only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from shared.blob_errors import classify
from shared.errors import ConfigError
from shared.settings import setting

DEFAULT_CONTAINER = "dualsync-payloads"


class PayloadStoreError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class PayloadStore(Protocol):
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing what was there."""
        ...

    def get(self, name: str) -> bytes | None:
        """The bytes stored under ``name``, or None when there are none."""
        ...

    def delete(self, name: str) -> None:
        """Forget ``name``; a name already gone is not an error."""
        ...

    def close(self) -> None: ...


class FilePayloadStore:
    """One file per name under ``root`` (the embedded runtime's ``<workdir>/payloads``); a name's ``/`` is a
    folder. Writes go to a temporary file first and are renamed into place, so a reader never sees half a body."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilePayloadStore({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"payload name {name!r} leaves the store's folder")
        return path

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise PayloadStoreError(f"cannot write payload file {path}: {exc.strerror or exc}",
                                    transient=False) from exc

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PayloadStoreError(f"cannot read payload file {name}: {exc.strerror or exc}", transient=True) from exc

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def close(self) -> None:
        return None


class BlobPayloadStore:
    """One block blob per name in one container. The container is created on first use when it is missing
    (Bicep creates it in Azure; Storage Blob Data Contributor may create it too)."""

    def __init__(self, container: Any) -> None:  # azure.storage.blob.ContainerClient
        self._container = container

    def __repr__(self) -> str:
        return f"BlobPayloadStore({self._container.url!r})"

    @classmethod
    def from_connection_string(cls, connection: str, container: str = DEFAULT_CONTAINER) -> BlobPayloadStore:
        from azure.storage.blob import BlobServiceClient

        try:
            service = BlobServiceClient.from_connection_string(connection)
        except Exception:  # noqa: BLE001 - the SDK's message could quote the secret; ours never does
            raise ConfigError(["PAYLOAD_BLOB_CONNECTION: not a valid Blob Storage connection string"]) from None
        return cls(service.get_container_client(container))

    @classmethod
    def from_settings(cls, environ: Mapping[str, str] | None = None) -> BlobPayloadStore | None:
        """PAYLOAD_BLOB_CONNECTION (connection string) or PAYLOAD_BLOB_ENDPOINT (+ Azure identity); None when
        neither is set, and a record too large for the bus is then dead-lettered as PayloadTooLarge."""
        env = dict(environ) if environ is not None else None
        container = setting("PAYLOAD_BLOB_CONTAINER", env) or DEFAULT_CONTAINER
        connection = setting("PAYLOAD_BLOB_CONNECTION", env)
        if connection:
            return cls.from_connection_string(connection, container)
        endpoint = setting("PAYLOAD_BLOB_ENDPOINT", env)
        if not endpoint:
            return None
        from azure.identity import DefaultAzureCredential
        from azure.storage.blob import BlobServiceClient

        client_id = setting("AZURE_CLIENT_ID", env)
        credential = (
            DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()
        )
        return cls(BlobServiceClient(account_url=endpoint, credential=credential).get_container_client(container))

    def put(self, name: str, data: bytes) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            try:
                self._container.upload_blob(name, data, overwrite=True)
            except ResourceNotFoundError:
                self._create_container()
                self._container.upload_blob(name, data, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - classified, without the SDK's text
            raise _classified("store", name, exc) from exc

    def get(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise _classified("read", name, exc) from exc

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._container.delete_blob(name)
        except ResourceNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001
            raise _classified("delete", name, exc) from exc

    def _create_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._container.create_container()
        except ResourceExistsError:
            pass

    def close(self) -> None:
        self._container.close()


def _classified(action: str, name: str, exc: Exception) -> PayloadStoreError:
    transient, detail = classify(exc)
    return PayloadStoreError(f"cannot {action} payload blob {name} ({detail})", transient=transient)
