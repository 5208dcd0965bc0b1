"""`dualsync runs`: the stored run history, per flow, newest first (shared.engine.run_history's read model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.text import Text

from shared.cli import listing
from shared.cli.common import ConfigOption, FlowFilter, WorkdirOption, app, console, examples
from shared.cli.listing import JsonOption
from shared.report import FitsOrStacks, indented, short_time


@app.command(epilog=examples(
    "dualsync runs                                   # the last 20 runs of every flow",
    "dualsync runs --flow accounts-to-customers --limit 5",
    "dualsync runs --busy --json | jq '.runs[] | select(.error)'",
))
def runs(
    config: ConfigOption = Path("flows.yaml"),
    workdir: WorkdirOption = Path(".dualsync"),
    flow: FlowFilter = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many runs per flow")] = 20,
    busy: Annotated[bool, typer.Option("--busy", help="only runs that sent something or failed")] = False,
    as_json: JsonOption = False,
) -> None:
    """What each pull run sent and what became of it: start, end, pulled, applied, skipped, retried,
    dead-lettered, error.

    Apply counts grow as the run's changes are settled, so a run still draining shows what is done so far."""
    from shared.engine.views import run_views

    found = listing.read(config, workdir, lambda sync: run_views(sync, flow, limit, busy))
    if as_json:
        listing.print_json({"runs": found})
        return
    if not found:
        console.print("no runs yet")
        return
    headers = ["flow", "kind", "start", "end", "pulled", "applied", "skipped", "retried", "dead-lettered", "error"]
    rows, stacked = [], []
    for r in found:
        start, end = short_time(r.started_at), short_time(r.finished_at)
        counts = [r.pulled, r.applied, r.skipped, r.retried, r.dead_lettered]
        rows.append([r.flow, r.kind, start, end, *map(str, counts), r.error or ""])
        counted = "  ".join(f"{name} {value}" for name, value in zip(headers[4:9], counts, strict=True) if value)
        stacked += [Text(r.flow, style="bold").append(f"  {r.kind} {start} to {end}", style=""),
                    indented(counted or "nothing sent")]
        if r.error:
            stacked.append(indented(Text(f"error: {r.error}", style="red")))
    console.print(FitsOrStacks(headers, rows, Group(*stacked), right=tuple(headers[4:9])))

