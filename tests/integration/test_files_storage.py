"""Where the files connector keeps files, on both backends: a folder, and Blob Storage (Azurite). The inbox and
outbox behave the same on either: a file appears whole or not at all, a move to the archive is idempotent."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared.config import SourceSpec, TargetSpec
from shared.connectors.files import storage as storage_module
from shared.connectors.files.connector import FilesConnector
from shared.connectors.files.storage import BlobStorage, FileStorage, FolderStorage
from shared.connectors.files_settings import FilesSystem
from shared.errors import TransientError
from shared.ports.connector import WriteOp


@pytest.fixture(params=["folder", "blob"])
def storage(request, tmp_path) -> Iterator[tuple[FileStorage, dict]]:
    if request.param == "folder":
        (tmp_path / "exchange").mkdir()
        made: FileStorage = FolderStorage(tmp_path / "exchange")
        where = {"folder": str(tmp_path / "exchange")}
    else:
        made = BlobStorage.from_connection_string(request.getfixturevalue("azurite_blobs"))
        where = {"blob_connection": "env:FILES_BLOB"}
        request.getfixturevalue("monkeypatch").setenv("FILES_BLOB", request.getfixturevalue("azurite_blobs"))
    suffix = uuid.uuid4().hex[:8]  # one Azurite serves every test: containers of their own
    areas = {"inbox": f"in-{suffix}", "archive": f"arch-{suffix}", "outbox": f"out-{suffix}"}
    yield made, where | areas
    made.close()


def chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


def test_write_list_open_move_delete(storage):
    store, areas = storage
    inbox, archive = areas["inbox"], areas["archive"]
    assert store.files(inbox, "customers/") == []
    store.write(inbox, "customers/b.csv", chunks(b"id\n", b"2\n"))
    store.write(inbox, "customers/a.csv", chunks(b"id\n1\n"))
    store.write(inbox, "customers/.hidden", chunks(b"x"))
    store.write(inbox, "orders/c.csv", chunks(b"id\n"))
    listed = store.files(inbox, "customers/")
    assert [f.name for f in listed] == ["customers/a.csv", "customers/b.csv"]
    assert listed[0].modified.tzinfo is not None
    with store.open(inbox, "customers/b.csv", listed[1].etag) as stream:
        assert stream.read() == b"id\n2\n"
    store.write(inbox, "customers/b.csv", chunks(b"id\n22\n"))  # written again: another version
    again = store.files(inbox, "customers/")[1]
    assert again.etag != listed[1].etag
    with pytest.raises(TransientError):
        store.open(inbox, "customers/b.csv", listed[1].etag).read()
    store.move(inbox, "customers/a.csv", archive, "customers/1~a.csv")
    store.move(inbox, "customers/a.csv", archive, "customers/1~a.csv")  # a retried move is done already
    assert [f.name for f in store.files(inbox, "customers/")] == ["customers/b.csv"]
    with store.open(archive, "customers/1~a.csv") as stream:
        assert stream.read() == b"id\n1\n"
    store.delete(inbox, "customers/b.csv")
    store.delete(inbox, "customers/b.csv")
    assert store.files(inbox, "customers/") == []


def test_a_write_that_dies_halfway_leaves_nothing_visible(storage, monkeypatch):
    store, areas = storage
    monkeypatch.setattr(storage_module, "BLOCK_SIZE", 4)  # several blocks staged before the failure

    def dies() -> Iterator[bytes]:
        yield b"id;name\r\n1;first\r\n"
        raise OSError("killed while writing")

    with pytest.raises(Exception, match="killed|cannot write"):
        store.write(areas["outbox"], "customers/x.csv", dies())
    store.write(areas["outbox"], "customers/y.csv", chunks(b"id\r\n", b"2\r\n"))
    assert [f.name for f in store.files(areas["outbox"], "customers/")] == ["customers/y.csv"]
    with store.open(areas["outbox"], "customers/y.csv") as stream:
        assert stream.read() == b"id\r\n2\r\n"


def connector(store: FileStorage, areas: dict, **csv) -> FilesConnector:
    system = FilesSystem.model_validate({"kind": "files", **areas, "csv": csv})
    clock = iter(datetime(2026, 1, 1, 8, 0, second, tzinfo=UTC) for second in range(60))
    return FilesConnector("erp", system, store, clock=lambda: next(clock))


def test_outbox_writes_one_whole_file_and_its_manifest_per_batch(storage):
    store, areas = storage
    files = connector(store, areas, delimiter=";", decimal_separator=",", columns={"Kundennr": "id"},
                      types={"credit": "decimal"})
    target = TargetSpec(system="erp", entity="customers", key="id")
    ops = [WriteOp("upsert", {"id": "1"}, {"id": "1", "name": "Müller; Söhne", "credit": "12.50"}),
           WriteOp("update", {"id": "2"}, {"status": "inactive"}),
           WriteOp("delete", {"id": "3"})]
    results = files.write_batch(target, ops)
    assert [(r.ok, r.key) for r in results] == [(True, "1"), (True, "2"), (True, "3")]
    assert files.write_batch(target, ops[:1])[0].ok  # the next batch: a file of its own
    written = [f.name for f in store.files(areas["outbox"], "customers/")]
    assert len(written) == 4 and written[0].endswith(".csv") and written[1] == written[0] + ".manifest.json"
    with store.open(areas["outbox"], written[0]) as stream:
        body = stream.read()
    assert body.decode().splitlines() == [
        "operation;Kundennr;name;credit;status",
        'upsert;1;"Müller; Söhne";12,50;',
        "update;2;;;inactive",
        "delete;3;;;",
    ]
    with store.open(areas["outbox"], written[1]) as stream:
        manifest = json.loads(stream.read())
    assert manifest == {"file": written[0].split("/")[1], "rows": 3, "upsert": 1, "update": 1, "delete": 1,
                        "sha256": hashlib.sha256(body).hexdigest(), "encoding": "utf-8",
                        "written_at": manifest["written_at"]}


def test_outbox_without_its_manifest_leaves_no_csv_and_fails_the_batch(storage, monkeypatch):
    store, areas = storage
    files = connector(store, areas)
    real_write = store.write

    def no_manifests(area, name, data):
        if name.endswith(".manifest.json"):
            raise OSError("disk full")
        return real_write(area, name, data)

    monkeypatch.setattr(store, "write", no_manifests)
    results = files.write_batch(TargetSpec(system="erp", entity="customers", key="id"),
                                [WriteOp("upsert", {"id": "1"}, {"id": "1"})])
    assert not results[0].ok and isinstance(results[0].error, TransientError)
    assert store.files(areas["outbox"], "customers/") == []


def test_inbox_reads_each_file_once_and_archives_it(storage):
    store, areas = storage
    files = connector(store, areas)
    source = SourceSpec(system="erp", entity="customers", key="id", changes="snapshot")
    store.write(areas["inbox"], "customers/001.csv", chunks(b"id,name\r\n1,a\r\n2,b\r\n3,c\r\n"))
    store.write(areas["inbox"], "customers/002.csv", chunks(b"id,name\r\n1,a\r\n"))
    pages = list(files.read_changes(source, None, 2))
    assert [[r.key for r in p.records] for p in pages] == [["1", "2"], ["3"]]
    assert all(p.snapshot for p in pages) and pages[-1].position["row"] == 3
    first_version = pages[0].records[0].version
    assert [f.name for f in store.files(areas["inbox"], "customers/")] == ["customers/002.csv"]
    # The source as it is now: the next file to read.
    assert sorted(files.read_records("customers", ["id"], ["1", "2"])) == ["1"]
    resumed = list(files.read_changes(source, pages[0].position, 2))  # a stale position: another file now
    assert [r.key for p in resumed for r in p.records] == ["1"]
    assert resumed[0].records[0].version > first_version
    assert [f.name.split("~")[1] for f in store.files(areas["archive"], "customers/")] == ["001.csv", "002.csv"]
    assert list(files.read_changes(source, resumed[-1].position, 2)) == []
    # Nothing left in the inbox: the newest archived file is the source now.
    assert list(files.iter_keys(source)) == ["1"]
    assert files.read_record(source, "1").version == resumed[0].records[0].version
