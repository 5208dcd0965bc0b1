"""Table port: the small slice of Azure Table Storage semantics the state store is built on.

Two implementations: `shared.state.sqlite_tables` (embedded) and `shared.state.azure_tables`
(azure-data-tables). The domain stores (cursors, key map, record state, runs) are written once,
on top of this port, in `shared.state.store`.

Values may be str, int (any size), float, bool, None, dict or list; backends keep them round-trip exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Row = tuple[str, str, dict[str, Any]]  # partition key, row key, values
# partition key, row key, values, etag read (None: the row must not exist yet)
GuardedRow = tuple[str, str, dict[str, Any], str | None]


@dataclass
class Entity:
    pk: str
    rk: str
    data: dict[str, Any] = field(default_factory=dict)
    etag: str = ""


class TableBackend(Protocol):
    def get(self, table: str, pk: str, rk: str) -> Entity | None: ...

    def get_many(self, table: str, pk: str, rks: Sequence[str]) -> dict[str, Entity]:
        """Entities of one partition by row key; absent ones are left out."""
        ...

    def query(self, table: str, pk: str | None = None, rk_prefix: str | None = None) -> Iterator[Entity]:
        """Streams entities ordered by (pk, rk)."""
        ...

    def insert(self, table: str, pk: str, rk: str, data: dict[str, Any]) -> str:
        """Insert if absent and return the new etag; ConcurrencyError if the entity exists."""
        ...

    def update(self, table: str, pk: str, rk: str, data: dict[str, Any], etag: str) -> str:
        """Replace only if unchanged since `etag`; ConcurrencyError otherwise (also when absent)."""
        ...

    def write_guarded(self, table: str, rows: Sequence[GuardedRow]) -> dict[tuple[str, str], str | None]:
        """Many `insert` (etag None) / `update` (etag given) at once, each on its own condition.
        Returns (pk, rk) -> the new etag, or None for a row whose condition failed (the others are written)."""
        ...

    def upsert_many(self, table: str, rows: Sequence[Row]) -> None:
        """Unconditional writes, grouped into transactions of at most 100 per partition."""
        ...

    def delete(self, table: str, pk: str, rk: str) -> None: ...

    def close(self) -> None: ...
