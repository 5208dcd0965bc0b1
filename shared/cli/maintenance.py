"""Maintenance of one flow: reconcile deletes, initial sync, resync one record."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from shared.cli import common
from shared.cli.common import ConfigOption, WorkdirOption, app, console, err_console, known_flow


@app.command()
def reconcile(flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync")) -> None:
    """Compare FLOW's source keys with the linked keys and send a delete for every record the source lost."""
    from shared.engine.reconcile import reconcile_deletes

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        result = reconcile_deletes(sync, flow)
    if result.status != "ok":
        console.print(f"{flow}: not reconciled ({result.status})", markup=False)
        return
    console.print(f"{flow}: scanned {result.scanned} source keys, {result.known} linked, "
                  f"sent {result.deleted} deletes" + (f" ({result.present_on_recheck} reappeared on recheck)"
                                                      if result.present_on_recheck else ""), markup=False)


@app.command("initial-sync")
def initial_sync_command(
    flow: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
) -> None:
    """Link records that already exist on both sides by FLOW's match_on fields; create only the rest (the first
    command of a new sync: it makes --workdir, as run does)."""
    from shared.engine.initial_sync import initial_sync

    with common.session(config, workdir, starts_sync=True) as sync:
        known_flow(sync, flow)
        result = initial_sync(sync, flow)
    if result.status != "ok":
        err_console.print(f"[yellow]{escape(flow)}: initial sync did not run ({result.status})[/yellow]")
        raise typer.Exit(1)
    console.print(f"{flow}: matched {result.matched} (of which {result.aligned} sent to align values), "
                  f"created {result.created}, ambiguous {result.ambiguous}, already linked {result.already_linked}, "
                  f"failed {result.failed} ({result.targets} target records scanned)", markup=False)
    for line in result.examples[:10]:
        console.print(f"  [red]dead-lettered[/red] {escape(line)}")
    for note in result.notes:
        console.print(f"  [yellow]note[/yellow] {escape(note)}")


@app.command()
def resync(
    flow: str, key: str, config: ConfigOption = Path("flows.yaml"), workdir: WorkdirOption = Path(".dualsync"),
) -> None:
    """Re-read one record of FLOW from its source and send it again, forced past version, echo and conflicts."""
    from shared.engine.resync import resync as resync_record

    with common.session(config, workdir) as sync:
        known_flow(sync, flow)
        result = resync_record(sync, flow, key)
    console.print(f"{flow} {result.key}: sent version {result.version} as {result.message_id}", markup=False)
