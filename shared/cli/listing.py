"""What every listing command shares: reading a read model (shared.engine.views) with its filters checked, and
`--json`, which prints exactly what the admin API answers for the same listing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.markup import escape

from shared.cli import common
from shared.cli.common import err_console

if TYPE_CHECKING:
    from shared.app import SyncApp

JsonOption = Annotated[bool, typer.Option("--json", help="print the same JSON the admin API returns")]
T = TypeVar("T")


def read(config: Path, workdir: Path, reader: Callable[[SyncApp], T]) -> T:
    """`reader`'s answer; a filter naming an unknown flow or reason exits 2 naming the known ones."""
    from shared.engine.views import UnknownName

    with common.session(config, workdir) as sync:
        try:
            return reader(sync)
        except UnknownName as exc:
            err_console.print(f"[red]error[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None


def print_json(answer: BaseModel | dict[str, Any]) -> None:
    """One line of JSON on stdout, as the admin API sends it (no colours, whatever the terminal)."""
    import json

    if isinstance(answer, BaseModel):
        typer.echo(answer.model_dump_json())
        return
    typer.echo(json.dumps({k: [v.model_dump(mode="json") for v in items] for k, items in answer.items()}))


def plain(value: object) -> str:
    """A value as a table cell: None as a dash, anything else as its text, escaped for rich."""
    import json

    if value is None:
        return "—"
    return escape(json.dumps(value) if isinstance(value, dict | list) else str(value))
