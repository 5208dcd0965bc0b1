"""The dead-letter queue: list, replay, purge."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn

from shared.cli import listing
from shared.cli.common import ConfigOption, WorkdirOption, app, console, err_console, examples
from shared.cli.listing import JsonOption, plain

if TYPE_CHECKING:
    from shared.app import SyncApp

dead_letters_app = typer.Typer(no_args_is_help=True, help="The dead-letter queue: what failed and why.")
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("list")
def dead_letters_list(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option(help="e.g. ValidationFailed")] = None,
    key: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """Dead-lettered changes by flow: record, reason, the field and the rule it broke, and since when.

    Fix the cause, then `dualsync replay --flow FLOW --reason REASON` (or `--key KEY`)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from shared.engine.views import dead_letter_list

    found = listing.read(config, workdir, lambda sync: dead_letter_list(sync, flow, reason, key, limit))
    if as_json:
        listing.print_json(found)
        return
    more = "+" if found.truncated else ""
    console.print(f"dead letters: {found.count}{more}", markup=False)
    by_flow: dict[str, list] = {}
    for letter in found.dead_letters:
        by_flow.setdefault(letter.flow or "(no flow)", []).append(letter)
    for name, letters in by_flow.items():
        # One table per flow: the flow's name is a title line of its own, so the columns fit 80 characters.
        table = Table(title=f"{escape(name)}: {len(letters)}", title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("key", overflow="fold")
        table.add_column("reason", no_wrap=True)
        table.add_column("problem", overflow="fold", ratio=1)
        table.add_column("since", no_wrap=True)
        for d in letters:
            since = d.enqueued_at.strftime("%m-%d %H:%M") if d.enqueued_at else ""
            problem = f"{d.field}: {d.rule}" if d.field else d.rule
            table.add_row(plain(d.key), plain(d.reason), plain(problem), since)
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
    from shared.engine.views import check_flow, check_reason

    if not yes:
        err_console.print("[red]refusing[/red]: purging deletes dead-lettered changes for good; add --yes to confirm "
                          "(or use `dualsync replay` to send them again)")
        raise typer.Exit(2)
    result = listing.read(config, workdir, lambda sync: purge_dead_letters(
        sync, DeadLetterFilter(check_flow(sync, flow), check_reason(reason), key)))
    console.print(f"purged {result.purged}, left {result.left}")


@app.command(epilog=examples(
    "dualsync dead-letters list --reason MissingReference    # what failed, and why",
    "dualsync replay --reason MissingReference --dry-run     # what would be sent again",
    "dualsync replay --flow invoices-to-crm --key INV00007   # one record, after fixing it at the source",
))
def replay(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: Annotated[str | None, typer.Option(help="only this flow")] = None,
    reason: Annotated[str | None, typer.Option(help="only this dead-letter reason")] = None,
    key: Annotated[str | None, typer.Option(help="only this record key")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be replayed")] = False,
    as_json: JsonOption = False,
) -> None:
    """Send dead-lettered changes again, re-reading each record from its source first."""
    from shared.engine.replay import ReplayFilter, ReplayResult, replay_dead_letters
    from shared.engine.views import ReplayView, check_flow, check_reason

    def run(sync: SyncApp) -> ReplayResult:
        which = ReplayFilter(check_flow(sync, flow), check_reason(reason), key)
        with Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.completed:>6.0f} matched"),
                      console=err_console if as_json else console, transient=True) as progress:
            task = progress.add_task("replay", total=None)
            return replay_dead_letters(sync, which, dry_run=dry_run,
                                       on_progress=lambda r: progress.update(task, completed=r.matched))

    result = listing.read(config, workdir, run)
    if as_json:
        listing.print_json(ReplayView.of(result))
        return
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "0"
    verb = "would replay" if dry_run else "replayed"
    console.print(f"matched {result.matched}, {verb} {result.matched if dry_run else result.replayed}, "
                  f"skipped {skipped}, left in the dead-letter queue {result.left}")
    for k in result.keys[:50]:
        console.print(f"  {k}", markup=False)
