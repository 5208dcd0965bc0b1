"""Decisions an operator makes: parked conflicts and change requests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shared.cli import common, listing
from shared.cli.common import ConfigOption, WorkdirOption, app, console
from shared.cli.listing import JsonOption, plain

conflicts_app = typer.Typer(no_args_is_help=True, help="Field conflicts parked by flows with conflicts: manual.")
requests_app = typer.Typer(no_args_is_help=True, help="Change requests from flows with review: true.")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(requests_app, name="requests")


@conflicts_app.command("list")
def conflicts_list(flow: Annotated[str | None, typer.Option(help="only this flow's pair")] = None,
                   config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
                   as_json: JsonOption = False) -> None:
    """Records whose same fields changed on both sides, one per record, waiting for an operator.

    Settle one with `dualsync conflicts resolve KEY --flow FLOW --take SYSTEM`."""
    from rich import box
    from rich.table import Table

    from shared.engine.views import conflict_views

    found = listing.read(config, workdir, lambda sync: conflict_views(sync, flow))
    if as_json:
        listing.print_json({"conflicts": found})
        return
    console.print(f"open conflicts: {len(found)}", markup=False)
    by_flow: dict[str, list] = {}
    for view in found:
        by_flow.setdefault(view.flow, []).append(view)
    for name, views in by_flow.items():
        systems = sorted({system for view in views for system in view.keys}
                         | {system for view in views for field in view.fields for system in field.values})
        table = Table(title=f"{escape(name)}: {len(views)}", title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("key", overflow="fold")
        table.add_column("field", overflow="fold")
        for system in systems:  # side by side: each system's value in its own column
            table.add_column(escape(system), overflow="fold", ratio=1)
        table.add_column("since", no_wrap=True)
        for view in views:
            since = view.since.strftime("%m-%d %H:%M") if view.since else ""
            if not view.fields:  # a delete racing an update: what happened, in words
                table.add_row(escape(view.key), "(record)", escape(view.detail or ""), *[""] * (len(systems) - 1),
                              since)
            for number, field in enumerate(view.fields):
                table.add_row(escape(view.key) if number == 0 else "", escape(field.field),
                              *(plain(field.values.get(system)) for system in systems), since if number == 0 else "")
        console.print(table)


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
                  workdir: WorkdirOption = Path(".dualsync"), as_json: JsonOption = False) -> None:
    """Changes waiting for approval before they are written into the master, field by field: as last synced
    (before) and as proposed (after)."""
    from rich import box
    from rich.table import Table

    from shared.engine.views import change_request_views

    found = listing.read(config, workdir, lambda sync: change_request_views(sync, flow))
    if as_json:
        listing.print_json({"requests": found})
        return
    table = Table(title=f"pending change requests: {len(found)}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("flow", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("field", overflow="fold")
    table.add_column("before", overflow="fold")
    table.add_column("after", overflow="fold")
    for view in found:
        for number, field in enumerate(view.fields or []):
            table.add_row(*((view.flow, escape(view.key)) if number == 0 else ("", "")), escape(field.field),
                          plain(field.before), plain(field.after))
        if not view.fields:
            table.add_row(view.flow, escape(view.key), f"({view.op}, no field changes)", "", "")
    console.print(table)


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
