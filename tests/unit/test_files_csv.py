"""CSV as each entity's format says: delimiter, quoting, encoding, decimal separator, header mapping, types; a
row that does not fit is named by line and column, a file that does not fit fails as a whole. And the files
system's own settings."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from azure.identity import DefaultAzureCredential
from pydantic import ValidationError

from shared.connectors.files.connector import storage_of
from shared.connectors.files.csv_format import FileFormatError, encode_rows, parse_cell, read_rows
from shared.connectors.files.storage import BlobStorage
from shared.connectors.files_settings import CsvFormat, FilesSystem


def rows(text: str | bytes, encoding: str = "utf-8", **fmt):
    data = text.encode(encoding) if isinstance(text, str) else text
    return list(read_rows(io.BytesIO(data), CsvFormat(encoding=encoding, **fmt), "inbox/x.csv"))


def test_header_mapping_delimiter_decimal_separator_and_types():
    got = rows("Nr;Name;Betrag;Aktiv;Seit\r\n7;Müller;1234,5;ja;2024-02-29\r\n8;;-0,25;0;\r\n",
               delimiter=";", decimal_separator=",", columns={"Nr": "id", "Betrag": "amount"},
               types={"id": "int", "amount": "decimal", "Seit": "date"})
    assert [(r.line, r.values, r.problem) for r in got] == [
        (2, {"id": 7, "Name": "Müller", "amount": "1234.5", "Aktiv": "ja", "Seit": "2024-02-29"}, None),
        (3, {"id": 8, "Name": None, "amount": "-0.25", "Aktiv": "0", "Seit": None}, None),
    ]


def test_a_cell_that_does_not_parse_names_line_column_field_and_rule():
    got = rows("id,flag,amount\n1,yes,1.5\n2,maybe,1,5\n3,no,1e9\n", types={"flag": "bool", "amount": "decimal"})
    assert got[0].values == {"id": "1", "flag": True, "amount": "1.5"} and got[0].problem is None
    assert got[1].problem == "file inbox/x.csv line 3: 4 columns where the header has 3 (delimiter ',')"
    assert got[2].problem == ("file inbox/x.csv line 4 column 'amount' (field amount): '1e9' is not a decimal "
                              "number with decimal separator '.'")
    assert got[2].values["flag"] is False


@pytest.mark.parametrize(("text", "type_name", "value"), [
    ("42", "int", 42), ("-0003", "int", -3), ("1.50", "decimal", "1.50"), ("true", "bool", True),
    ("2024-05-01T10:00:00+02:00", "datetime", "2024-05-01T10:00:00+02:00"), ("x", "string", "x"), ("", "int", None),
])
def test_parse_cell(text, type_name, value):
    assert parse_cell(text, type_name, CsvFormat()) == value


@pytest.mark.parametrize(("text", "type_name"), [("4.2", "int"), ("1" * 40, "decimal"), ("NaN", "decimal"),
                                                 ("31.12.2024", "date"), ("1,5", "decimal")])
def test_parse_cell_refuses(text, type_name):
    with pytest.raises(ValueError, match="is not"):
        parse_cell(text, type_name, CsvFormat())


def test_quoted_values_keep_delimiters_quotes_and_newlines_and_lines_count_physical_lines():
    got = rows('id|note\n1|"a|b ""quoted""\nsecond line"\n\n2|plain\n', delimiter="|")
    assert [(r.line, r.values["note"]) for r in got] == [(2, 'a|b "quoted"\nsecond line'), (5, "plain")]


def test_another_quote_character_and_no_quoting_with_an_escape():
    assert rows("id,name\n1,'O,Neil'\n", quotechar="'")[0].values["name"] == "O,Neil"
    assert rows("id,name\n1,O\\,Neil\n", quoting="none", escapechar="\\")[0].values["name"] == "O,Neil"


def test_encodings():
    assert rows("id;name\n1;Ærø\n", encoding="cp1252", delimiter=";")[0].values["name"] == "Ærø"
    with_bom = "\ufeffid,name\n1,x\n".encode()
    assert list(rows(with_bom, encoding="utf-8-sig")[0].values) == ["id", "name"]
    with pytest.raises(FileFormatError, match=r"inbox/x.csv: not utf-8 after line \d+"):
        rows("id,name\n1,Ærø\n".encode("cp1252"))
    with pytest.raises(ValidationError, match="unknown encoding"):
        CsvFormat(encoding="no-such-codec")


def test_files_that_are_not_csv_of_this_format_fail_whole():
    with pytest.raises(FileFormatError, match="inbox/x.csv: no header row"):
        rows("")
    with pytest.raises(FileFormatError, match="names field.s. id more than once"):
        rows("Nr,id\n1,2\n", columns={"Nr": "id"})
    with pytest.raises(FileFormatError, match="line 2"):
        rows('id,name\n1,"open quote\n')


def test_written_files_read_back_as_written():
    fmt = CsvFormat(delimiter=";", decimal_separator=",", encoding="cp1252", columns={"Betrag": "amount"},
                    types={"amount": "decimal", "due": "date"}, quoting="all")
    written = [{"operation": "upsert", "id": "1", "amount": Decimal("12.50"), "due": "2024-01-31", "name": "A;B"},
               {"operation": "delete", "id": "2"}]
    data = b"".join(encode_rows(["operation", "id", "amount", "due", "name"], written, fmt))
    assert data.decode("cp1252").splitlines()[:2] == ['"operation";"id";"Betrag";"due";"name"',
                                                      '"upsert";"1";"12,50";"2024-01-31";"A;B"']
    back = list(read_rows(io.BytesIO(data), fmt, "outbox/y.csv"))
    assert [r.values for r in back] == [
        {"operation": "upsert", "id": "1", "amount": "12.50", "due": "2024-01-31", "name": "A;B"},
        {"operation": "delete", "id": "2", "amount": None, "due": None, "name": None},
    ]


def test_a_null_is_the_null_marker_and_a_field_a_row_does_not_write_is_empty():
    data = b"".join(encode_rows(["id", "name", "status"], [{"id": 1, "name": None}, {"id": 2, "status": "x"}],
                                CsvFormat()))
    assert data.decode().splitlines() == ["id,name,status", "1,\\N,", "2,,x"]
    back = list(read_rows(io.BytesIO(data), CsvFormat(), "outbox/z.csv"))
    assert [r.values["name"] for r in back] == [None, None]


def test_a_large_file_is_encoded_in_chunks():
    chunks = list(encode_rows(["id"], [{"id": i} for i in range(2500)], CsvFormat()))
    assert len(chunks) == 3 and b"".join(chunks).count(b"\r\n") == 2501


@pytest.mark.parametrize(("settings", "problem"), [
    ({"folder": "/x", "archive": "inbox"}, "three different folders"),
    ({"folder": "/x", "outbox": "../elsewhere"}, "folder names inside"),
    ({"blob_endpoint": "https://a.blob.core.windows.net", "inbox": "Inbox"}, "not a Blob container name"),
    ({"blob_connection": "env:X", "archive": "a--b"}, "not a Blob container name"),
    ({"blob_connection": "UseDevelopmentStorage=true"}, "env:NAME"),
    ({"folder": "/x", "blob_connection": "env:X"}, "exactly one of"),
])
def test_files_system_settings_that_cannot_work_are_refused(settings, problem):
    with pytest.raises(ValidationError, match=problem):
        FilesSystem(kind="files", **settings)


def test_blob_endpoint_uses_the_apps_identity(monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    store = storage_of(FilesSystem(kind="files", blob_endpoint="https://acct.blob.core.windows.net"))
    assert isinstance(store, BlobStorage)
    service = store._service
    assert service.url == "https://acct.blob.core.windows.net/"
    assert isinstance(service.credential, DefaultAzureCredential)

