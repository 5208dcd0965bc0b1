"""The settings of a `kind: files` system in the flows file: where the inbox, archive and outbox are (a folder or
Azure Blob Storage) and how each entity's CSV files are written."""

from __future__ import annotations

import codecs
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config_base import FieldType, Strict, secret_ref

_CONTAINER = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class CsvFormat(Strict):
    """How one entity's CSV files are written (by the ERP into the inbox, by us into the outbox)."""

    delimiter: str = Field(default=",", min_length=1, max_length=1, description="The field separator.")
    quotechar: str = Field(default='"', min_length=1, max_length=1, description="The quote character.")
    quoting: Literal["minimal", "all", "none"] = Field(default="minimal", description=(
        "minimal: quote only what needs it; all: every field; none: never (a delimiter in a value is then "
        "escaped with escapechar)."))
    escapechar: str | None = Field(default=None, min_length=1, max_length=1, description=(
        "Escapes a delimiter or quote in a value (needed with quoting: none)."))
    encoding: str = Field(default="utf-8", description=(
        "Text encoding: utf-8-sig for files from Excel, cp1252 / latin-1 for older ERPs."))
    decimal_separator: Literal[".", ","] = Field(default=".", description=(
        "How decimals are written: 12.5 or 12,5."))
    columns: dict[str, str] = Field(default_factory=dict, description=(
        "CSV header -> field name; a header not named here keeps its own name."))
    types: dict[str, FieldType] = Field(default_factory=dict, description=(
        "Field name -> the type its text is read as (string, int, decimal, bool, datetime, date); an untyped "
        "field is text, an empty cell is null."))
    operation_column: str = Field(default="operation", description=(
        "Outbox: the column saying what to do with the row: upsert, update or delete."))
    null_marker: str = Field(default="\\N", description=(
        "A field set to null. In the outbox an empty cell is a field the row does not write (its value at the "
        "ERP stays as it is); on reading, both an empty cell and this are null."))

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


class FilesSystem(Strict):
    """CSV file exchange: an ERP that exports files into an inbox and imports the files of an outbox. Each entity
    is a sub-folder (a name prefix in a container): `<inbox>/<entity>/*.csv`."""

    kind: Literal["files"] = Field(description="files: CSV files exchanged through a folder or Blob Storage.")
    folder: str | None = Field(default=None, description=(
        "A folder holding the inbox, archive and outbox folders. It must exist: a missing one is an unreachable "
        "exchange, never an empty one."))
    blob_endpoint: str | None = Field(default=None, description=(
        "Azure Blob Storage: the account's blob endpoint (https://<account>.blob.core.windows.net), reached as "
        "the app's managed identity (or AZURE_CLIENT_ID's); inbox, archive and outbox are containers."))
    blob_connection: str | None = Field(default=None, description=(
        "Azure Blob Storage by connection string, as env:NAME (Azurite); inbox, archive and outbox are "
        "containers."))
    inbox: str = Field(default="inbox", description="Where the ERP's exports land: <inbox>/<entity>/*.csv.")
    archive: str = Field(default="archive", description="Where an export is moved once it has been read.")
    outbox: str = Field(default="outbox", description="Where the files the ERP imports are written.")
    csv: CsvFormat = Field(default=CsvFormat(), description="How every entity's CSV files are written.")
    formats: dict[str, CsvFormat] = Field(default_factory=dict, description=(
        "Entity -> its own CSV format, instead of csv."))

    _secrets = field_validator("blob_connection")(secret_ref)

    @model_validator(mode="after")
    def _one_store(self) -> FilesSystem:
        if sum(bool(s) for s in (self.folder, self.blob_endpoint, self.blob_connection)) != 1:
            raise ValueError("choose exactly one of folder, blob_endpoint, blob_connection")
        areas = (self.inbox, self.archive, self.outbox)
        if len(set(areas)) != 3:  # an archive that is the inbox would read every file again, an outbox our own
            raise ValueError("inbox, archive and outbox must be three different folders or containers")
        if not self.folder:
            bad = [a for a in areas if not _CONTAINER.match(a) or "--" in a]
            if bad:
                raise ValueError(f"not a Blob container name (3-63 lower-case letters, digits, single '-'): {bad}")
        elif any(a in ("", ".", "..") or "/" in a or a.startswith(".") for a in areas):
            raise ValueError("inbox, archive and outbox are folder names inside `folder`")
        return self

    def format_of(self, entity: str) -> CsvFormat:
        return self.formats.get(entity, self.csv)
