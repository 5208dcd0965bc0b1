"""The dead-letter queue: list, replay, purge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from shared.cli import common
from shared.cli.common import ConfigOption, WorkdirOption, app, console, err_console, known_flow

dead_letters_app = typer.Typer(no_args_is_help=True, help="The dead-letter queue: what failed and why.")
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("list")
def dead_letters_list(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
) -> None:
    """Dead-lettered changes with reason, description, flow, key, attempt and enqueued time."""
    from rich.table import Table

    from shared.engine.dead_letters import DeadLetterFilter, list_dead_letters

    with common.session(config, workdir) as sync:
        found = list_dead_letters(sync, DeadLetterFilter(flow, reason, key), limit=limit)
    table = Table(title=f"dead letters: {len(found)}")
    for column in ("flow", "key", "reason", "description", "attempt", "enqueued"):
        table.add_column(column, overflow="fold")
    for d in found:
        table.add_row(*map(escape, (d.flow, d.key, d.reason, d.description, str(d.attempt), str(d.enqueued_at))))
    console.print(table)


@dead_letters_app.command("purge")
def dead_letters_purge(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option()] = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: purged changes are gone for good")] = False,
) -> None:
    """Delete dead-lettered changes for good (replay is usually what you want)."""
    from shared.engine.dead_letters import DeadLetterFilter, purge_dead_letters

    if not yes:
        err_console.print("[red]refusing[/red]: purging deletes dead-lettered changes for good; add --yes to confirm "
                          "(or use `dualsync replay` to send them again)")
        raise typer.Exit(2)
    with common.session(config, workdir) as sync:
        result = purge_dead_letters(sync, DeadLetterFilter(flow, reason, key))
    console.print(f"purged {result.purged}, left {result.left}")


@app.command()
def replay(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option(help="only this flow")] = None,
    reason: Annotated[str | None, typer.Option(help="only this dead-letter reason")] = None,
    key: Annotated[str | None, typer.Option(help="only this record key")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be replayed")] = False,
) -> None:
    """Send dead-lettered changes again, re-reading each record from its source first."""
    from shared.engine.replay import ReplayFilter, replay_dead_letters

    with common.session(config, workdir) as sync:
        if flow is not None:
            known_flow(sync, flow)
        with Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.completed:>6.0f} matched"),
                      console=console, transient=True) as progress:
            task = progress.add_task("replay", total=None)
            result = replay_dead_letters(sync, ReplayFilter(flow, reason, key), dry_run=dry_run,
                                         on_progress=lambda r: progress.update(task, completed=r.matched))
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "0"
    verb = "would replay" if dry_run else "replayed"
    console.print(f"matched {result.matched}, {verb} {result.matched if dry_run else result.replayed}, "
                  f"skipped {skipped}, left in the dead-letter queue {result.left}")
    for k in result.keys[:50]:
        console.print(f"  {k}", markup=False)
