"""Decisions an operator makes: parked conflicts and change requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shared.cli import common
from shared.cli.common import ConfigOption, WorkdirOption, app, console

conflicts_app = typer.Typer(no_args_is_help=True, help="Field conflicts parked by flows with conflicts: manual.")
requests_app = typer.Typer(no_args_is_help=True, help="Change requests from flows with review: true.")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(requests_app, name="requests")


def _print_parked(table_name: str, flow: str | None, config: Path, workdir: Path, title: str) -> None:
    from rich.table import Table

    from shared.engine.decisions import list_parked

    with common.session(config, workdir) as sync:
        items = list_parked(sync, table_name, flow)
    table = Table(title=f"{title}: {len(items)}")
    for column in ("flow", "record", "detail", "since"):
        table.add_column(column)
    for item in items:
        data = item.data
        if data.get("detail"):  # a delete racing an update: no field values to show
            detail, since = data["detail"], data.get("detected_at", "")
        elif "fields" in data:
            detail = "; ".join(f"{f}: incoming {data['incoming'].get(f)!r} vs target {data['target'].get(f)!r}"
                               for f in data["fields"])
            since = data.get("detected_at", "")
        else:
            detail = json.dumps(data["message"].get("payload", {}), default=str)[:120]
            since = data.get("created_at", "")
        table.add_row(*map(escape, (item.flow, item.key, detail, str(since))))
    console.print(table)



@conflicts_app.command("list")
def conflicts_list(flow: Annotated[str | None, typer.Option()] = None, config: ConfigOption = Path("flows.yaml"),
                   workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Records whose same fields changed on both sides, waiting for an operator."""
    from shared.state.store import CONFLICTS

    _print_parked(CONFLICTS, flow, config, workdir, "open conflicts")


@conflicts_app.command("resolve")
def conflicts_resolve(
    key: str,
    take: Annotated[str, typer.Option("--take", help="the system whose values win, e.g. crm or erp")],
    flow: Annotated[str | None, typer.Option()] = None,
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
) -> None:
    """Settle a parked conflict: TAKE's values are written to the other side."""
    from shared.engine.decisions import resolve_conflict

    with common.session(config, workdir) as sync:
        console.print(f"sent {resolve_conflict(sync, key, take, flow)}", markup=False)


@requests_app.command("list")
def requests_list(flow: Annotated[str | None, typer.Option()] = None, config: ConfigOption = Path("flows.yaml"),
                  workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Changes waiting for approval before they are written into the master."""
    from shared.state.store import REQUESTS

    _print_parked(REQUESTS, flow, config, workdir, "pending change requests")


@requests_app.command("approve")
def requests_approve(key: str, flow: Annotated[str | None, typer.Option()] = None,
                     config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Apply a pending change request."""
    from shared.engine.decisions import approve_request

    with common.session(config, workdir) as sync:
        console.print(f"approved; sent {approve_request(sync, key, flow)}", markup=False)


@requests_app.command("reject")
def requests_reject(key: str, reason: Annotated[str, typer.Option(help="why, kept in the run history")],
                    flow: Annotated[str | None, typer.Option()] = None,
                    config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Drop a pending change request; nothing is written."""
    from shared.engine.decisions import reject_request

    with common.session(config, workdir) as sync:
        reject_request(sync, key, reason, flow)
    console.print(f"rejected {key}", markup=False)
