"""Where the files are: a folder on this machine (embedded) or Azure Blob Storage, behind one small interface.

An *area* is the inbox, the archive or the outbox: a sub-folder of the root folder, or a container. Names are
`<entity>/<file>` in both. A file appears whole or not at all: the folder writes a temporary file (its name
starts with `.`, which listings skip) and renames it into place; Blob stages blocks and commits the block
list, and a blob is visible only once committed.

An etag says which version of a file a name holds: the service's ETag on Blob; size and modification time
(ns) in a folder, so a file written again under the same name is a new file.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from base64 import b64encode
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from shared.blob_errors import classify
from shared.errors import ConfigError, PermanentError, Reason, SyncError, TransientError

BLOCK_SIZE = 4 * 1024 * 1024
COPY_WAIT = 60.0  # seconds an archive copy may take before the move is tried again next run


@dataclass(frozen=True)
class StoredFile:
    name: str  # <entity>/<file>
    etag: str
    modified: datetime


class FileStorage(Protocol):
    def files(self, area: str, prefix: str) -> list[StoredFile]:
        """The files under `prefix`, by name; temporary and hidden files (a name part starting with `.`) left out."""
        ...

    def open(self, area: str, name: str, etag: str | None = None) -> IO[bytes]:
        """The file's bytes, streamed. With `etag`: that version only (another raises TransientError)."""
        ...

    def write(self, area: str, name: str, chunks: Iterator[bytes]) -> None:
        """Write `name` atomically, replacing what was there."""
        ...

    def move(self, area: str, name: str, to_area: str, to_name: str) -> None:
        """Move a file (an archive); a file already gone from `area` while present at `to_name` is done."""
        ...

    def delete(self, area: str, name: str) -> None: ...

    def close(self) -> None: ...


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


class FolderStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FolderStorage({str(self.root)!r})"

    def _path(self, area: str, name: str) -> Path:
        base = (self.root / area).resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base):
            raise PermanentError(Reason.TARGET_REJECTED, f"file name {name!r} leaves the {area} folder")
        return path

    def files(self, area: str, prefix: str) -> list[StoredFile]:
        if not self.root.is_dir():
            # A share that is not mounted must not read as an empty inbox or archive: an empty archive would
            # confirm every delete candidate.
            raise TransientError(f"exchange folder {self.root} is not there (not mounted?)")
        folder = self._path(area, prefix)
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            name = path.relative_to(self.root / area).as_posix()
            if _hidden(name) or not path.is_file():
                continue
            stat = path.stat()
            found.append(StoredFile(name, f"{stat.st_size}-{stat.st_mtime_ns}",
                                    datetime.fromtimestamp(stat.st_mtime, UTC)))
        return sorted(found, key=lambda f: f.name)

    def open(self, area: str, name: str, etag: str | None = None) -> IO[bytes]:
        path = self._path(area, name)
        handle = path.open("rb")
        stat = os.fstat(handle.fileno())
        if etag is not None and f"{stat.st_size}-{stat.st_mtime_ns}" != etag:
            handle.close()
            raise TransientError(f"{area}/{name} changed while it was being read")
        return handle

    def write(self, area: str, name: str, chunks: Iterator[bytes]) -> None:
        path = self._path(area, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # the rename must not be durable before the bytes are
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def move(self, area: str, name: str, to_area: str, to_name: str) -> None:
        source, target = self._path(area, name), self._path(to_area, to_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            if not target.exists():
                raise

    def delete(self, area: str, name: str) -> None:
        self._path(area, name).unlink(missing_ok=True)

    def close(self) -> None:
        return None


class BlobStorage:
    """One container per area. The identity needs Storage Blob Data Contributor on the three containers."""

    def __init__(self, service: Any) -> None:  # azure.storage.blob.BlobServiceClient
        self._service = service
        self._created: set[str] = set()  # containers known to exist

    def __repr__(self) -> str:
        return f"BlobStorage({self._service.url!r})"

    @classmethod
    def from_connection_string(cls, connection: str) -> BlobStorage:
        from azure.storage.blob import BlobServiceClient

        try:
            return cls(BlobServiceClient.from_connection_string(connection))
        except Exception:  # noqa: BLE001 - the SDK's message could quote the secret; ours never does
            raise ConfigError(["blob_connection: not a valid Blob Storage connection string"]) from None

    @classmethod
    def from_endpoint(cls, endpoint: str, client_id: str | None = None) -> BlobStorage:
        from azure.identity import DefaultAzureCredential
        from azure.storage.blob import BlobServiceClient

        credential = (DefaultAzureCredential(managed_identity_client_id=client_id) if client_id
                      else DefaultAzureCredential())
        return cls(BlobServiceClient(account_url=endpoint, credential=credential))

    def _container(self, area: str) -> Any:
        return self._service.get_container_client(area)

    def files(self, area: str, prefix: str) -> list[StoredFile]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            blobs = [StoredFile(b.name, b.etag, b.last_modified)
                     for b in self._container(area).list_blobs(name_starts_with=prefix) if not _hidden(b.name)]
        except ResourceNotFoundError:
            return []
        except Exception as exc:
            raise _classified("list", f"{area}/{prefix}", exc) from exc
        return sorted(blobs, key=lambda f: f.name)

    def open(self, area: str, name: str, etag: str | None = None) -> IO[bytes]:
        from azure.core import MatchConditions

        try:
            conditions = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
            return io.BufferedReader(_Stream(self._container(area).download_blob(name, **conditions)))
        except Exception as exc:
            raise _classified("read", f"{area}/{name}", exc) from exc

    def write(self, area: str, name: str, chunks: Iterator[bytes]) -> None:
        blob = self._container(area).get_blob_client(name)
        try:
            self._create(area)  # chunks can be read only once: the container must be there before the first block
            blob.commit_block_list(self._stage(blob, chunks))  # the blob appears now, whole
        except Exception as exc:
            raise _classified("write", f"{area}/{name}", exc) from exc

    @staticmethod
    def _stage(blob: Any, chunks: Iterator[bytes]) -> list[Any]:
        from azure.storage.blob import BlobBlock

        blocks: list[Any] = []
        buffer = b""
        prefix = uuid.uuid4().hex[:16]  # block ids of one write; others' uncommitted blocks are never used
        for chunk in [*chunks, None]:
            buffer += chunk or b""
            while len(buffer) >= BLOCK_SIZE or (chunk is None and (buffer or not blocks)):
                block_id = b64encode(f"{prefix}-{len(blocks):08d}".encode()).decode()
                blob.stage_block(block_id, buffer[:BLOCK_SIZE])
                blocks.append(BlobBlock(block_id=block_id))
                buffer = buffer[BLOCK_SIZE:]
        return blocks

    def _create(self, area: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        if area in self._created:
            return
        container = self._container(area)
        # Asked first: an identity whose role is scoped to the container may read it but not create one.
        if not container.exists():
            with suppress(ResourceExistsError):  # made by another instance since we asked
                container.create_container()
        self._created.add(area)

    def move(self, area: str, name: str, to_area: str, to_name: str) -> None:
        """Copy within the account (the service copies; nothing passes through here), wait for the copy, then
        delete the original."""
        from azure.core.exceptions import ResourceNotFoundError

        source = self._container(area).get_blob_client(name)
        target = self._container(to_area).get_blob_client(to_name)
        try:
            self._create(to_area)
            try:
                copy = target.start_copy_from_url(source.url)
            except ResourceNotFoundError:
                if target.exists():
                    return  # moved by an earlier attempt that died before it could say so
                raise
            status, deadline = copy.get("copy_status"), time.monotonic() + COPY_WAIT
            while status == "pending" and time.monotonic() < deadline:
                time.sleep(0.2)
                status = target.get_blob_properties().copy.status
            if status != "success":
                raise TransientError(f"archive copy of {area}/{name} is {status}")
            source.delete_blob()
        except SyncError:
            raise
        except Exception as exc:
            raise _classified("move", f"{area}/{name}", exc) from exc

    def delete(self, area: str, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._container(area).delete_blob(name)
        except ResourceNotFoundError:
            return
        except Exception as exc:
            raise _classified("delete", f"{area}/{name}", exc) from exc

    def close(self) -> None:
        self._service.close()


class _Stream(io.RawIOBase):
    """A downloading blob as a raw binary stream (what csv reading needs): read as it arrives."""

    def __init__(self, downloader: Any) -> None:
        super().__init__()
        self._downloader = downloader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._downloader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _classified(action: str, name: str, exc: Exception) -> Exception:
    transient, detail = classify(exc)
    # 412: the file changed under an etag-guarded read; the next run reads it as it is now
    transient = transient or getattr(exc, "status_code", None) == 412
    message = f"cannot {action} blob {name} ({detail})"
    return TransientError(message) if transient else PermanentError(Reason.TARGET_REJECTED, message)
